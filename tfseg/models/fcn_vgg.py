"""FCN-32s, FCN-16s and FCN-8s on VGG16 (Long, Shelhamer, Darrell, CVPR 2015 / PAMI 2016).

The VGG16 layers carry exactly the names of ``keras.applications.VGG16`` (``block1_conv1`` ...
``block5_pool``), so the keras-applications file ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``
loads into them by name.

Differences from the published Caffe nets, and why:

- Alignment. The reference pads the input by 100 pixels, uses 'valid' convolutions and crops every
  upsampled map by a hand-computed offset. Here every convolution is 'same', the input is
  zero-padded (after normalisation, so the padding is the mean pixel, as in Caffe) to a multiple
  of 32, and the logits are cropped back. Each pooling then halves the size exactly, so the 2x
  upsampled stride-32 scores have the size of pool4, and so on: the skips line up without offsets,
  no compute is spent on the 100-pixel border, and 360x480 works with a fixed input shape.
  A transpose convolution with kernel ``2f``, stride ``f`` and 'same' padding, initialised to the
  bilinear kernel, is exactly half-pixel bilinear interpolation away from the border (see
  ``bilinear_upsampling_kernel``).
- Preprocessing is in the graph: ``normalize`` subtracts the ImageNet mean pixel (Caffe mode) from
  RGB input. Caffe's BGR channel order is not swapped in the graph; the loader flips the input
  channels of ``block1_conv1`` instead (``input_channel_flip="block1_conv1"``), which costs nothing
  at inference.
- fc6 is a 7x7 'same' convolution (the paper's is 'valid' on the padded input); its width is an
  option (``fc_width``, 4096 in the paper).
- The score layers (``score_fr``, ``score_pool4``, ``score_pool3``) are zero-initialised as in the
  reference ("at-once" training). The reference "at-once" FCN-8s also scales pool4 by 0.01 and pool3
  by 1e-4 before their score layers; that is only a re-parametrisation of those zero-initialised
  1x1 convolutions (a smaller effective learning rate under SGD), so it is left out: it would need
  a scaling layer that TF-MOT cannot quantize.
- Upsampling layers have no bias, as in the reference, and are learnable (``trainable=True``).
"""

from __future__ import annotations

import numpy as np

from tfseg._keras import keras
from tfseg.models.common import crop_padding, image_input, pad_to_multiple
from tfseg.models.pretrained import load_keras_h5

layers = keras.layers

# ImageNet mean pixel used by Caffe-trained VGG16 (keras.applications "caffe" mode), in RGB order.
CAFFE_RGB_MEAN = (123.68, 116.779, 103.939)

# Filters per convolution in each of the five VGG16 blocks.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

FCN_VARIANTS = ("32s", "16s", "8s")

FCN_STRIDE = 32  # total downsampling of the VGG16 and GoogLeNet trunks


def bilinear_upsampling_kernel(factor: int, channels: int) -> np.ndarray:
    """The kernel that makes ``Conv2DTranspose(channels, 2 * factor, strides=factor, padding="same")`` bilinear.

    Channel ``c`` is upsampled from channel ``c`` only (a diagonal kernel), with the weights of the
    reference FCN's ``upsample_filt``. With 'same' padding the transpose convolution crops
    ``factor // 2`` pixels at the start, so output pixel ``o`` takes input ``i`` with weight
    ``1 - |(o + 0.5) / factor - 0.5 - i|``: half-pixel-centre bilinear interpolation, the same as
    ``tf.image.resize(..., "bilinear")`` except within ``factor // 2`` pixels of the border, where
    the zero padding outside the map takes part.

    Args:
      factor: the upsampling factor (a positive even number, or 1).
      channels: input and output channels.

    Returns:
      A float32 array of shape (2 * factor, 2 * factor, channels, channels), Keras'
      Conv2DTranspose kernel layout (height, width, out, in).

    Raises:
      ValueError: for an odd factor above 1 ('same' padding would shift the grid by half a pixel).

    Example:
      >>> bilinear_upsampling_kernel(2, 1)[:, 0, 0, 0]
      array([0.0625, 0.1875, 0.1875, 0.0625], dtype=float32)
    """
    if factor < 1 or (factor > 1 and factor % 2):
        raise ValueError(f"bilinear upsampling needs factor 1 or an even factor, got {factor}")
    size = 2 * factor
    center = factor - 0.5
    taps = 1.0 - np.abs(np.arange(size) - center) / factor
    kernel2d = np.outer(taps, taps).astype(np.float32)
    kernel = np.zeros((size, size, channels, channels), np.float32)
    for c in range(channels):
        kernel[:, :, c, c] = kernel2d
    return kernel


def bilinear_upsample(x, factor: int, name: str):
    """A learnable Conv2DTranspose (no bias) that upsamples ``x`` by ``factor``, initialised to bilinear.

    The kernel is set right after the layer is built, so the layer's config keeps the default
    initializer and the model needs no custom objects to be cloned or saved.
    """
    channels = x.shape[-1]
    layer = layers.Conv2DTranspose(
        channels, 2 * factor, strides=factor, padding="same", use_bias=False, name=name
    )
    y = layer(x)
    layer.set_weights([bilinear_upsampling_kernel(factor, channels)])
    return y


