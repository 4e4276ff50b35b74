"""MobileNetV2 (Sandler et al., 2018) as a backbone, with keras.applications' exact layer names.

Why our own copy instead of ``keras.applications.MobileNetV2``: the application is a nested model
when used as a backbone (TF-MOT rejects nested models), it has no ``output_stride`` (DeepLab-style
dilation), and its stride-2 padding for inputs of unknown size differs from TF-Slim's. Here the
backbone is a function on a tensor, so it becomes part of one flat functional graph; its layer
names are those of ``keras.applications.MobileNetV2`` (``Conv1``, ``bn_Conv1``,
``expanded_conv_depthwise``, ``block_N_expand``, ..., ``Conv_1_bn``, ``out_relu``), so pretrained
weights load by name (``tfseg.models.pretrained``).
"""

from __future__ import annotations

from tfseg._keras import keras

layers = keras.layers

# (expansion, filters, stride) of blocks 0..16, as in the paper's Table 2 and keras.applications.
BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)
# The last block of each stage, i.e. where the stride-4/8/16/32 features are complete.
LOW_LEVEL_BLOCK, S8_BLOCK, S16_BLOCK = 2, 5, 12

ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)  # the widths keras.applications has weights for
OUTPUT_STRIDES = (8, 16, 32)

# keras.applications' epsilon; its momentum 0.999 is too slow for CPU-length fine-tunes: after 9
# CamVid epochs (414 steps) the moving statistics still held 66 % of the ImageNet ones, and val
# pixel accuracy was 0.65 with them against 0.84 with batch statistics. 0.99 tracks in ~100 steps.
_BN = {"epsilon": 1e-3, "momentum": 0.99}


