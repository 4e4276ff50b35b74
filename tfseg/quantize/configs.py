"""How tfseg makes TF-MOT quantize the layers its default 8-bit registry rejects: tables and configs.

TF-MOT's ``quantize_model`` refuses every tfseg model: the in-graph normalisation (``Rescaling``)
is not in its registry, nor are ``Resizing``, ``Multiply`` (the LR-ASPP gate) or a
``BatchNormalization`` that does not follow a convolution (STACK.md). Two explicit tables, in the
style of TF-MOT's ``_LAYER_QUANTIZE_INFO``, say what ``tfseg.quantize.quantize_aware`` does with
each:

- ``LAYER_CONFIGS``: layers without weights whose int8 TFLite kernel requantizes its result (MUL,
  RESIZE_BILINEAR, SUB, MAXIMUM, ...) get ``OutputQuantizeConfig``: their output is
  fake-quantized with a learned range, as TF-MOT does for ``Add``.
- ``AFFINE_LAYERS``: per-channel affine maps (``x * scale + offset``: the normalisation, and a
  BatchNormalization with frozen statistics) are rewritten as an equivalent 1x1
  ``DepthwiseConv2D`` that TF-MOT quantizes natively. A QuantizeConfig cannot do it: their
  constants are Python floats or BN statistics that no fake-quant node covers, so the converter
  leaves them as float MUL + ADD (with DEQUANTIZE / QUANTIZE around) in an otherwise int8 model.
  As a depthwise convolution they become one int8 DEPTHWISE_CONV_2D.
- ``QuantizeScheme``: TF-MOT's 8-bit scheme, except that depthwise kernels without a bias of their
  own (MobileNet's, followed by BN) get one scale per channel (``DepthwiseKernelQuantizer``);
  TF-MOT's own quantizer gives them one per tensor. Biased ones (the rewritten affine layers) stay
  per tensor: so ``scale`` is held exactly when it is the same for every channel (the
  normalisation); a rewritten BN with very different channel scales loses some precision in its
  smaller ones. ``PrunePreserveQuantizeScheme`` does the same to TF-MOT's prune-preserving scheme
  (``preserve_sparsity=True``).

TF-MOT's base classes live in ``tensorflow_model_optimization``, which is slow to import; the
configs, the quantizer and the scheme are created on first use (module ``__getattr__``), so importing
this module, ``tfseg.quantize`` or ``tfseg.export`` stays light.

Example:
  >>> from tfseg.quantize import configs
  >>> configs.config_for(model.get_layer("decoder"))        # LR-ASPP's Multiply: an OutputQuantizeConfig
  >>> configs.affine_of(model.get_layer("normalize"))       # (scale, offset) per channel
"""

from __future__ import annotations

import functools

import numpy as np

from tfseg import _tfmot
from tfseg._keras import keras
from tfseg.errors import ConfigError
from tfseg.models.common import input_layers

layers = keras.layers

# Layer class -> class name of its QuantizeConfig (exact classes, as in TF-MOT's registry: a
# subclass is a different layer and may compute something else).
LAYER_CONFIGS = {
    layers.Resizing: "OutputQuantizeConfig",
    layers.Multiply: "OutputQuantizeConfig",
    layers.Subtract: "OutputQuantizeConfig",
    layers.Average: "OutputQuantizeConfig",
    layers.Maximum: "OutputQuantizeConfig",
    layers.Minimum: "OutputQuantizeConfig",
}

# Layers that neither TF-MOT nor tfseg can quantize, with the reason given to the user.
UNSUPPORTED = {
    layers.Lambda: "Lambda layers cannot be cloned safely (TF-MOT rebuilds the model from its config); "
                   "write the computation with built-in layers",
    layers.LayerNormalization: "LayerNormalization has no int8 TFLite kernel that TF-MOT can emulate",
}

# What TF-MOT's Conv2DBatchNormQuantize / DenseBatchNormQuantize transforms match (by class name,
# so Conv2DTranspose + BN is *not* folded and that BN is rewritten instead).
_BN_PRODUCERS = ("Conv2D", "DepthwiseConv2D", "Dense")

CONFIG_NAMES = ("OutputQuantizeConfig", "DepthwiseKernelQuantizer", "DepthwiseQuantizeConfig", "QuantizeScheme",
                "PrunePreserveQuantizeScheme")
_SCHEMES = ("QuantizeScheme", "PrunePreserveQuantizeScheme")  # not configs: nothing saved refers to them