def fcn_decoder(score_fr, skips, num_classes: int, variant: str):
    """The FCN head after the stride-32 class scores: skip fusions and learnable upsampling.

    Args:
      score_fr: class scores at stride 32.
      skips: ``[(suffix, stride-16 features), (suffix, stride-8 features)]``; each used skip gets a
        zero-initialised 1x1 score layer ``score_{suffix}`` and an ``Add`` named ``fuse_{suffix}``.
      num_classes: score channels.
      variant: "32s" (no skip), "16s" (the first skip) or "8s" (both).

    Returns:
      Class scores at stride 1 (the padded input's size). Layers: ``upscore2``,
      ``upscore_{suffix}`` between fusions, and the final ``upscore{stride}``
      (``upscore32``, ``upscore16`` or ``upscore8``), as in the reference FCN nets.
    """
    used = FCN_VARIANTS.index(variant)  # 0, 1 or 2 skips
    x, stride, previous = score_fr, FCN_STRIDE, None
    for suffix, features in skips[:used]:
        x = bilinear_upsample(x, 2, name="upscore2" if previous is None else f"upscore_{previous}")
        score = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name=f"score_{suffix}")(features)
        x = layers.Add(name=f"fuse_{suffix}")([x, score])
        stride, previous = stride // 2, suffix
    return bilinear_upsample(x, stride, name=f"upscore{stride}")


def check_fcn_arguments(model_name: str, num_classes: int, variant: str):
    """Raises ValueError naming ``model_name`` for an unknown variant or non-positive num_classes."""
    if variant not in FCN_VARIANTS:
        raise ValueError(f"{model_name}: variant must be one of {', '.join(FCN_VARIANTS)}, got {variant!r}")
    if num_classes < 1:
        raise ValueError(f"{model_name}: num_classes must be positive, got {num_classes}")


def caffe_normalize(x, name: str = "normalize"):
    """Subtracts the ImageNet mean pixel from [0, 255] RGB (keras.applications' "caffe" mode, RGB order)."""
    return layers.Rescaling(1.0, offset=[-m for m in CAFFE_RGB_MEAN], name=name)(x)


def vgg16_features(x):
    """The 13 VGG16 convolutions and 5 poolings with keras.applications' layer names.

    Returns:
      ``{"pool3": stride 8, "pool4": stride 16, "pool5": stride 32}`` tensors. Two identity
      layers give the endpoints: ``low_level`` after ``block3_conv3`` (stride 4, 256 channels)
      and ``features`` after ``block5_pool``; ``pool5`` is the ``features`` output.
    """
    outputs = {}
    for block, widths in enumerate(VGG16_BLOCKS, start=1):
        for i, filters in enumerate(widths, start=1):
            x = layers.Conv2D(
                filters, 3, padding="same", activation="relu", name=f"block{block}_conv{i}"
            )(x)
        if block == 3:  # the deepest stride-4 features, like ResNet's conv2_x output
            x = layers.Activation("linear", name="low_level")(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
        if block == 5:
            x = layers.Activation("linear", name="features")(x)
        if block >= 3:
            outputs[f"pool{block}"] = x
    return outputs


def build_fcn_vgg16(
    input_shape=(None, None, 3),
    num_classes: int = 21,
    variant: str = "8s",
    fc_width: int = 4096,
    dropout: float = 0.5,
    weights=None,
):
    """Builds FCN-32s, FCN-16s or FCN-8s on VGG16.

    Args:
      input_shape: (height, width, 3). A fixed size need not divide by 32 (the input is padded
        and the logits cropped); with ``None`` height or width, feed sizes divisible by 32.
      num_classes: output channels (logits).
      variant: "32s", "16s" or "8s": how many skips (none, pool4, pool4 and pool3) are fused.
      fc_width: filters of fc6 (7x7) and fc7 (1x1); 4096 in the paper, smaller for students/tests.
      dropout: rate of ``drop6`` and ``drop7`` (0.5 in the paper).
      weights: None, or the path of keras-applications' ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``
        (VGG16 layers only; fc6, fc7 and the head stay freshly initialised). The loader flips
        ``block1_conv1``'s input channels, because those weights expect BGR.

    Returns:
      A functional model from float32 [0, 255] RGB images to (H, W, num_classes) logits with the
      endpoints ``low_level`` (after block3_conv3, stride 4), ``features`` (after block5_pool,
      stride 32), ``decoder`` (fc7 after ReLU, before drop7) and ``logits`` (an identity after the
      last upsampling and crop, so that the upsampling layer keeps its name for any input size).

    Raises:
      ValueError: unknown variant, non-positive num_classes or fc_width, or a bad input shape.
      Errors of ``tfseg.models.pretrained.load_keras_h5`` for a missing or mismatched weights file.

    Example:
      >>> model = build_fcn_vgg16((360, 480, 3), num_classes=11, variant="8s")
      >>> model.output_shape
      (None, 360, 480, 11)
    """
    check_fcn_arguments("FCN-VGG16", num_classes, variant)
    if fc_width < 1:
        raise ValueError(f"FCN-VGG16: fc_width must be positive, got {fc_width}")
    inputs = image_input(input_shape)
    x = caffe_normalize(inputs)
    x, crop = pad_to_multiple(x, FCN_STRIDE)
    pools = vgg16_features(x)
    x = layers.Conv2D(fc_width, 7, padding="same", activation="relu", name="fc6")(pools["pool5"])
    x = layers.Dropout(dropout, name="drop6")(x)
    x = layers.Conv2D(fc_width, 1, activation="relu", name="fc7")(x)
    x = layers.Activation("linear", name="decoder")(x)
    x = layers.Dropout(dropout, name="drop7")(x)
    score_fr = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(x)
    x = fcn_decoder(score_fr, [("pool4", pools["pool4"]), ("pool3", pools["pool3"])], num_classes, variant)
    x = crop_padding(x, crop)
    logits = layers.Activation("linear", name="logits")(x)
    model = keras.Model(inputs, logits, name=f"fcn{variant}_vgg16")
    if weights is not None:
        load_keras_h5(model, weights, input_channel_flip="block1_conv1")
    return model