def make_divisible(value: float, divisor: int = 8) -> int:
    """Rounds a channel count to a multiple of ``divisor`` without losing more than 10 % (keras.applications' rule)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def block_filters(alpha: float) -> list:
    """The output channels of blocks 0..16 for width multiplier ``alpha``."""
    return [make_divisible(int(filters * alpha)) for _, filters, _ in BLOCKS]


def _stride2_padding(x):
    """keras.applications' ``correct_pad`` for a 3x3 stride-2 conv on a fixed-size input.

    For a known size this equals TF-Slim's SAME padding ((0, 1) when even, (1, 1) when odd).
    Returns None when a spatial size is unknown (the caller then uses padding="same", which is
    what TF-Slim does; keras.applications would pad (0, 1) there, one row too few for odd sizes).
    """
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return None
    return ((height % 2, 1), (width % 2, 1))


def _inverted_res_block(x, expansion: int, filters: int, stride: int, dilation: int, block_id: int):
    """One inverted residual block; layer names as in keras.applications.

    Returns:
      (block output, the expanded features after the depthwise conv's ReLU6).
    """
    in_channels = x.shape[-1]
    inputs = x
    if block_id:
        prefix = f"block_{block_id}_"
        x = layers.Conv2D(expansion * in_channels, 1, padding="same", use_bias=False, name=prefix + "expand")(x)
        x = layers.BatchNormalization(name=prefix + "expand_BN", **_BN)(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    else:
        prefix = "expanded_conv_"
    padding = "same"
    if stride == 2:
        pad = _stride2_padding(x)
        if pad is not None:
            x = layers.ZeroPadding2D(pad, name=prefix + "pad")(x)
            padding = "valid"
    x = layers.DepthwiseConv2D(
        3, strides=stride, dilation_rate=dilation, padding=padding, use_bias=False, name=prefix + "depthwise"
    )(x)
    x = layers.BatchNormalization(name=prefix + "depthwise_BN", **_BN)(x)
    x = expanded = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=prefix + "project")(x)
    x = layers.BatchNormalization(name=prefix + "project_BN", **_BN)(x)
    # Residual exactly where keras.applications has one (blocks whose nominal stride is 1 and that
    # keep their width): the layer set, and so weight loading, must not depend on output_stride.
    if BLOCKS[block_id][2] == 1 and in_channels == filters:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x, expanded


def mobilenet_v2_backbone(
    x, alpha: float = 1.0, output_stride: int = 32, include_last_conv: bool = False, name_endpoints: bool = False
) -> dict:
    """Applies MobileNetV2's feature extractor to ``x`` (already scaled to [-1, 1]).

    Once ``output_stride`` is reached, later stride-2 blocks use stride 1 and their following
    depthwise convolutions a growing dilation rate (DeepLab / TF-Slim ``output_stride`` rule: the
    block that would exceed the stride keeps rate 1, the blocks after it get rate 2 (then 4)).
    The layer names and weight shapes do not depend on ``output_stride``.

    Args:
      x: a (batch, H, W, 3) Keras tensor, already normalised (``common.normalize``).
      alpha: width multiplier; pretrained weights exist for 0.35, 0.5, 0.75, 1.0, 1.3, 1.4.
      output_stride: 8, 16 or 32: the stride of ``features``.
      include_last_conv: also apply the 1x1 ``Conv_1`` (1280 channels) + ``Conv_1_bn`` + ``out_relu``.
      name_endpoints: insert identity layers named ``low_level`` (after ``block_2_add``) and
        ``features`` (after the last backbone layer) and continue the graph from them, so a model
        built on this backbone has those endpoints (``common.ENDPOINT_NAMES``) without renaming the
        layers that carry pretrained weights.

    Returns:
      ``{"low_level": stride-4 tensor (block_2_add, 24*alpha ch), "low_level_expanded": the same
      block's expanded features (block_2_depthwise_relu, 6x as many channels: DeepLabV3+'s decoder
      input for MobileNetV2), "s8": block_5_add (32*alpha ch),
      "s16": block_12_add (96*alpha ch), "features": block_16_project_BN (320*alpha ch) or out_relu}``.
      With ``output_stride`` 8, ``s16`` has stride 8 (the keys name the stage, not the stride).

    Raises:
      ValueError: ``alpha`` not positive, ``output_stride`` not 8/16/32, ``x`` not 3-channel.

    Example:
      >>> inputs = common.image_input((96, 96, 3))
      >>> feats = mobilenet_v2_backbone(common.normalize(inputs), alpha=0.35, output_stride=16)
      >>> feats["features"].shape  # (None, 6, 6, 112)
    """
    if not alpha > 0:
        raise ValueError(f"MobileNetV2 alpha must be positive, got {alpha}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"MobileNetV2 output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    if x.shape[-1] != 3:
        raise ValueError(f"MobileNetV2 expects 3 input channels, got shape {tuple(x.shape)}")

    # keras.applications' Conv1 uses padding="same", which is TF-Slim's padding at any size.
    x = layers.Conv2D(make_divisible(32 * alpha), 3, strides=2, padding="same", use_bias=False, name="Conv1")(x)
    x = layers.BatchNormalization(name="bn_Conv1", **_BN)(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)

    out = {}
    current_stride, rate = 2, 1
    for block_id, ((expansion, _, stride), filters) in enumerate(zip(BLOCKS, block_filters(alpha))):
        if stride == 2 and current_stride >= output_stride:
            stride, dilation = 1, rate
            rate *= 2
        else:
            dilation = rate
            current_stride *= stride
        x, expanded = _inverted_res_block(x, expansion, filters, stride, dilation, block_id)
        if block_id == LOW_LEVEL_BLOCK:
            out["low_level_expanded"] = expanded
            if name_endpoints:
                x = layers.Activation("linear", name="low_level")(x)
            out["low_level"] = x
        elif block_id == S8_BLOCK:
            out["s8"] = x
        elif block_id == S16_BLOCK:
            out["s16"] = x
    if include_last_conv:
        last_filters = make_divisible(1280 * alpha) if alpha > 1.0 else 1280
        x = layers.Conv2D(last_filters, 1, use_bias=False, name="Conv_1")(x)
        x = layers.BatchNormalization(name="Conv_1_bn", **_BN)(x)
        x = layers.ReLU(6.0, name="out_relu")(x)
    if name_endpoints:
        x = layers.Activation("linear", name="features")(x)
    out["features"] = x
    return out
