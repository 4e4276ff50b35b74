"""Searched networks: the plain, flat functional tf_keras model of a ``tfseg.nas`` Architecture.

Registered in the zoo as ``searched`` (option ``architecture``: the JSON file ``tfseg search``
writes, or its dict), so a derived network trains, distils, prunes, quantizes and exports like any
zoo model. Layer names are explicit and stable: ``stem1..3``, ``b{branch}_l{layer}_{op}_...``,
``head_*``, ``classifier``, ``logits``.

The block functions (stem, cell ops, head) are also what the NAS supernet and the latency table
(which times each block alone in LiteRT) build, so what is timed is what is deployed. Only layers
that TFLite's int8 kernels and XNNPACK take are used: Conv2D, DepthwiseConv2D, BN, ReLU, Add and
bilinear ``Resizing`` to explicit sizes (never average pooling, which leaves XNNPACK's int8 path
and splits the graph).
"""

from __future__ import annotations

from tfseg._keras import keras
from tfseg.models.common import conv_bn_relu, image_input, normalize
from tfseg.nas.architecture import as_architecture, reference_architecture
from tfseg.nas.space import OPS, check_input_size, halve

layers = keras.layers


def resize(x, size, name: str):
    """Bilinear resize to an explicit (height, width); no layer when ``x`` already has that size."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    return layers.Resizing(*size, interpolation="bilinear", name=name)(x)


def cell_op(x, op: str, width: int, stride: int, name: str):
    """One cell's op on ``x``: ``width`` output channels at stride 1 or 2 ('same' sizes, see ``halve``).

    Layers are named ``{name}_...``; an identity ``skip`` adds no layer.
    """
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {', '.join(OPS)}")
    if stride not in (1, 2):
        raise ValueError(f"cell stride must be 1 or 2, got {stride}")
    in_size = tuple(x.shape[1:3])
    out_size = in_size if stride == 1 else (halve(in_size[0]), halve(in_size[1]))
    if op == "skip":
        if stride == 1 and x.shape[-1] == width:
            return x
        return conv_bn_relu(x, width, f"{name}_proj", kernel_size=1, strides=stride)
    if op == "conv3x3":
        return conv_bn_relu(x, width, name, strides=stride)
    if op == "conv3x3_x2":
        x = conv_bn_relu(x, width, f"{name}_a", strides=stride)
        return conv_bn_relu(x, width, f"{name}_b")
    if op == "zoomed_conv":
        half = (halve(in_size[0]), halve(in_size[1]))
        x = resize(x, half, f"{name}_down")
        x = conv_bn_relu(x, width, name)
        return resize(x, out_size, f"{name}_up")  # on a stride-2 edge the half size is the output size
    # sep_conv3x3
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    return conv_bn_relu(x, width, f"{name}_pw", kernel_size=1)


def stem(x, widths, stage_names=("stem1", "stem2", "stem3")):
    """Three stride-2 3x3 conv + BN + ReLU stages to 1/8; the 1/4 output is the ``low_level`` endpoint."""
    for index, (width, name) in enumerate(zip(widths, stage_names)):
        x = conv_bn_relu(x, width, name, strides=2, output_name="low_level" if index == 1 else None)
    return x


def head(branch_outputs, branch_scales, width: int, num_classes: int, input_size):
    """Fuses one or two branch outputs and classifies at the finest branch's scale.

    Each branch gets a 1x1 conv + BN + ReLU to ``width`` (the first, the coarsest branch, is the
    ``features`` endpoint); coarser ones are resized to the finest branch's size and added; a 3x3
    conv + BN + ReLU (``decoder``) and a 1x1 classifier follow, then a bilinear resize of the logits
    to ``input_size`` (the layer named ``logits``).
    """
    finest = min(range(len(branch_scales)), key=lambda i: branch_scales[i])
    size = tuple(branch_outputs[finest].shape[1:3])
    fused = []
    for index, (x, scale) in enumerate(zip(branch_outputs, branch_scales)):
        x = conv_bn_relu(x, width, f"head_b{index}", kernel_size=1, output_name="features" if index == 0 else None)
        fused.append(resize(x, size, f"head_b{index}_up"))
    x = fused[0] if len(fused) == 1 else layers.Add(name="head_add")(fused)
    x = conv_bn_relu(x, width, "head_fuse", output_name="decoder")
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    if tuple(x.shape[1:3]) == tuple(input_size):
        return layers.Activation("linear", name="logits")(x)
    return layers.Resizing(*input_size, interpolation="bilinear", name="logits")(x)



def build_searched_net(input_shape=(360, 480, 3), num_classes: int = 2, architecture=None):
    """Builds the network that ``architecture`` describes.

    Args:
      input_shape: (height, width, 3), each side >= 32; any size (explicit resizes, no padding).
      num_classes: output channels.
      architecture: the JSON file ``tfseg search`` writes, its dict, or an Architecture; None builds
        ``tfseg.nas.architecture.reference_architecture()`` (hand-made, not searched).

    Raises:
      ConfigError: a missing or malformed architecture file, or an input size the space cannot take.
    """
    if architecture is None:
        architecture = reference_architecture()
    arch = as_architecture(architecture)
    size = check_input_size(input_shape[:2])
    inputs = image_input((*size, input_shape[2] if len(input_shape) > 2 else 3))
    x = stem(normalize(inputs), arch.stem_widths)
    outputs = []
    for b, branch in enumerate(arch.branches):
        y = x
        for layer, (cell, stride) in enumerate(zip(branch, arch.strides(b))):
            y = cell_op(y, cell.op, cell.width, stride, name=f"b{b}_l{layer}_{cell.op}")
        outputs.append(y)
    logits = head(outputs, arch.branch_scales, arch.head_width, num_classes, size)
    return keras.Model(inputs, logits, name="searched")


__all__ = ["build_searched_net", "cell_op", "head", "resize", "stem"]
