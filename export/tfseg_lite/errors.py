"""tfseg-lite's exceptions: every message names the file (model, description or image) at fault."""


class TfsegLiteError(Exception):
    """Base class of tfseg-lite's own errors."""


class ModelError(TfsegLiteError, ValueError):
    """A file is not a usable TFLite model (not TFLite, damaged, or unsupported by the runner)."""


class MetadataError(TfsegLiteError, ValueError):
    """A model's description is missing, damaged, or does not follow its contract (``tfseg/1`` JSON or
    TFLite Model Metadata)."""


__all__ = ["MetadataError", "ModelError", "TfsegLiteError"]
