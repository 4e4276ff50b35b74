"""Small image classifiers for the classification warm-up of distillation (CIFAR-10 shapes).

A ResNet-18 teacher (the CIFAR variant: 3x3 stem, no max pool) and a 5-layer CNN student. Like the
segmentation models they are flat functional tf_keras graphs with explicit layer names that take
float32 [0, 255] RGB and normalise inside the graph; they return logits (N, num_classes) and have
the endpoints ``features`` (the last convolutional feature map) and ``logits``.
"""

from __future__ import annotations

from tfseg._keras import keras
from tfseg.models.common import conv_bn_relu, image_input, normalize

layers = keras.layers

RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (filters, stride of the first block)


def _check(model_name, num_classes, width=1):
    if num_classes < 1 or width < 1:
        raise ValueError(f"{model_name}: num_classes and width must be positive, got {num_classes}, {width}")


def basic_block(x, filters: int, strides: int, name: str, output_name=None):
    """ResNet basic block: two 3x3 conv-BN (ReLU between), a shortcut (1x1 conv-BN when the shape changes), add, ReLU.

    Layers: ``{name}_conv1|_bn1|_relu1|_conv2|_bn2``, ``{name}_shortcut_conv|_bn``, ``{name}_add``,
    ``{name}_out`` (or ``output_name``).
    """
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_shortcut_conv")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=output_name or f"{name}_out")(y)


def build_resnet18_cifar(input_shape=(32, 32, 3), num_classes: int = 10):
    """Builds the CIFAR-style ResNet-18 (He et al., 2016): 3x3 stem, no max pool, 4 stages of 2 basic blocks.

    Args:
      input_shape: (height, width, 3); 32x32 for CIFAR (the four stages downsample by 8).
      num_classes: output logits.

    Returns:
      A functional model from float32 [0, 255] RGB images (normalised to [-1, 1] in the graph) to
      (N, num_classes) logits; 11,173,962 trainable parameters for 10 classes (the usual CIFAR
      ResNet-18 figure). Layers ``stem_*``, ``stage{s}_block{b}_*``, ``avg_pool``; endpoints
      ``features`` (stage 4 output, 4x4x512 for 32x32 input) and ``logits`` (the Dense layer).

    Raises:
      ValueError: non-positive num_classes or a bad input shape.

    Example:
      >>> teacher = build_resnet18_cifar()
      >>> teacher.output_shape
      (None, 10)
    """
    _check("ResNet-18", num_classes)
    inputs = image_input(input_shape)
    x = normalize(inputs)
    x = conv_bn_relu(x, 64, "stem")
    for stage, (filters, strides) in enumerate(RESNET18_STAGES, start=1):
        for block in (1, 2):
            last = stage == len(RESNET18_STAGES) and block == 2
            x = basic_block(
                x, filters, strides if block == 1 else 1, f"stage{stage}_block{block}",
                output_name="features" if last else None,
            )
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name="resnet18_cifar")


def build_cnn5(input_shape=(32, 32, 3), num_classes: int = 10, width: int = 32):
    """Builds a 5-layer CNN student: 4 x (3x3 conv, BN, ReLU) with 2x2 max pools after the first three, then one Dense.

    Filters ``width``, ``2 * width``, ``4 * width``, ``8 * width``; global average pooling before
    the Dense layer keeps it independent of the input size.

    Args:
      input_shape: (height, width, 3); 32x32 for CIFAR.
      num_classes: output logits.
      width: filters of the first convolution (32: about 0.39 M parameters for 10 classes).

    Returns:
      A functional model from float32 [0, 255] RGB images (normalised to [-1, 1] in the graph) to
      (N, num_classes) logits. Layers ``conv{i}_conv|_bn|_relu``, ``pool{i}``, ``avg_pool``;
      endpoints ``features`` (conv4 after ReLU, 4x4x(8*width) for 32x32 input) and ``logits``.

    Raises:
      ValueError: non-positive num_classes or width, or a bad input shape.

    Example:
      >>> student = build_cnn5(width=16)
      >>> student.output_shape
      (None, 10)
    """
    _check("CNN-5", num_classes, width)
    inputs = image_input(input_shape)
    x = normalize(inputs)
    for i in range(1, 5):
        x = conv_bn_relu(x, width * 2 ** (i - 1), f"conv{i}", output_name="features" if i == 4 else None)
        if i < 4:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, logits, name=f"cnn5_w{width}")
