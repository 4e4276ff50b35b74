"""tfseg: small, fast semantic segmentation for embedded devices (tf_keras)."""

__version__ = "0.1.0"

__all__ = ["Distiller", "__version__"]


def __getattr__(name):
    # Lazy, so that `import tfseg` (and the CLI's start-up) does not load TensorFlow.
    if name == "Distiller":
        from tfseg.distill import Distiller

        return Distiller
    raise AttributeError(f"module 'tfseg' has no attribute {name!r}")
