"""ResNet backbones (He et al., 2016) as flat functional tf_keras code, with DeepLab-style dilation.

ResNet-50/101/152 are v1 bottleneck networks laid out exactly like ``keras.applications``'
``ResNet50``/``ResNet101``/``ResNet152``: the same layers with the same names (``conv1_pad``,
``conv1_conv``, ``conv1_bn``, ``conv1_relu``, ``pool1_pad``, ``pool1_pool``,
``conv2_block1_0_conv`` ... ``conv5_block3_out``), biased convolutions, the stride on the first
1x1 convolution of a block and BN epsilon 1.001e-5. So keras-applications ``*_notop.h5`` weights
load by layer name (``tfseg.models.pretrained.load_keras_h5``).

ResNet-18/34 are basic-block networks (torchvision's layout: bias-free convolutions, a 1x1
projection shortcut where the shape changes, BN epsilon 1e-5) named in the same scheme:
``conv{stage}_block{i}_1_conv``, ``_1_bn``, ``_1_relu``, ``_2_conv``, ``_2_bn``, ``_0_conv``,
``_0_bn`` (shortcut), ``_add``, ``_out``. keras.applications has no weights for them.

Input scaling ("caffe" preprocessing): keras-applications ResNets were trained on BGR images minus
the BGR ImageNet mean. Our models take RGB, so ``preprocess_caffe`` subtracts the mean in RGB order
inside the graph (a ``Rescaling`` layer with a per-channel offset, which saves, loads and converts
to TFLite like any layer; TF-MOT's whole-model prune/QAT calls reject it, see STACK.md), and the RGB->BGR swap is folded into the weights instead:
the loader reverses the input-channel axis of the first kernel
(``load_keras_h5(model, path, input_channel_flip="conv1_conv")``), so
``conv1(flip(x) - mean_bgr) == conv1_flipped(x - mean_rgb)`` exactly and the graph has no extra op.
"""

from __future__ import annotations

from tfseg._keras import keras
from tfseg.models.common import image_input

layers = keras.layers

# ImageNet channel means of keras-applications' "caffe" mode, here in RGB order (BGR: 103.939,
# 116.779, 123.68). No division by a standard deviation in that mode.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)

# depth -> (block kind, blocks per stage conv2..conv5)
RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}

_STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck width (output is 4x) or basic-block width
_BN_EPSILON = {"bottleneck": 1.001e-5, "basic": 1e-5}  # keras.applications / torchvision
OUTPUT_STRIDES = (8, 16, 32)


def preprocess_caffe(x, name: str = "preprocess"):
    """Subtracts the ImageNet RGB mean from [0, 255] RGB pixels inside the graph.

    This is keras-applications' "caffe" preprocessing minus its RGB->BGR swap, which the weight
    loader folds into ``conv1_conv`` (see the module docstring). No scaling: ResNet weights from
    keras.applications expect pixel-range inputs.
    """
    return layers.Rescaling(1.0, offset=[-m for m in CAFFE_MEAN_RGB], name=name)(x)


def resnet_out_channels(depth: int) -> int:
    """Channels of the last stage (2048 for bottleneck ResNets, 512 for ResNet-18/34)."""
    kind, _ = _layout(depth)
    return 4 * _STAGE_WIDTHS[-1] if kind == "bottleneck" else _STAGE_WIDTHS[-1]


def _layout(depth):
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth!r}")
    return RESNET_LAYOUTS[depth]


