"""Building blocks shared by the model builders: input normalisation and conv-BN-ReLU."""

from __future__ import annotations

from tfseg._keras import keras
from tfseg._tfmot import unwrapped_name  # TF-MOT's wrapper names; imports no TF-MOT

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


def conv_bn_relu(
    x, filters: int, name: str, kernel_size: int = 3, strides: int = 1, dilation_rate: int = 1, output_name=None
):
    """3x3 (by default) convolution without bias, batch norm, ReLU; layers named ``{name}_conv|_bn|_relu``.

    ``output_name`` renames the ReLU, e.g. to an endpoint name (``"features"``).
    """
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
        use_bias=False, name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=output_name or f"{name}_relu")(x)


# Feature endpoints are found by layer name, so they survive save/load and need no side table:
# the layer whose output is the endpoint carries exactly one of these names.
ENDPOINT_NAMES = (
    "low_level",  # high-resolution backbone features (stride 4) used by decoders / skip KD
    "features",  # the backbone's last stage (what the head reads)
    "decoder",  # the head's last feature map before the classifier
    "logits",  # class scores at input resolution
)


def input_layers(layer) -> list:
    """The layers feeding ``layer`` at its first call, in the order it takes them ([] for an input)."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    if not nodes:
        return []
    inputs = nodes[0].inbound_layers
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def endpoints(model) -> dict:
    """``{endpoint name: layer}`` for the endpoints a model has (see ``ENDPOINT_NAMES``).

    Also finds them in pruned and quantization-aware copies, whose layers TF-MOT renamed.
    """
    names = {}
    for layer in model.layers:
        names.setdefault(layer.name, layer)
        names.setdefault(unwrapped_name(layer.name), layer)
    return {name: names[name] for name in ENDPOINT_NAMES if name in names}


def pad_to_multiple(x, multiple: int, name: str = "pad_to_stride"):
    """Zero-pads a fixed-size input at the bottom/right up to a multiple of the network's stride.

    Returns ``(padded, crop)``; pass ``crop`` to ``crop_padding`` on the logits so that the output
    has the input's size again (e.g. 360x480 through a stride-32 network: padded to 384x480).
    Inputs of unknown size are returned unchanged (they must then divide by ``multiple``).
    ZeroPadding2D and Cropping2D are used because TF-MOT and TFLite accept both, unlike Resizing.
    """
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return x, None
    pad_h, pad_w = -height % multiple, -width % multiple
    if not (pad_h or pad_w):
        return x, None
    crop = ((0, pad_h), (0, pad_w))
    return layers.ZeroPadding2D(crop, name=name)(x), crop


def crop_padding(x, crop, name: str = "crop_to_input"):
    """Undoes ``pad_to_multiple`` (no-op when nothing was padded)."""
    return x if crop is None else layers.Cropping2D(crop, name=name)(x)


def copy_weights(source, target) -> int:
    """Copies every weighted layer of ``source`` into the layer of the same name in ``target``.

    Both models must have the same weighted layers (names and shapes); nothing is copied otherwise.

    Returns:
      The number of layers copied.

    Raises:
      ValueError: naming the layers missing from ``target`` or whose weight shapes differ.
    """
    missing, mismatched, copied = [], [], 0
    for layer in source.layers:
        if not layer.weights:
            continue
        try:
            other = target.get_layer(layer.name)
        except ValueError:
            missing.append(layer.name)
            continue
        values = layer.get_weights()
        if [w.shape for w in values] != [tuple(w.shape) for w in other.weights]:
            mismatched.append(layer.name)
            continue
        other.set_weights(values)
        copied += 1
    source_names = {layer.name for layer in source.layers}
    extra = [layer.name for layer in target.layers if layer.weights and layer.name not in source_names]
    if missing or mismatched or extra:
        raise ValueError(
            f"cannot copy {source.name!r} into {target.name!r}: missing in target {missing[:5]}, "
            f"shapes differ {mismatched[:5]}, only in target {extra[:5]} (same builder options?)"
        )
    return copied


def with_input_shape(model, input_shape, builder, **builder_kwargs):
    """Rebuilds ``model`` for another input size with the same weights.

    Args:
      model: a model made by ``builder``.
      input_shape: the new (height, width, 3).
      builder: the builder that made ``model`` (any tfseg builder).
      **builder_kwargs: the options ``model`` was built with (backbone, output_stride, ...);
        ``num_classes`` defaults to the model's output channels. ``weights`` is ignored.

    Returns:
      A new model from ``builder`` at ``input_shape`` holding ``model``'s weights.

    Raises:
      ValueError: the rebuilt model's layers do not match (different builder options).

    Example:
      >>> small = build_deeplabv3((96, 96, 3), 4, backbone="resnet18")
      >>> big = with_input_shape(small, (360, 480, 3), build_deeplabv3, backbone="resnet18")

    Rebuilding from ``model.get_config()`` is not enough: pooling factors, padding and cropping
    depend on the input size, so the builder has to run again.
    """
    builder_kwargs.pop("weights", None)
    builder_kwargs.setdefault("num_classes", model.output_shape[-1])
    new = builder(input_shape=tuple(input_shape), **builder_kwargs)
    copy_weights(model, new)
    return new
