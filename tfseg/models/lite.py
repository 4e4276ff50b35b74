"""Lightweight students: MobileNetV2 + LR-ASPP (or a plain conv head), and a tiny ENet/ESPNet-class net.

Both are flat functional tf_keras graphs from float32 [0, 255] RGB to logits at input resolution,
built only from layers that TF-MOT and TFLite accept (Conv2D, DepthwiseConv2D, BatchNormalization,
ReLU, Add, Concatenate, bilinear UpSampling2D, ZeroPadding2D, Cropping2D), except the LR-ASPP
gate (GlobalAveragePooling2D, sigmoid, Multiply), which TF-MOT's ``quantize_model`` does not take
without a QuantizeConfig; ``head="fcn"`` drops the gate.
"""

from __future__ import annotations

from pathlib import Path

from tfseg._keras import keras
from tfseg.models import common
from tfseg.models.mobilenet_v2 import ALPHAS, OUTPUT_STRIDES, mobilenet_v2_backbone
from tfseg.models.pretrained import load_keras_h5, load_tfslim_mobilenet_v2

layers = keras.layers

LRASPP_HEADS = ("lraspp", "fcn")


def _upsample_logits(x, factor: int, crop):
    """Bilinear upsampling by ``factor`` to input resolution; the last layer is named ``logits``."""
    if factor > 1:
        name = "logits" if crop is None else "logits_up"
        x = layers.UpSampling2D(factor, interpolation="bilinear", name=name)(x)
    return common.crop_padding(x, crop, name="logits")