def _bottleneck_block(x, filters, stride, dilation, conv_shortcut, name):
    """keras.applications ``block1``, plus a dilation rate for the 3x3 convolution."""
    eps = _BN_EPSILON["bottleneck"]
    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=name + "_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=eps, name=name + "_0_bn")(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride, name=name + "_1_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name=name + "_1_bn")(x)
    x = layers.Activation("relu", name=name + "_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, name=name + "_2_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name=name + "_2_bn")(x)
    x = layers.Activation("relu", name=name + "_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=name + "_3_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name=name + "_3_bn")(x)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def _basic_block(x, filters, stride, dilation, conv_shortcut, name):
    """torchvision ``BasicBlock`` (two 3x3 convolutions), dilated like DeepLab's ResNets.

    Unlike torchvision (which refuses dilation in basic blocks) both 3x3 convolutions take the
    rate; a strided block is never dilated.
    """
    eps = _BN_EPSILON["basic"]
    if conv_shortcut:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=name + "_0_conv")(x)
        shortcut = layers.BatchNormalization(epsilon=eps, name=name + "_0_bn")(shortcut)
    else:
        shortcut = x
    if stride > 1:
        # Explicit symmetric padding as in torchvision (padding=1): "same" would pad (0, 1) on even
        # sizes and shift the sampling grid by one pixel relative to the stride-2 shortcut.
        x = layers.ZeroPadding2D(1, name=name + "_1_pad")(x)
        x = layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=name + "_1_conv")(x)
    else:
        x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, use_bias=False, name=name + "_1_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name=name + "_1_bn")(x)
    x = layers.Activation("relu", name=name + "_1_relu")(x)
    x = layers.Conv2D(filters, 3, padding="same", dilation_rate=dilation, use_bias=False, name=name + "_2_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name=name + "_2_bn")(x)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def resnet_backbone(x, depth: int = 50, output_stride: int = 32, name_endpoints: bool = True) -> dict:
    """Runs a ResNet on ``x`` (already preprocessed, see ``preprocess_caffe``).

    With ``output_stride`` 16 (or 8) the last one (or two) stages keep stride 1 and dilate their
    3x3 convolutions instead (rate 2, then 4), as in DeepLab / torchvision's
    ``replace_stride_with_dilation``: the first block of a dilated stage uses the previous rate,
    the others the new one. Weight shapes do not change, so pretrained weights still load.

    With ``name_endpoints`` two identity layers carry the endpoint names
    (``tfseg.models.common.ENDPOINT_NAMES``) without renaming a keras-applications layer:
    ``low_level`` after ``conv2_block{n}_out`` and ``features`` after ``conv5_block{n}_out``. Both
    sit on the main path, so every model built on the backbone has them.

    Args:
      x: a (batch, H, W, 3) tensor, preprocessed.
      depth: 18, 34, 50, 101 or 152.
      output_stride: 8, 16 or 32; total downsampling of ``features``.
      name_endpoints: insert the ``low_level`` and ``features`` identity layers (False when two
        backbones share one graph, or for a layer-for-layer copy of keras.applications).

    Returns:
      ``{"low_level": stride-4 tensor, "s8": conv3 output, "s16": conv4 output, "features": conv5
      output}``. ``s8``/``s16`` name the nominal stage; their real stride is
      ``min(nominal, output_stride)``. Spatial sizes are ``ceil(H / stride)`` (use
      ``common.pad_to_multiple`` for exact multiples).

    Raises:
      ValueError: unknown depth or output stride.

    Example:
      >>> inputs = image_input((224, 224, 3))
      >>> feats = resnet_backbone(preprocess_caffe(inputs), depth=50, output_stride=16)
      >>> feats["features"].shape  # (None, 14, 14, 2048)
    """
    kind, blocks = _layout(depth)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"ResNet output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
    bottleneck = kind == "bottleneck"
    eps = _BN_EPSILON[kind]
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(x)
    x = layers.Conv2D(64, 7, strides=2, use_bias=bottleneck, name="conv1_conv")(x)
    x = layers.BatchNormalization(epsilon=eps, name="conv1_bn")(x)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    out = {}
    current_stride, rate = 4, 1
    block_fn = _bottleneck_block if bottleneck else _basic_block
    for stage, (filters, n_blocks) in enumerate(zip(_STAGE_WIDTHS, blocks), start=2):
        stride = 1 if stage == 2 else 2
        if current_stride * stride > output_stride:
            stride, next_rate = 1, rate * stride
        else:
            current_stride, next_rate = current_stride * stride, rate
        in_channels = x.shape[-1]
        for i in range(1, n_blocks + 1):
            first = i == 1
            conv_shortcut = first and (bottleneck or stride != 1 or in_channels != filters)
            x = block_fn(
                x, filters, stride=stride if first else 1, dilation=rate if first else next_rate,
                conv_shortcut=conv_shortcut, name=f"conv{stage}_block{i}",
            )
        rate = next_rate
        if stage == 2:
            if name_endpoints:
                x = layers.Activation("linear", name="low_level")(x)
            out["low_level"] = x
        elif stage == 3:
            out["s8"] = x
        elif stage == 4:
            out["s16"] = x
    if name_endpoints:
        x = layers.Activation("linear", name="features")(x)
    out["features"] = x
    return out


def build_resnet(input_shape=(None, None, 3), depth: int = 50, output_stride: int = 32, preprocess: bool = True):
    """A ResNet backbone as a model: images to the ``features`` endpoint (no classifier).

    Args:
      input_shape: (height, width, 3).
      depth: 18, 34, 50, 101 or 152.
      output_stride: 8, 16 or 32 (dilated last stages below 32).
      preprocess: include ``preprocess_caffe`` (inputs are then [0, 255] RGB); False takes inputs
        already preprocessed, as keras.applications' ResNets do.

    Returns:
      A flat functional model named ``resnet{depth}`` whose output is ``features``; with depth
      50/101/152 and output_stride 32 its weighted layers are exactly those of
      ``keras.applications.ResNet{depth}(include_top=False)``.

    Raises:
      ValueError: bad input shape, depth or output stride.

    Example:
      >>> backbone = build_resnet((224, 224, 3), depth=18)
      >>> backbone.output_shape  # (None, 7, 7, 512)
    """
    inputs = image_input(input_shape)
    x = preprocess_caffe(inputs) if preprocess else inputs
    feats = resnet_backbone(x, depth=depth, output_stride=output_stride)
    return keras.Model(inputs, feats["features"], name=f"resnet{depth}")
