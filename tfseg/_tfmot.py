"""The one place that knows TF-MOT (tensorflow-model-optimization): its import, its names, our patch.

- ``load()``: the ``tensorflow_model_optimization`` package, imported on first use. It is slow to
  import and sets ``TF_USE_LEGACY_KERAS`` as a side effect, so no tfseg module imports it at
  module level; ``load`` imports ``tfseg._keras`` first, so the Keras tfseg picked is the one
  TF-MOT sees whatever was imported before.
- ``default_8bit_registry()``, ``prune_preserve_registry()``, ``model_transformer()``: the TF-MOT
  internals tfseg builds on (not in its public API, so they may move in another release).
- The names TF-MOT gives what it wraps (``PRUNE_WRAPPER``, ``QAT_LAYERS``, ``WRAPPER_PREFIXES``,
  ``unwrapped_name``), for telling wrapped models apart by name without importing TF-MOT.
- ``inputs_kept_in_order()``: the one patch tfseg applies to TF-MOT, while ``quantize_apply`` runs.

Known defects of TF-MOT 0.8.1 and where tfseg meets them:

- The prune registry lists ``Rescaling.__class__`` (that is, ``type``) instead of ``Rescaling``, so
  whole-model ``prune_low_magnitude`` rejects the normalisation in every tfseg model.
  Not patched: ``tfseg.prune.magnitude`` wraps only the layers that carry prunable kernels.
- The 8-bit registry has no entry for ``Rescaling``, ``Resizing``, ``Multiply`` or a standalone
  BatchNormalization, and gives depthwise kernels one scale per tensor. Not patched: tfseg's own
  QuantizeConfigs and registries (``tfseg.quantize.configs``) extend TF-MOT's.
- ``ModelTransformer._get_layers`` can rewire a layer's inputs in another order
  (tensorflow/model-optimization#1179): patched by ``inputs_kept_in_order``.
- ``QuantizeWrapperV2`` lists the quantized kernels of frozen layers (``trainable=False``, such as
  the rewritten input normalisation) as trainable, so QAT trained them. Handled after
  ``quantize_apply`` and after loading by ``tfseg.quantize.qat._weights_follow_trainable``.
"""

from __future__ import annotations

import contextlib
import importlib

TESTED_VERSION = "0.8.1"  # setup.cfg pins it; the internals and defects above are this release's
INSTALL_HINT = f"pip install tensorflow-model-optimization=={TESTED_VERSION}"

# Class names of the layers TF-MOT puts in a model: a pruning wrapper, and what a
# quantization-aware model holds (the wrappers, the input quantizers, annotations before apply).
PRUNE_WRAPPER = "PruneLowMagnitude"
QUANTIZE_WRAPPERS = ("QuantizeWrapper", "QuantizeWrapperV2")
QAT_LAYERS = (*QUANTIZE_WRAPPERS, "QuantizeLayer", "QuantizeAnnotate")
# The prefixes those wrappers add to the wrapped layer's name.
WRAPPER_PREFIXES = ("prune_low_magnitude_", "quant_")

_QUANTIZATION_KERAS = "tensorflow_model_optimization.python.core.quantization.keras."


def load():
    """The ``tensorflow_model_optimization`` package, imported now if it was not yet.

    Raises:
      ImportError: TF-MOT is not installed, saying how to install it.

    Example:
      >>> tfmot = load()
      >>> tfmot.sparsity.keras.strip_pruning(model)
    """
    import tfseg._keras  # noqa: F401  # first: sets TF_USE_LEGACY_KERAS before TF-MOT reads it

    try:
        import tensorflow_model_optimization
    except ImportError as error:
        raise ImportError(
            f"tfseg's magnitude pruning and quantization-aware training need TF-MOT: {INSTALL_HINT} ({error})"
        ) from error
    return tensorflow_model_optimization


def _internal(module: str):
    load()
    return importlib.import_module(_QUANTIZATION_KERAS + module)


def default_8bit_registry():
    """TF-MOT's ``default_8bit_quantize_registry`` module (its 8-bit QuantizeConfigs and registry)."""
    return _internal("default_8bit.default_8bit_quantize_registry")


def prune_preserve_registry():
    """TF-MOT's ``prune_preserve_quantize_registry`` module (sparsity-preserving 8-bit quantization)."""
    return _internal("collab_opts.prune_preserve.prune_preserve_quantize_registry")


def model_transformer():
    """TF-MOT's ``model_transformer`` module (the graph rewrites ``quantize_apply`` runs)."""
    return _internal("graph_transformations.model_transformer")


def unwrapped_name(layer_name: str) -> str:
    """A layer's name without the prefix a TF-MOT pruning or quantization wrapper gave it."""
    for prefix in WRAPPER_PREFIXES:
        if layer_name.startswith(prefix):
            return layer_name[len(prefix):]
    return layer_name


def is_pruning_wrapper(layer) -> bool:
    """Whether ``layer`` is TF-MOT's magnitude-pruning wrapper (by class name: TF-MOT is not imported)."""
    return type(layer).__name__ == PRUNE_WRAPPER


def is_qat_layer(layer) -> bool:
    """Whether ``layer`` is one TF-MOT puts in a quantization-aware model (by class name)."""
    return type(layer).__name__ in QAT_LAYERS


@contextlib.contextmanager
def inputs_kept_in_order():
    """Makes TF-MOT's graph transforms keep the order of a layer's inputs while ``quantize_apply`` runs.

    ``ModelTransformer._get_layers`` returns the matched layer's inputs in the model's layer order,
    not in the order the layer takes them, so a transform over a ``Concatenate`` (TF-MOT's concat
    transforms match every one) can rewire its inputs in another order
    (tensorflow/model-optimization#1179, #1061). On the CamVid DeepLabV3 the ASPP concatenation
    came out with the image-pooling branch first, the projection read permuted channels, and the
    QAT model scored 24 % pixel accuracy before any training (float: 94 %).

    Guarded by what it replaces rather than by a version number: a TF-MOT without
    ``ModelTransformer._get_layers`` runs unpatched (the replacement would not be called anyway),
    and ``tfseg.quantize.qat`` checks every multi-input layer's input order after
    ``quantize_apply`` whatever the version.
    """
    transformer = model_transformer().ModelTransformer
    original = getattr(transformer, "_get_layers", None)
    if original is None:
        yield
        return

    def in_given_order(self, layer_names):
        by_name = {layer["config"]["name"]: layer for layer in self._config["layers"]}
        return [by_name[name] for name in layer_names if name in by_name]

    transformer._get_layers = in_given_order
    try:
        yield
    finally:
        transformer._get_layers = original


__all__ = [
    "INSTALL_HINT",
    "PRUNE_WRAPPER",
    "QAT_LAYERS",
    "QUANTIZE_WRAPPERS",
    "TESTED_VERSION",
    "WRAPPER_PREFIXES",
    "default_8bit_registry",
    "inputs_kept_in_order",
    "is_pruning_wrapper",
    "is_qat_layer",
    "load",
    "model_transformer",
    "prune_preserve_registry",
    "unwrapped_name",
]