@functools.lru_cache(maxsize=None)
def _classes() -> dict:
    qk = _tfmot.load().quantization.keras
    prune_preserve = _tfmot.prune_preserve_registry()
    registry8 = _tfmot.default_8bit_registry()

    class OutputQuantizeConfig(qk.QuantizeConfig):
        """Quantizes a layer's output only, with a learned (moving-average) range.

        For layers without weights whose int8 TFLite kernel requantizes its result (MUL,
        RESIZE_BILINEAR, SUB, MAXIMUM, ...): TF-MOT's own choice for ``Add`` and ``Concatenate``.
        """

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            # TF-MOT's activation quantizer: 8 bits, asymmetric, full range, learned in training.
            return [qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    class DepthwiseKernelQuantizer(qk.quantizers.LastValueQuantizer):
        """Int8 for a depthwise kernel with one symmetric scale per output channel.

        TF-MOT's conv weight quantizer keys its scales on a kernel's last axis, which for a
        depthwise kernel (h, w, channels, multiplier) is the multiplier: one scale for the whole
        tensor. MobileNetV2's depthwise kernels differ by orders of magnitude between channels, so
        per tensor its small channels keep a level or two: the trained CamVid teacher drops from
        94.4 to 89.8 % pixel accuracy from that alone, before any activation is quantized. The
        converter gives the int8 kernel one scale per channel anyway; this lets QAT train for it.
        """

        def __init__(self, **config):  # config: what LastValueQuantizer.get_config wrote, all fixed here
            super().__init__(num_bits=8, per_axis=True, symmetric=True, narrow_range=True)

        def build(self, tensor_shape, name, layer):
            channels = int(tensor_shape[-2]) * int(tensor_shape[-1])
            return self._add_range_weights(layer, name, per_axis=True, tensor_shape=(channels,))

        def __call__(self, inputs, training, weights, **kwargs):
            # Output channel c * multiplier + m is element (c, m) of the last two axes: folding
            # them into the last axis puts each output channel's scale where TF-MOT reads it.
            height, width, channels, multiplier = inputs.shape
            flat = keras.backend.reshape(inputs, (height, width, 1, channels * multiplier))
            quantized = super().__call__(flat, training, weights, **kwargs)
            return keras.backend.reshape(quantized, (height, width, channels, multiplier))

        def get_config(self):
            return {}

    class DepthwiseQuantizeConfig(registry8.Default8BitConvQuantizeConfig):
        """TF-MOT's DepthwiseConv2D config with ``DepthwiseKernelQuantizer`` for the kernel."""

        def __init__(self, weight_attrs=("depthwise_kernel",), activation_attrs=("activation",), quantize_output=False):
            super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
            self.weight_quantizer = DepthwiseKernelQuantizer()

    def per_channel_depthwise(layer) -> bool:
        # Not with a bias of its own: the CamVid student's normalisation (rewritten as a 1x1
        # depthwise, trained a little) converted per channel with one int32 bias value for
        # three channel scales, 1.4 % off at its output (not reproduced on a tiny model).
        # A BN's bias folded in afterwards comes out right.
        return type(layer) is layers.DepthwiseConv2D and not layer.use_bias

    class QuantizeRegistry(registry8.Default8BitQuantizeRegistry):
        """TF-MOT's 8-bit registry, with per-channel depthwise kernels."""

        def get_quantize_config(self, layer):
            return DepthwiseQuantizeConfig() if per_channel_depthwise(layer) else super().get_quantize_config(layer)

    class PrunePreserveQuantizeRegistry(prune_preserve.Default8bitPrunePreserveQuantizeRegistry):
        """TF-MOT's prune-preserving registry, with per-channel depthwise kernels.

        TF-MOT neither prunes depthwise kernels nor preserves their sparsity, so they take the
        same per-channel config as in ``QuantizeRegistry``.
        """

        def get_quantize_config(self, layer):
            return DepthwiseQuantizeConfig() if per_channel_depthwise(layer) else super().get_quantize_config(layer)

    class QuantizeScheme(qk.default_8bit.Default8BitQuantizeScheme):
        """TF-MOT's 8-bit scheme (its layer transforms) with ``QuantizeRegistry``."""

        def get_quantize_registry(self):
            return QuantizeRegistry()

    class PrunePreserveQuantizeScheme(qk.default_8bit.Default8BitQuantizeScheme):
        """TF-MOT's prune-preserving 8-bit scheme with ``PrunePreserveQuantizeRegistry``."""

        def get_quantize_registry(self):
            return PrunePreserveQuantizeRegistry()

    return {
        "OutputQuantizeConfig": OutputQuantizeConfig,
        "DepthwiseKernelQuantizer": DepthwiseKernelQuantizer,
        "DepthwiseQuantizeConfig": DepthwiseQuantizeConfig,
        "QuantizeScheme": QuantizeScheme,
        "PrunePreserveQuantizeScheme": PrunePreserveQuantizeScheme,
    }


def __getattr__(name):
    if name in CONFIG_NAMES:
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def custom_objects() -> dict:
    """``{class name: class}`` of tfseg's configs and quantizers, for ``quantize_scope`` when loading a QAT model."""
    return {name: cls for name, cls in _classes().items() if name not in _SCHEMES}


def folds_into_producer(layer) -> bool:
    """Whether TF-MOT folds this BatchNormalization into the layer before it.

    True when the producer is a Conv2D, DepthwiseConv2D or Dense with a linear activation and this
    BN is its only consumer: the patterns of TF-MOT's Conv2DBatchNormQuantize and
    DenseBatchNormQuantize transforms.
    """
    producers = input_layers(layer)
    if len(producers) != 1:
        return False
    producer = producers[0]
    return (
        type(producer).__name__ in _BN_PRODUCERS
        and producer.get_config().get("activation", "linear") == "linear"
        and len(producer.outbound_nodes) == 1
    )


def _rescaling_affine(layer):
    channels = layer.input_shape[-1]
    scale = np.broadcast_to(np.asarray(layer.scale, np.float64), (channels,))
    offset = np.broadcast_to(np.asarray(layer.offset, np.float64), (channels,))
    return scale, offset


def _batchnorm_affine(layer):
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
    if list(axis) not in ([-1], [len(layer.input_shape) - 1]):
        raise ConfigError(
            f"layer {layer.name!r} (BatchNormalization) normalises axis {layer.axis}; tfseg quantizes a "
            "standalone BatchNormalization over the channel (last) axis only"
        )
    channels = layer.input_shape[-1]
    gamma = layer.gamma.numpy() if layer.scale else np.ones(channels)
    beta = layer.beta.numpy() if layer.center else np.zeros(channels)
    scale = gamma / np.sqrt(layer.moving_variance.numpy() + layer.epsilon)
    return scale, beta - layer.moving_mean.numpy() * scale


# Layer class -> (scale, offset) per channel of the affine map it computes at inference. These
# layers are rewritten as a 1x1 DepthwiseConv2D (see the module docstring); the normalisation is
# kept frozen, a standalone BN trains on as a per-channel affine with its statistics frozen.
AFFINE_LAYERS = {
    layers.Rescaling: _rescaling_affine,
    layers.BatchNormalization: _batchnorm_affine,
}


def is_rewritten(layer) -> bool:
    """Whether ``quantize_aware`` rewrites ``layer`` as a 1x1 DepthwiseConv2D (``AFFINE_LAYERS``)."""
    kind = type(layer)
    if kind not in AFFINE_LAYERS:
        return False
    return not (kind is layers.BatchNormalization and folds_into_producer(layer))


def affine_of(layer) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel ``(scale, offset)`` of an ``AFFINE_LAYERS`` layer, float64 arrays of (C,).

    Raises:
      ConfigError: the layer is not one of ``AFFINE_LAYERS`` or cannot be expressed per channel.
    """
    if type(layer) not in AFFINE_LAYERS:
        raise ConfigError(f"layer {layer.name!r} ({type(layer).__name__}) is not an affine layer tfseg rewrites")
    return AFFINE_LAYERS[type(layer)](layer)


def as_depthwise(layer):
    """An unbuilt 1x1 DepthwiseConv2D computing what ``layer`` computes at inference, and its weights.

    Returns:
      ``(new_layer, [kernel (1, 1, C, 1), bias (C,)])``; the new layer has ``layer``'s name, so
      endpoints and the normalisation stay findable, and is frozen when ``layer`` is a Rescaling.

    Raises:
      ConfigError: see ``affine_of``.
    """
    scale, offset = affine_of(layer)
    frozen = type(layer) is layers.Rescaling or not layer.trainable
    new = layers.DepthwiseConv2D(1, use_bias=True, name=layer.name, trainable=not frozen)
    return new, [scale.reshape(1, 1, -1, 1).astype(np.float32), offset.astype(np.float32)]


def config_for(layer):
    """The tfseg QuantizeConfig for ``layer``, or None when TF-MOT's registry should handle it.

    Args:
      layer: a layer of a flat functional model.

    Returns:
      A ``QuantizeConfig`` instance from ``LAYER_CONFIGS``, or None.

    Raises:
      ConfigError: the layer is in ``UNSUPPORTED``, naming it and why.

    Example:
      >>> type(config_for(model.get_layer("decoder"))).__name__    # LR-ASPP's Multiply
      'OutputQuantizeConfig'
    """
    kind = type(layer)
    if kind in UNSUPPORTED:
        raise ConfigError(f"layer {layer.name!r} ({kind.__name__}) cannot be quantized: {UNSUPPORTED[kind]}")
    name = LAYER_CONFIGS.get(kind)
    return None if name is None else _classes()[name]()


__all__ = [
    "AFFINE_LAYERS",
    "CONFIG_NAMES",
    "LAYER_CONFIGS",
    "UNSUPPORTED",
    "affine_of",
    "as_depthwise",
    "config_for",
    "custom_objects",
    "folds_into_producer",
    "is_rewritten",
]