def build_mobilenet_v2_lraspp(
    input_shape=(None, None, 3),
    num_classes: int = 2,
    alpha: float = 0.35,
    weights=None,
    output_stride: int = 16,
    low_level_stride: int = 8,
    head: str = "lraspp",
    head_channels: int = 128,
):
    """MobileNetV2 with a Lite R-ASPP head (Howard et al., "Searching for MobileNetV3", 2019).

    The head: a 1x1 conv + BN + ReLU on the backbone's last features, multiplied by a gate
    (global average pooling, 1x1 conv, sigmoid), classified by a 1x1 conv, upsampled to the
    low-level features' stride and added to a 1x1 classifier of those; then bilinear upsampling
    to the input size. The classifiers run before the upsampling (a 1x1 conv and bilinear
    upsampling commute), which is cheaper with few classes. ``head="fcn"`` is the same without
    the gate (no Multiply, so TF-MOT's ``quantize_model`` accepts the whole model).

    Args:
      input_shape: (height, width, 3). A fixed size is zero-padded (bottom/right, after
        normalisation) to a multiple of ``output_stride`` and the logits are cropped back, so any
        size works (e.g. 360x480); with ``None`` sizes, height and width must divide by
        ``output_stride`` at run time.
      num_classes: output channels (logits).
      alpha: MobileNetV2 width multiplier, one of 0.35, 0.5, 0.75, 1.0 (1.3, 1.4 also build).
      weights: None (random initialisation), the directory of TF-Slim ``.npy`` arrays (ImageNet,
        alpha 1.0 only) or a keras-applications MobileNetV2 ``*_no_top.h5`` file of the same alpha.
      output_stride: 8, 16 or 32, the stride of the backbone features (dilation beyond it).
      low_level_stride: 8 (``block_5_add``) or 4 (``block_2_add``): the features of the skip branch.
      head: "lraspp" (gated) or "fcn" (no gate).
      head_channels: channels of the head's 1x1 conv (128 in the paper).

    Returns:
      A functional model ``mobilenet_v2_{alpha}_{head}_os{output_stride}`` with the backbone's
      keras.applications layer names, head layers ``head_*``, and the endpoints ``low_level``
      (stride 4), ``features`` (``block_16_project_BN``, 320*alpha channels), ``decoder`` (the
      gated, resp. plain, head features) and ``logits``.

    Raises:
      ValueError: a bad option, or ``weights`` that cannot fit (e.g. the TF-Slim arrays with
        alpha != 1.0); FileNotFoundError: ``weights`` does not exist.

    Example:
      >>> model = build_mobilenet_v2_lraspp((360, 480, 3), num_classes=11, alpha=0.35)
      >>> model.output_shape  # (None, 360, 480, 11)
    """
    if low_level_stride not in (4, 8):
        raise ValueError(f"low_level_stride must be 4 or 8, got {low_level_stride}")
    if head not in LRASPP_HEADS:
        raise ValueError(f"head must be one of {LRASPP_HEADS}, got {head!r}")
    if num_classes < 1 or head_channels < 1:
        raise ValueError(f"num_classes and head_channels must be positive, got {num_classes}, {head_channels}")
    inputs, crop, feats, weights_kind = _mobilenet_v2_features(input_shape, alpha, weights, output_stride)
    features = feats["features"]

    gated = head == "lraspp"
    y = layers.Conv2D(head_channels, 1, use_bias=False, name="head_conv")(features)
    y = layers.BatchNormalization(name="head_bn")(y)
    y = layers.ReLU(name="head_relu" if gated else "decoder")(y)
    if gated:
        gate = layers.GlobalAveragePooling2D(keepdims=True, name="head_pool")(features)
        gate = layers.Conv2D(head_channels, 1, name="head_gate_conv")(gate)
        gate = layers.Activation("sigmoid", name="head_gate")(gate)
        y = layers.Multiply(name="decoder")([y, gate])  # broadcasts the (1, 1, C) gate
    y = layers.Conv2D(num_classes, 1, name="head_classifier")(y)
    if output_stride > low_level_stride:
        y = layers.UpSampling2D(output_stride // low_level_stride, interpolation="bilinear", name="head_up")(y)
    low = feats["low_level"] if low_level_stride == 4 else feats["s8"]
    low = layers.Conv2D(num_classes, 1, name="low_classifier")(low)
    y = layers.Add(name="head_add")([y, low])
    logits = _upsample_logits(y, low_level_stride, crop)
    model = keras.Model(inputs, logits, name=f"mobilenet_v2_{alpha}_{head}_os{output_stride}")

    _load_backbone_weights(model, weights, weights_kind)
    return model


def build_mobilenet_v2_deeplabv3plus(
    input_shape=(None, None, 3),
    num_classes: int = 2,
    alpha: float = 0.35,
    weights=None,
    output_stride: int = 16,
    aspp_channels: int = 48,
    aspp_rates=(2, 4),
    low_level_channels: int = 16,
    decoder_channels: int = 40,
):
    """MobileNetV2 with a light DeepLabV3+ decoder (Chen et al., 2018): a stride-4 skip of features.

    Unlike LR-ASPP, whose skip adds two class-score maps, this decoder fuses *features*: an
    atrous-separable ASPP without image pooling (average pooling leaves XNNPACK's int8 path) on the
    backbone's last features, upsampled 4x to stride 4 and concatenated with a 1x1 projection of
    ``block_2_depthwise_relu`` (the stride-4 expanded features DeepLab's MobileNetV2 decoder reads),
    then one separable 3x3 block, a 1x1 classifier and 4x bilinear upsampling. At alpha 0.35,
    output stride 16 and 360x480 it costs 0.32 GMACs (the DeepLabV3-MobileNetV2 teacher: 3.41); the
    widths are chosen to stay under a tenth of that.

    Args:
      input_shape: (height, width, 3); a fixed size is padded to a multiple of ``output_stride``
        and the logits cropped back; ``None`` sizes must divide by ``output_stride`` at run time.
      num_classes: output channels (logits).
      alpha: MobileNetV2 width multiplier (see ``build_mobilenet_v2_lraspp``).
      weights: None, the TF-Slim arrays' directory (alpha 1.0) or a keras-applications no-top .h5.
      output_stride: 8, 16 or 32 (at least 8: the decoder upsamples from it to stride 4).
      aspp_channels: channels of each ASPP branch and of its projection.
      aspp_rates: dilation rates of the separable ASPP branches (beside a 1x1 branch); may be empty.
      low_level_channels: channels of the stride-4 projection.
      decoder_channels: channels of the fused stride-4 features.

    Returns:
      A functional model ``mobilenet_v2_{alpha}_deeplabv3plus_os{output_stride}`` with the
      endpoints ``low_level``, ``features``, ``decoder`` (fused stride-4 features) and ``logits``.

    Raises:
      ValueError: a bad option or weights that cannot fit; FileNotFoundError: no such weights.
    """
    aspp_rates = (aspp_rates,) if isinstance(aspp_rates, int) else tuple(int(rate) for rate in aspp_rates)
    if any(rate < 1 for rate in aspp_rates):
        raise ValueError(f"aspp_rates must be dilation rates >= 1, got {aspp_rates}")
    if min(num_classes, aspp_channels, low_level_channels, decoder_channels) < 1:
        raise ValueError("num_classes, aspp_channels, low_level_channels and decoder_channels must be positive, got "
                         f"{num_classes}, {aspp_channels}, {low_level_channels}, {decoder_channels}")
    inputs, crop, feats, weights_kind = _mobilenet_v2_features(input_shape, alpha, weights, output_stride)
    features = feats["features"]

    branches = [common.conv_bn_relu(features, aspp_channels, "aspp_1x1", kernel_size=1)]
    branches += [_separable(features, aspp_channels, f"aspp_rate{rate}", dilation=rate) for rate in aspp_rates]
    y = layers.Concatenate(name="aspp_concat")(branches) if len(branches) > 1 else branches[0]
    y = common.conv_bn_relu(y, aspp_channels, "aspp_project", kernel_size=1)
    y = layers.UpSampling2D(output_stride // 4, interpolation="bilinear", name="decoder_up")(y)
    low = common.conv_bn_relu(feats["low_level_expanded"], low_level_channels, "decoder_low", kernel_size=1)
    y = layers.Concatenate(name="decoder_concat")([y, low])
    y = _separable(y, decoder_channels, "decoder_fuse", output_name="decoder")
    y = layers.Conv2D(num_classes, 1, name="classifier")(y)
    logits = _upsample_logits(y, 4, crop)
    model = keras.Model(inputs, logits, name=f"mobilenet_v2_{alpha}_deeplabv3plus_os{output_stride}")

    _load_backbone_weights(model, weights, weights_kind)
    return model


def _weights_kind(weights, alpha):
    """Which loader ``weights`` needs; checked before building so that errors come early."""
    if weights is None:
        return None
    path = Path(weights)
    if path.is_dir():
        if alpha != 1.0:
            raise ValueError(
                f"weights={str(path)!r}: the TF-Slim MobileNetV2 arrays are for alpha 1.0, got alpha={alpha}; "
                "use alpha=1.0, a keras-applications MobileNetV2 no-top .h5 of this alpha, or weights=None"
            )
        return "tfslim"
    if path.suffix in (".h5", ".hdf5"):
        if not path.is_file():
            raise FileNotFoundError(f"weights={str(path)!r}: no such file")
        return "h5"
    raise FileNotFoundError(
        f"weights={str(path)!r}: expected the directory of TF-Slim MobileNetV2 .npy arrays or a .h5 file"
    )


def _mobilenet_v2_features(input_shape, alpha, weights, output_stride):
    """The input, normalisation, padding to ``output_stride`` and MobileNetV2 backbone of a student.

    The options are checked (and the weights file found) before anything is built.

    Returns:
      (input, crop to undo the padding, backbone endpoints, weights kind for ``_load_backbone_weights``).
    """
    if alpha not in ALPHAS:
        raise ValueError(f"MobileNetV2 alpha must be one of {ALPHAS}, got {alpha}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    weights_kind = _weights_kind(weights, alpha)
    inputs = common.image_input(input_shape)
    x, crop = common.pad_to_multiple(common.normalize(inputs), output_stride)
    feats = mobilenet_v2_backbone(x, alpha=alpha, output_stride=output_stride, name_endpoints=True)
    return inputs, crop, feats, weights_kind


def _load_backbone_weights(model, weights, kind):
    """ImageNet MobileNetV2 weights into the backbone (the head keeps its initialisation)."""
    if kind == "tfslim":
        load_tfslim_mobilenet_v2(model, weights)
    elif kind == "h5":
        load_keras_h5(model, weights, ignore_layers=("Conv_1", "Conv_1_bn"))


def _separable(x, filters: int, name: str, strides: int = 1, dilation: int = 1, relu: bool = True, output_name=None):
    """Depthwise 3x3 + BN + ReLU, then pointwise 1x1 + BN (+ ReLU); layers ``{name}_dw|_dw_bn|...``."""
    x = layers.DepthwiseConv2D(
        3, strides=strides, dilation_rate=dilation, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    if relu:
        x = layers.ReLU(name=output_name or f"{name}_relu")(x)
    return x


def _residual(x, name: str, dilation: int = 1, output_name=None):
    """A separable residual block (ReLU after the sum); dilation widens the context at no cost."""
    y = _separable(x, x.shape[-1], name, dilation=dilation, relu=False)
    y = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=output_name or f"{name}_relu")(y)


def build_fastseg_tiny(
    input_shape=(None, None, 3),
    num_classes: int = 2,
    widths=(16, 32, 64, 128),
    blocks_s8: int = 2,
    dilations=(1, 2, 4, 8, 1, 2, 4, 8),
):
    """A tiny real-time segmentation net in the ENet / ESPNet class (a few hundred thousand parameters).

    Stride-2 3x3 conv stem; separable downsampling blocks to strides 4, 8 and 16; separable
    residual blocks at stride 8 and dilated ones at stride 16 (``dilations``: one block per rate,
    ESPNet-style growing context); a decoder that reduces the stride-16 features to
    ``widths[2]`` channels, upsamples them 2x (bilinear), concatenates the stride-8 features and
    fuses with one separable block; a 1x1 classifier and 8x bilinear upsampling. Only Conv2D,
    DepthwiseConv2D, BN, ReLU, Add, Concatenate, bilinear UpSampling2D (+ padding/cropping): every
    TF-MOT path (pruning, ``quantize_model``) and int8 TFLite take it.

    Args:
      input_shape: (height, width, 3); a fixed size is padded to a multiple of 16 and the logits
        cropped back (360x480 works); ``None`` sizes must divide by 16 at run time.
      num_classes: output channels (logits).
      widths: channels at strides 2, 4, 8 and 16.
      blocks_s8: residual blocks at stride 8.
      dilations: one residual block at stride 16 per entry, with that dilation rate.

    Returns:
      A functional model ``fastseg_tiny`` with the endpoints ``low_level`` (stride 4),
      ``features`` (stride 16), ``decoder`` (stride 8) and ``logits``.

    Raises:
      ValueError: bad widths, block counts or dilations.

    Example:
      >>> model = build_fastseg_tiny((360, 480, 3), num_classes=11)
      >>> model.count_params()  # 193,291 (0.19 M) at 11 classes
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4 or min(widths) < 1:
        raise ValueError(f"widths must be 4 positive channel counts (strides 2, 4, 8, 16), got {widths}")
    if blocks_s8 < 0 or not dilations or min(dilations) < 1:
        raise ValueError(f"blocks_s8 must be >= 0 and dilations a non-empty list of rates >= 1, got {blocks_s8}, {dilations}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    inputs = common.image_input(input_shape)
    x = common.normalize(inputs)
    x, crop = common.pad_to_multiple(x, 16)
    x = common.conv_bn_relu(x, widths[0], "stem", strides=2)
    x = _separable(x, widths[1], "down4", strides=2)
    x = _residual(x, "s4_block1", output_name="low_level")
    x = _separable(x, widths[2], "down8", strides=2)
    for i in range(1, blocks_s8 + 1):
        x = _residual(x, f"s8_block{i}")
    skip = x
    x = _separable(x, widths[3], "down16", strides=2)
    for i, rate in enumerate(dilations, 1):
        x = _residual(x, f"s16_block{i}", dilation=rate, output_name="features" if i == len(dilations) else None)
    x = common.conv_bn_relu(x, widths[2], "dec_reduce", kernel_size=1)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="dec_up")(x)
    x = layers.Concatenate(name="dec_concat")([x, skip])
    x = _separable(x, widths[2], "dec_fuse", output_name="decoder")
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    logits = _upsample_logits(x, 8, crop)
    return keras.Model(inputs, logits, name="fastseg_tiny")
