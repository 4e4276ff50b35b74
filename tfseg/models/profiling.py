"""What a model costs: parameters, multiply-accumulates counted layer by layer, TFLite sizes.

MACs are counted per image from each layer's configuration and its input/output shapes:

- ``Conv1D/2D/3D``: output positions x kernel taps x input channels / groups x filters. Stride
  and dilation act through the output shape (dilation spreads the taps, it does not add any).
- ``DepthwiseConv``: output positions x kernel taps x input channels x depth multiplier.
- ``SeparableConv``: its depthwise part plus the 1x1 pointwise part.
- ``ConvTranspose``: input positions x kernel taps x input channels x filters (every input
  value is scattered through the whole kernel; taps cropped by ``padding="same"`` are counted,
  as TFLite's TRANSPOSE_CONV computes them too).
- ``Dense``: output values x input units (on a feature map it is a 1x1 convolution).
- ``BatchNormalization``: 0. At inference it folds into the convolution before it.
- Pooling, up-sampling, resizing, add, multiply, concatenate, activations: 0 MACs. Their
  arithmetic is reported apart, as ``elementwise`` operations: one per computed output value
  (bias adds and fused activations of conv/dense layers too; one per operand beyond the first
  for merges, one per window element for pooling, none for copies such as nearest up-sampling,
  concatenation, padding or cropping).

A layer with weights that none of these rules covers (e.g. an RNN or an attention layer) is
listed under ``uncounted`` instead of being counted as 0.
"""

from __future__ import annotations

import math

import numpy as np

from tfseg._keras import keras, tf
from tfseg.tflite import model_input_shapes, random_images, to_tflite_bytes

layers = keras.layers

_CONV_TRANSPOSE = (layers.Conv1DTranspose, layers.Conv2DTranspose, layers.Conv3DTranspose)
_DEPTHWISE = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_SEPARABLE = (layers.SeparableConv1D, layers.SeparableConv2D)
_CONV = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
_POOLING = (
    layers.MaxPooling1D, layers.MaxPooling2D, layers.MaxPooling3D,
    layers.AveragePooling1D, layers.AveragePooling2D, layers.AveragePooling3D,
)
_GLOBAL_POOLING = (
    layers.GlobalMaxPooling1D, layers.GlobalMaxPooling2D, layers.GlobalMaxPooling3D,
    layers.GlobalAveragePooling1D, layers.GlobalAveragePooling2D, layers.GlobalAveragePooling3D,
)
_MERGE = (layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum, layers.Minimum)
_PER_VALUE = (  # one operation per output value
    layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization,
    layers.Rescaling, layers.Normalization,
    layers.Activation, layers.ReLU, layers.LeakyReLU, layers.PReLU, layers.ELU, layers.Softmax,
    layers.ThresholdedReLU,
)
# Layers with weights whose MAC count is 0 by definition (table look-up, per-channel affine).
_NO_MACS = (
    layers.Embedding, layers.BatchNormalization, layers.LayerNormalization, layers.GroupNormalization, layers.PReLU,
)
# TF-MOT's QuantizeLayer (fake-quantizes the input of a QAT model) holds min/max variables; named
# here rather than imported so that profiling never imports TF-MOT.
_FAKE_QUANT_LAYERS = ("QuantizeLayer",)


def _size(shape) -> int:
    return math.prod(int(d) for d in shape)


def _fused_ops(layer, out_values: int) -> int:
    """Bias add and fused activation of a conv/dense layer, one operation per output value each."""
    config = layer.get_config()
    ops = out_values if config.get("use_bias") else 0
    return ops + (out_values if config.get("activation", "linear") != "linear" else 0)


def _channels(shape, layer) -> int:
    axis = 0 if layer.get_config().get("data_format") == "channels_first" else -1  # shape has no batch
    return int(shape[axis])


