"""The full-resolution tail of a segmentation model, and the export outputs that end before it.

tfseg's students compute their logits at stride 4-8 and end with shape-only layers that bring them
to the input size: a bilinear ``UpSampling2D`` (or ``Resizing``), then the ``Cropping2D`` that
undoes the padding to a multiple of the network's stride (``tfseg.models.common.pad_to_multiple``)
or an identity ``Activation``, the last one named ``logits``. In int8 on LiteRT that tail (C
channels resized to 360x480, quantized at the output) costs a large share of an invoke, and the
device runner then takes the argmax over every input pixel. The export outputs (``OUTPUTS``):

- ``logits``: the model as it is: logits at the input size;
- ``low_res_logits``: the graph cut before the final upsampling: logits at the model's own
  stride; the runner upsamples them (bilinear with half-pixel centres, what the cut layer
  computed) and crops, or takes the argmax first and resizes the class ids (nearest);
- ``class_map``: the same cut followed by an in-graph ARG_MAX over the classes: uint8 class ids
  (int32 beyond 256 classes), shape (1, h, w), at the logits' stride; the runner resizes them
  with nearest.

``find_tail(model)`` walks back from the output through the shape-only layers to the last tensor
before the resolution jump and describes how that tensor maps onto the input pixels (``Tail``);
``output_model(model, output)`` is the Keras model to convert; ``Tail.output_fields(output)`` the
``output`` entries of the export's ``tfseg/1`` metadata (docs/export_format.md):

    "stride": [8, 8],                  # input pixels per output pixel (informative)
    "upsampling": {"method": "bilinear", "size": [368, 480], "offset": [0, 0]},
    "source_layer": "head_add"         # the Keras layer whose output is exported (informative)

The runner resizes the (h, w) output to ``size`` with ``method`` (half-pixel centres, as
``tf.image.resize`` and Keras' ``UpSampling2D``), then keeps the ``input.height`` x
``input.width`` window whose top-left corner is ``offset``: that window lines up with the input
pixels. With half-pixel centres, input pixel ``(y, x)`` sits at output coordinate
``((y + offset[0] + 0.5) * h / size[0] - 0.5, (x + offset[1] + 0.5) * w / size[1] - 0.5)``.

Example:
  >>> tail = find_tail(model)          # mobilenet_v2_lraspp at 360x480: logits_up, then logits
  >>> tail.low_size, tail.size, tail.offset
  ((46, 60), (368, 480), (0, 0))
  >>> to_convert = output_model(model, "class_map", tail)
"""

from __future__ import annotations

from dataclasses import dataclass

from tfseg._keras import keras, tf
from tfseg.errors import ConfigError
from tfseg.models.common import input_layers, unwrapped_name
from tfseg.options import EXPORT_OUTPUTS as OUTPUTS

layers = keras.layers

# How the runner resizes each low-resolution output to the input size.
RUNNER_METHOD = {"low_res_logits": "bilinear", "class_map": "nearest"}


@dataclass(frozen=True)
class Tail:
    """Where a model's final upsampling starts, and how its input maps onto the input pixels.

    Attributes:
      tensor: the Keras tensor the final upsampling takes (the low-resolution logits).
      source_layer: the name of the layer that makes ``tensor`` (without TF-MOT's ``quant_`` prefix).
      layers: the names of the tail's layers, from the upsampling to the model's output.
      low_size: (h, w) of ``tensor``.
      size: (H', W') the upsampling brings it to.
      offset: (top, left) of the window the crops keep of ``size``.
      output_size: (H, W) of the model's output (the window's size).
    """

    tensor: object
    source_layer: str
    layers: tuple
    low_size: tuple
    size: tuple
    offset: tuple
    output_size: tuple

    @property
    def stride(self) -> list:
        """Input pixels per output pixel, per axis (whole numbers when they are)."""
        ratios = [big / small for big, small in zip(self.size, self.low_size)]
        return [int(r) if float(r).is_integer() else round(r, 6) for r in ratios]

    def output_fields(self, output: str) -> dict:
        """The ``output`` entries of the export's metadata for ``output`` (see the module docstring)."""
        return {
            "height": int(self.low_size[0]), "width": int(self.low_size[1]),
            "stride": self.stride,
            "upsampling": {"method": RUNNER_METHOD[output], "size": [int(v) for v in self.size],
                           "offset": [int(v) for v in self.offset]},
            "source_layer": self.source_layer,
        }


def _is_identity(layer) -> bool:
    return isinstance(layer, layers.Activation) and getattr(layer.activation, "__name__", "") == "linear"


def _upsampled_size(layer, low_size) -> tuple:
    """The size a bilinear UpSampling2D / Resizing layer makes of ``low_size``."""
    if isinstance(layer, layers.UpSampling2D):
        return tuple(int(n) * int(f) for n, f in zip(low_size, layer.size))
    return int(layer.height), int(layer.width)


def _static_size(model, tensor, input_size) -> tuple:
    size = tuple(tensor.shape[1:3])
    if None in size:
        if input_size is None:
            raise ConfigError(f"model {model.name!r} accepts any input size: give input_size to cut its output")
        probe = keras.Model(model.inputs, tensor)
        size = tuple(probe.compute_output_shape((1, *input_size, 3))[1:3])
    return tuple(int(v) for v in size)


