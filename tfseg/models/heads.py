"""Segmentation heads shared by the model families: DeepLabV3's ASPP and the FCN head.

Both are plain functions on tensors that add flat, explicitly named layers (conv-BN-ReLU triples
that TF-MOT folds and quantizes), so any backbone endpoint can feed them.
"""

from __future__ import annotations

from tfseg._keras import keras
from tfseg.models.common import conv_bn_relu, crop_padding

layers = keras.layers

# DeepLabV3 (Chen et al., 2017): rates (6, 12, 18) at output stride 16, doubled at stride 8. The
# stride-32 entry is our extrapolation (halved), for small fast students; it is not from the paper.
_ASPP_RATES = {8: (12, 24, 36), 16: (6, 12, 18), 32: (3, 6, 9)}


def aspp_rates(output_stride: int) -> tuple:
    """The atrous rates of ASPP for a backbone output stride (8, 16 or 32)."""
    if output_stride not in _ASPP_RATES:
        raise ValueError(f"ASPP has rates for output strides {sorted(_ASPP_RATES)}, got {output_stride!r}")
    return _ASPP_RATES[output_stride]


def aspp(
    x,
    filters: int = 256,
    rates=(6, 12, 18),
    name: str = "aspp",
    image_pooling: bool = True,
    dropout: float = 0.1,
    output_name=None,
):
    """Atrous Spatial Pyramid Pooling (DeepLabV3).

    Parallel branches on ``x``: a 1x1 conv-BN-ReLU (``{name}_b0``), one 3x3 atrous conv-BN-ReLU per
    rate (``{name}_b1``, ``{name}_b2``, ...) and image pooling (``{name}_pool_gap``: global average
    pooling with keepdims, ``{name}_pool`` conv-BN-ReLU, ``{name}_pool_up``: nearest UpSampling2D
    back to the feature size, i.e. a broadcast), concatenated (``{name}_concat``) and projected by a
    1x1 conv-BN-ReLU (``{name}_proj``) followed by ``{name}_dropout``.

    The image-pooling branch needs the feature map's size at build time (UpSampling2D takes a
    static factor; ``Resizing`` would take a dynamic size but TF-MOT rejects it). Models using it
    are therefore built for one input size; rebuild them at another size with the same weights
    (``tfseg.models.with_input_shape``) or pass ``image_pooling=False``.
    Its batch norm normalises one value per image and channel: train with batches larger than 1.

    Args:
      x: (batch, h, w, c) features.
      filters: channels of every branch and of the projection.
      rates: atrous rates of the 3x3 branches (``aspp_rates(output_stride)``); ``()`` keeps only
        the 1x1 and pooling branches (DeepLab's MobileNetV2 setting).
      name: prefix of every layer name.
      image_pooling: include the image-level pooling branch.
      dropout: dropout rate after the projection (0 disables it).
      output_name: renames the projection's ReLU, e.g. to the ``decoder`` endpoint.

    Returns:
      The (batch, h, w, filters) projected features (after dropout).

    Raises:
      ValueError: ``image_pooling`` with an unknown feature size.

    Example:
      >>> y = aspp(features, filters=128, rates=aspp_rates(16))
    """
    branches = [conv_bn_relu(x, filters, f"{name}_b0", kernel_size=1)]
    for i, rate in enumerate(rates, start=1):
        branches.append(conv_bn_relu(x, filters, f"{name}_b{i}", kernel_size=3, dilation_rate=rate))
    if image_pooling:
        height, width = x.shape[1], x.shape[2]
        if height is None or width is None:
            raise ValueError(
                f"{name}: the image-pooling branch needs a fixed feature size, got {height}x{width}; "
                "build the model with a fixed input_shape (e.g. the training crop, then "
                "tfseg.models.with_input_shape for another size) or pass image_pooling=False"
            )
        pooled = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool_gap")(x)
        pooled = conv_bn_relu(pooled, filters, f"{name}_pool", kernel_size=1)
        branches.append(layers.UpSampling2D((height, width), interpolation="nearest", name=f"{name}_pool_up")(pooled))
    y = layers.Concatenate(name=f"{name}_concat")(branches) if len(branches) > 1 else branches[0]
    y = conv_bn_relu(y, filters, f"{name}_proj", kernel_size=1, output_name=output_name)
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    return y


def fcn_head(x, filters: int, name: str = "head", dropout: float = 0.1, output_name=None):
    """The FCN head of torchvision's ``FCNHead``: 3x3 conv-BN-ReLU (``{name}``) then dropout.

    Args:
      x: (batch, h, w, c) features.
      filters: channels of the 3x3 convolution (torchvision uses ``c // 4``).
      name: prefix of the layer names (``{name}_conv``, ``{name}_bn``, ``{name}_relu``,
        ``{name}_dropout``).
      dropout: dropout rate after the ReLU (0 disables it).
      output_name: renames the ReLU, e.g. to the ``decoder`` endpoint.

    Returns:
      The (batch, h, w, filters) head features (after dropout; the classifier reads these).

    Example:
      >>> y = fcn_head(features, 128, output_name="decoder")
    """
    y = conv_bn_relu(x, filters, name, kernel_size=3, output_name=output_name)
    if dropout:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    return y


def upsampled_logits(x, num_classes: int, factor: int, crop=None, name: str = "classifier"):
    """1x1 classifier, bilinear upsampling by ``factor`` and the crop of ``common.pad_to_multiple``.

    The last layer is named ``logits`` (the endpoint): the crop when there is one, else the
    upsampling. Bilinear ``UpSampling2D`` uses half-pixel centres, like PyTorch's
    ``interpolate(..., align_corners=False)`` in torchvision's segmentation models.

    Args:
      x: (batch, h, w, c) head features.
      num_classes: output channels.
      factor: the head's output stride (upsampling factor back to the input size).
      crop: the value returned by ``common.pad_to_multiple`` (None when nothing was padded).
      name: name of the 1x1 classifier convolution.

    Returns:
      (batch, factor * h - padding, factor * w - padding, num_classes) logits.
    """
    y = layers.Conv2D(num_classes, 1, name=name)(x)
    if factor > 1:
        up_name = "logits" if crop is None else "logits_upsample"
        y = layers.UpSampling2D(factor, interpolation="bilinear", name=up_name)(y)
    elif crop is None:
        y = layers.Activation("linear", name="logits")(y)
    return crop_padding(y, crop, name="logits")