def layer_cost(layer, input_shapes, output_shapes):
    """(MACs, elementwise operations) of one call of ``layer``; MACs is None when no rule covers it.

    Args:
      layer: a Keras layer (a wrapper such as TF-MOT's pruning or QAT wrapper is costed as the
        layer it wraps).
      input_shapes, output_shapes: lists of fully known shapes without the batch dimension.
    """
    if isinstance(layer, layers.Wrapper):
        layer = layer.layer
    in_values = sum(_size(s) for s in input_shapes)
    out_values = sum(_size(s) for s in output_shapes)
    config = layer.get_config()
    taps = math.prod(config.get("kernel_size", (1,)))
    if isinstance(layer, _CONV_TRANSPOSE):
        return in_values * taps * layer.filters, _fused_ops(layer, out_values)
    if isinstance(layer, _DEPTHWISE):
        return out_values * taps, _fused_ops(layer, out_values)
    if isinstance(layer, _SEPARABLE):
        depthwise_values = out_values // layer.filters * _channels(input_shapes[0], layer) * layer.depth_multiplier
        return depthwise_values * taps + depthwise_values * layer.filters, _fused_ops(layer, out_values)
    if isinstance(layer, _CONV):
        in_channels = _channels(input_shapes[0], layer)
        return out_values * taps * in_channels // layer.groups, _fused_ops(layer, out_values)
    if isinstance(layer, layers.Dense):
        return out_values * int(input_shapes[0][-1]), _fused_ops(layer, out_values)
    if isinstance(layer, _POOLING):
        return 0, out_values * math.prod(config["pool_size"])
    if isinstance(layer, _GLOBAL_POOLING):
        return 0, in_values
    if isinstance(layer, _MERGE):
        return 0, out_values * (len(input_shapes) - 1)
    if isinstance(layer, (layers.UpSampling2D, layers.Resizing)):
        return 0, 0 if config["interpolation"] == "nearest" else out_values
    if isinstance(layer, _PER_VALUE) or type(layer).__name__ in _FAKE_QUANT_LAYERS:
        return 0, out_values
    if isinstance(layer, _NO_MACS) or not layer.weights:
        return 0, 0
    return None, 0


def _fixed_shape_model(model, input_shape):
    """``model`` itself if its input shape is known (and equals ``input_shape``), else a clone of
    it on a fixed-size input. The clone has fresh weights: it only serves to read shapes."""
    shapes = model_input_shapes(model, input_shape, fixed_batch=None)  # raises if a size is unknown
    if shapes == [tuple(t.shape) for t in model.inputs]:
        return model
    fixed_input = keras.Input(batch_shape=shapes[0], dtype=model.inputs[0].dtype, name=model.input_names[0])
    try:
        return keras.models.clone_model(model, input_tensors=fixed_input)
    except ValueError as err:  # e.g. skip connections that only line up at multiples of the stride
        raise ValueError(
            f"{model.name!r} does not run at input shape {shapes[0][1:]}: {err} "
            "(build the model at that size and profile it)"
        ) from err


def _layer_rows(model, prefix=""):
    own_nodes = getattr(model, "_network_nodes", None)  # tf_keras' node keys of this model's graph
    rows = []
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            continue
        calls = [
            node
            for index, node in enumerate(layer.inbound_nodes)
            if own_nodes is None or f"{layer.name}_ib-{index}" in own_nodes
        ]
        if isinstance(layer, keras.Model):  # a nested model: its own layers, at the shape it is called with
            for node in calls:
                inner_shape = tuple(tf.nest.flatten(node.input_tensors)[0].shape[1:])
                rows.extend(_layer_rows(_fixed_shape_model(layer, inner_shape), f"{prefix}{layer.name}/"))
            continue
        macs, elementwise, output_shape = 0, 0, None
        for node in calls:
            in_shapes = [tuple(t.shape[1:]) for t in tf.nest.flatten(node.input_tensors)]
            out_shapes = [tuple(t.shape[1:]) for t in tf.nest.flatten(node.outputs)]
            node_macs, node_elementwise = layer_cost(layer, in_shapes, out_shapes)
            macs = None if macs is None or node_macs is None else macs + node_macs
            elementwise += node_elementwise
            output_shape = output_shape or (out_shapes[0] if len(out_shapes) == 1 else out_shapes)
        inner = layer.layer if isinstance(layer, layers.Wrapper) else None
        rows.append({
            "name": prefix + layer.name,
            "type": type(layer).__name__ + (f"({type(inner).__name__})" if inner is not None else ""),
            "output_shape": output_shape,
            "params": layer.count_params(),
            "macs": macs,
            "elementwise": elementwise,
        })
    return rows


def layer_table(model, input_shape=None) -> list[dict]:
    """Per-layer costs: ``[{"name", "type", "output_shape", "params", "macs", "elementwise"}, ...]``.

    Output shapes exclude the batch; MACs and elementwise operations are per image (see the module
    docstring for what is counted). Layers of nested models appear as ``outer/inner``.

    Args:
      model: a Keras model.
      input_shape: (height, width[, channels]); required when the model's input size is unknown.
        The model is then cloned onto a fixed-size input to read the shapes (no weights change).

    Raises:
      ValueError: the input size is unknown and ``input_shape`` was not given.
    """
    return _layer_rows(_fixed_shape_model(model, input_shape))


