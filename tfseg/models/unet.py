"""U-Net (Ronneberger et al., 2015) with batch norm, as a flat functional tf_keras graph."""

from __future__ import annotations

from tfseg._keras import keras
from tfseg.models.common import conv_bn_relu, crop_padding, image_input, normalize, pad_to_multiple

layers = keras.layers


def build_unet(input_shape=(None, None, 3), num_classes: int = 2, depth: int = 4, width: int = 32):
    """Builds a U-Net: ``depth`` down/up levels, ``width`` filters at the first level, doubling per level.

    Args:
      input_shape: (height, width, 3). Fixed sizes are zero-padded to a multiple of ``2**depth``
        and the logits cropped back; unknown sizes (None) must divide by ``2**depth`` at run time.
      num_classes: output channels (logits).
      depth: number of 2x downsamplings (1-6).
      width: filters of the first level.

    Returns:
      A functional model from float32 [0, 255] images to (H, W, num_classes) logits, with layer
      names ``enc{i}_*``, ``bottleneck_*``, ``dec{i}_*``, ``classifier`` and the endpoints ``features`` (bottleneck),
      ``decoder`` (last decoder block) and ``logits``.

    Example:
      >>> model = build_unet((96, 96, 3), num_classes=5, depth=3, width=16)
    """
    if not 1 <= depth <= 6:
        raise ValueError(f"U-Net depth must be 1..6, got {depth}")
    if width < 1 or num_classes < 1:
        raise ValueError(f"U-Net width and num_classes must be positive, got {width}, {num_classes}")
    inputs = image_input(input_shape)
    x, crop = pad_to_multiple(normalize(inputs), 2**depth)
    skips = []
    for level in range(1, depth + 1):
        filters = width * 2 ** (level - 1)
        x = conv_bn_relu(x, filters, f"enc{level}_a")
        x = conv_bn_relu(x, filters, f"enc{level}_b")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
    x = conv_bn_relu(x, width * 2**depth, "bottleneck_a")
    x = conv_bn_relu(x, width * 2**depth, "bottleneck_b", output_name="features")
    for level in range(depth, 0, -1):
        filters = width * 2 ** (level - 1)
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"dec{level}_up")(x)
        x = layers.Concatenate(name=f"dec{level}_concat")([x, skips[level - 1]])
        x = conv_bn_relu(x, filters, f"dec{level}_a")
        x = conv_bn_relu(x, filters, f"dec{level}_b", output_name="decoder" if level == 1 else None)
    x = layers.Conv2D(num_classes, 1, name="classifier")(x)
    # The classifier keeps one name at every input size, so weights copy between sizes by name.
    logits = crop_padding(x, crop, name="logits") if crop else layers.Activation("linear", name="logits")(x)
    return keras.Model(inputs, logits, name=f"unet_d{depth}_w{width}")