def find_tail(model, input_size=None) -> Tail:
    """Walks back from a model's output through its shape-only tail to the final upsampling.

    The tail may hold ``Cropping2D`` and identity (``linear``) ``Activation`` layers after one
    bilinear ``UpSampling2D`` or ``Resizing``; TF-MOT's wrappers (quantization-aware models) are
    looked through.

    Args:
      model: a Keras segmentation model (float or quantization-aware).
      input_size: (height, width), for models built for any input size.

    Returns:
      The ``Tail``.

    Raises:
      ConfigError: no such tail (naming the model and the layer where the walk stopped), a
        nearest-neighbour or aspect-cropping resize, or a tail that does not end at the size of
        the model's output.
    """
    what = f"model {model.name!r} has no bilinear upsampling at the end to cut"
    advice = ("; export it with output 'logits' (low_res_logits and class_map need logits that a final bilinear "
              "UpSampling2D or Resizing brings to the input size, as in mobilenet_v2_lraspp, "
              "mobilenet_v2_deeplabv3plus or fastseg_tiny)")
    if len(model.outputs) != 1:
        raise ConfigError(f"{what}: it has {len(model.outputs)} outputs, not one{advice}")
    layer = model.outputs[0]._keras_history.layer
    names, crop_top, crop_left, crop_h, crop_w = [], 0, 0, 0, 0
    while True:
        inner = getattr(layer, "layer", layer)  # a TF-MOT QuantizeWrapper holds the layer
        names.append(layer.name)
        if isinstance(inner, (layers.UpSampling2D, layers.Resizing)):
            how = f"uses {inner.interpolation!r} interpolation"
            if getattr(inner, "crop_to_aspect_ratio", False):
                how = "crops to the aspect ratio"
            elif inner.interpolation == "bilinear":
                break
            raise ConfigError(f"{what}: its final upsampling {layer.name!r} ({type(inner).__name__}) {how}; only "
                              f"bilinear resizing without cropping is mapped back to the input{advice}")
        if isinstance(inner, layers.Cropping2D):
            (top, bottom), (left, right) = inner.cropping
            crop_top, crop_left = crop_top + top, crop_left + left
            crop_h, crop_w = crop_h + top + bottom, crop_w + left + right
        elif not _is_identity(inner):
            raise ConfigError(
                f"{what}: walking back from its output {names[0]!r}, layer {layer.name!r} ({type(inner).__name__}) "
                f"comes before any bilinear UpSampling2D or Resizing (only Cropping2D and identity Activation "
                f"layers may follow the final upsampling){advice}")
        parents = input_layers(layer)
        if len(parents) != 1 or isinstance(parents[0], keras.layers.InputLayer):
            raise ConfigError(f"{what}: walking back from its output {names[0]!r}, layer {layer.name!r} "
                              f"takes the model's input or several inputs{advice}")
        layer = parents[0]
    tensor = layer.get_input_at(0)
    source = unwrapped_name(tensor._keras_history.layer.name)  # a QAT model's quant_classifier: classifier
    low_size = _static_size(model, tensor, input_size)
    size = _upsampled_size(getattr(layer, "layer", layer), low_size)
    output_size = (size[0] - crop_h, size[1] - crop_w)
    expected = _static_size(model, model.outputs[0], input_size)
    if output_size != expected:
        raise ConfigError(f"{what}: its tail {names[::-1]} makes {output_size[0]}x{output_size[1]} of "
                          f"{low_size[0]}x{low_size[1]}, but the output is {expected[0]}x{expected[1]}")
    return Tail(tensor, source, tuple(names[::-1]), low_size, size, (crop_top, crop_left), output_size)


def class_ids(logits):
    """The argmax over the last axis as uint8 (int32 beyond 256 classes): TFLite ARG_MAX (+ CAST)."""
    ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(ids, tf.uint8) if logits.shape[-1] <= 256 else ids


def output_model(model, output: str = "logits", tail: Tail | None = None):
    """The Keras model to convert for an export ``output`` (``OUTPUTS``).

    Args:
      model: the segmentation model (float or quantization-aware).
      output: ``logits`` (the model itself), ``low_res_logits`` or ``class_map``.
      tail: ``find_tail(model)``, if already found.

    Returns:
      ``model``, or a model on the same layers ending at the low-resolution logits (with a
      ``class_map`` layer after them for ``class_map``).

    Raises:
      ConfigError: an unknown output, or a model without an upsampling tail.
    """
    if output not in OUTPUTS:
        raise ConfigError(f"output must be one of {OUTPUTS}, got {output!r}")
    if output == "logits":
        return model
    tail = tail or find_tail(model)
    result = tail.tensor
    if output == "class_map":
        result = layers.Lambda(class_ids, name="class_map")(result)
    return keras.Model(model.inputs, result, name=model.name)


__all__ = ["OUTPUTS", "RUNNER_METHOD", "Tail", "class_ids", "find_tail", "output_model"]