def profile(model, input_shape=None, tflite=True, int8=True, representative_data=None) -> dict:
    """Parameters, MACs per layer, and float32 / full-int8 TFLite sizes of a model.

    Args:
      model: a Keras model.
      input_shape: (height, width[, channels]); required when the model's input size is unknown.
      tflite: also convert to float32 TFLite (batch 1) and report its size.
      int8: with ``tflite``, also convert to full-int8 TFLite and report its size.
      representative_data: int8 calibration data (see ``tfseg.tflite.to_tflite_bytes``); random
        images by default, which is fine for sizes but not for accuracy.

    Returns:
      A dict: ``model`` (name), ``input_shape``, ``params``, ``trainable_params``,
      ``non_trainable_params``, ``macs`` (per image; layers in ``uncounted`` excluded),
      ``elementwise``, ``layers`` (see ``layer_table``), ``uncounted`` (names of layers with
      weights and no MAC rule), ``tflite_float32_bytes`` and ``tflite_int8_bytes`` (None when not
      asked for or when conversion failed) and ``tflite_errors`` ({"float32"|"int8": message}).

    Raises:
      ValueError: the input size is unknown and ``input_shape`` was not given.

    Example:
      >>> result = profile(build("unet_small", (None, None, 3), 11), input_shape=(360, 480, 3))
      >>> print(format_profile(result))
    """
    shape_model = _fixed_shape_model(model, input_shape)
    rows = _layer_rows(shape_model)
    input_shapes = [tuple(t.shape[1:]) for t in shape_model.inputs]
    single_shape = input_shapes[0] if len(input_shapes) == 1 else None
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params()
    result = {
        "model": model.name,
        "input_shape": single_shape or input_shapes,
        "params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "macs": sum(row["macs"] or 0 for row in rows),
        "elementwise": sum(row["elementwise"] for row in rows),
        "layers": rows,
        "uncounted": [row["name"] for row in rows if row["macs"] is None],
        "tflite_float32_bytes": None,
        "tflite_int8_bytes": None,
        "tflite_errors": {},
    }
    if tflite:
        conversions = {"float32": dict(quantization=None)}
        if int8:
            if representative_data is None and single_shape is not None:
                representative_data = random_images(single_shape)
            conversions["int8"] = dict(quantization="int8", representative_data=representative_data)
        for kind, options in conversions.items():
            try:
                result[f"tflite_{kind}_bytes"] = len(to_tflite_bytes(model, input_shape=single_shape, **options))
            except Exception as err:  # noqa: BLE001 - reported: sizes are optional, the counts are not
                result["tflite_errors"][kind] = f"{type(err).__name__}: {err}"
    return result


def _human(value, unit="") -> str:
    if value is None:
        return "?"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {suffix}{unit}"
    return f"{value} {unit}".rstrip()


def format_profile(result: dict, layers: bool = True, max_rows=None) -> str:
    """A readable report of ``profile``'s result: a per-layer table (optional) and the totals.

    Args:
      result: what ``profile`` returned.
      layers: include the per-layer table.
      max_rows: show only the ``max_rows`` layers with the most MACs (in model order); None shows all.
    """
    lines = [f"Model {result['model']!r}, input {result['input_shape']}"]
    if layers:
        rows = result["layers"]
        if max_rows is not None and len(rows) > max_rows:
            keep = set(sorted(range(len(rows)), key=lambda i: -(rows[i]["macs"] or 0))[:max_rows])
            rows = [row for i, row in enumerate(rows) if i in keep]
            lines.append(f"(the {max_rows} layers with the most MACs of {len(result['layers'])})")
        table = [("layer", "type", "output shape", "params", "MACs", "elementwise")] + [
            (row["name"], row["type"], str(row["output_shape"]), f"{row['params']:,}",
             _human(row["macs"]), _human(row["elementwise"]))
            for row in rows
        ]
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        for n, r in enumerate(table):
            lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
    lines += [
        f"Parameters: {result['params']:,} ({result['trainable_params']:,} trainable, "
        f"{result['non_trainable_params']:,} non-trainable)",
        f"MACs per image: {_human(result['macs'])} ({result['macs']:,}); "
        f"elementwise operations: {_human(result['elementwise'])}",
        "  (BatchNormalization counts 0 MACs: it folds into the preceding convolution at inference)",
    ]
    if result["uncounted"]:
        lines.append(f"  NOT COUNTED (weights but no MAC rule): {', '.join(result['uncounted'])}")
    for kind in ("float32", "int8"):
        size = result.get(f"tflite_{kind}_bytes")
        error = result.get("tflite_errors", {}).get(kind)
        if size is not None:
            lines.append(f"TFLite {kind}: {size:,} bytes ({size / 2**20:.2f} MiB)")
        elif error:
            lines.append(f"TFLite {kind}: conversion failed: {error}")
    return "\n".join(lines)


__all__ = ["format_profile", "layer_cost", "layer_table", "profile"]
