"""tfseg: small, fast semantic segmentation for embedded devices (tf_keras).

The names a user needs most are importable from the top, the subpackages are attributes:

    from tfseg import Distiller, PixelKD, prune_filters, quantize_aware, to_tflite, verify
    import tfseg
    model = tfseg.models.build("unet", (64, 64, 3), num_classes=3)

Everything is imported on first use (PEP 562), so that ``import tfseg`` and the ``tfseg``
command's start-up do not load TensorFlow. ``_EXPORTS`` is the one table of top-level names.
"""

import importlib
import importlib.util

__version__ = "0.1.0"

# Subpackages and modules reachable as ``tfseg.<name>`` without importing them first.
# An entry whose module is missing fails only when it is used (hasattr stays safe).
_SUBMODULES = (
    "batchnorm",
    "calibrate",
    "data",
    "distill",
    "distribute",
    "errors",
    "evaluate",
    "export",
    "latency_profile",
    "litert_peak",
    "litert_profiler",
    "losses",
    "metrics",
    "models",
    "pipeline",
    "prune",
    "quantize",
    "runs",
    "tflite",
    "xnnpack",
)

# name -> module it comes from. No name here may equal a submodule's name: importing the submodule
# sets that attribute on the package, so ``tfseg.evaluate`` is (and stays) the module; the
# function is ``tfseg.evaluate.evaluate``.
_EXPORTS = {
    # errors
    "ConfigError": "tfseg.errors",
    "DataError": "tfseg.errors",
    # data
    "DatasetInfo": "tfseg.data",
    # losses and metrics
    "CEDiceLoss": "tfseg.losses",
    "DiceLoss": "tfseg.losses",
    "SegmentationCrossEntropy": "tfseg.losses",
    "MeanIoU": "tfseg.metrics",
    "PixelAccuracy": "tfseg.metrics",
    # knowledge distillation
    "Distiller": "tfseg.distill",
    "DistillationLoss": "tfseg.distill",
    "PixelKD": "tfseg.distill",
    "PairwiseKD": "tfseg.distill",
    "CSCLoss": "tfseg.distill",
    "AdaptiveCrossEntropy": "tfseg.distill",
    "ChannelWiseKD": "tfseg.distill",
    # pruning
    "prune_filters": "tfseg.prune",
    "prune_filters_iteratively": "tfseg.prune",
    "prune_magnitude": "tfseg.prune",
    "pruning_callbacks": "tfseg.prune",
    "reestimate_batch_norm": "tfseg.batchnorm",
    # quantization
    "quantize_aware": "tfseg.quantize",
    "save_qat": "tfseg.quantize",
    "load_qat": "tfseg.quantize",
    "representative_images": "tfseg.quantize",
    # export
    "to_tflite": "tfseg.export",
    "to_saved_model": "tfseg.export",
    "post_training_quantize": "tfseg.export",
    "verify": "tfseg.export",
    # run directories
    "Run": "tfseg.runs",
}


def _exists(name: str) -> bool:
    return importlib.util.find_spec(f"{__name__}.{name}") is not None


__all__ = sorted([*_EXPORTS, *(name for name in _SUBMODULES if _exists(name)), "__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        try:
            return importlib.import_module(f"{__name__}.{name}")  # the import system sets the attribute
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise  # a missing dependency inside the module: let its own message through
            raise AttributeError(f"module 'tfseg' has no attribute {name!r}: tfseg.{name} is not written yet") from error
    raise AttributeError(
        f"module 'tfseg' has no attribute {name!r}; the top level has {', '.join(sorted(_EXPORTS))} "
        f"and the modules {', '.join(module for module in _SUBMODULES if _exists(module))}"
    )


def __dir__():
    return sorted(set(globals()) | set(__all__))
