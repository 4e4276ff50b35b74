"""Building blocks shared by the model builders: input normalisation and conv-BN-ReLU."""

from __future__ import annotations

from tfseg._keras import keras

layers = keras.layers


def image_input(input_shape, name: str = "image"):
    """The model input: raw RGB pixels as float32 in [0, 255] (see ``normalize``)."""
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {tuple(input_shape)}")
    return keras.Input(shape=tuple(input_shape), name=name)


def normalize(x, name: str = "normalize"):
    """Maps [0, 255] pixels to [-1, 1] inside the graph.

    Normalisation lives in the model, not in the data pipeline, so that exported models take raw
    pixels and nobody can feed [0, 1] inputs by mistake (which degrades accuracy silently).
    """
    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name)(x)


def conv_bn_relu(x, filters: int, name: str, kernel_size: int = 3, strides: int = 1, dilation_rate: int = 1):
    """3x3 (by default) convolution without bias, batch norm, ReLU; layers named ``{name}_conv|_bn|_relu``."""
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
        use_bias=False, name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def check_divisible(input_shape, factor: int, model_name: str):
    """Raises a clear error when a fixed input size does not divide by the network's total stride."""
    for dim, size in zip(("height", "width"), input_shape[:2]):
        if size is not None and size % factor:
            raise ValueError(
                f"{model_name}: input {dim} {size} is not divisible by {factor} (the network's "
                f"total downsampling); use e.g. {max(factor, size // factor * factor)}"
            )
