"""Which layers int8 hurts: the per-layer error of a post-training int8 model against float, ranked.

TensorFlow's ``QuantizationDebugger`` method, run in LiteRT: the model is calibrated once
(``tfseg.tflite.calibrated_tflite``, as the int8 export calibrates it) and quantized in debug mode
(``quantize_calibrated(..., numeric_verify=True)``), where every int8 operator is followed by its
float twin computing on the same dequantized inputs and a ``NumericVerify`` operator between them.
So each operator's *own* error is measured, not the error it inherits from the layers before.
Over real images the diagnosis collects, per operator, the difference between its dequantized
int8 output and the float one:

- ``rmse_scale`` (the default ranking): RMSE in units of the output's quantization step, TensorFlow's
  debugging guide's measure. Rounding the output alone gives 1/sqrt(12) = 0.29; more is error
  beyond the output's rounding: weights, inputs, the int8 kernel. That is the part float fallback
  can remove: a float operator's output is quantized again for the int8 operator after it.
- ``relative_rmse``: RMSE over the standard deviation of the float output, the share of the signal
  int8 turns into noise (1 / SNR), output rounding included. It ranks wide-range outputs (the
  linear bottlenecks of MobileNetV2) worst, whose error mostly stays after fallback.

On the CamVid DeepLabV3-MobileNetV2 teacher (docs/benchmarks.md) the 5 worst layers by
``rmse_scale`` (the early depthwise convolutions, Conv1, block_1_expand) left in float took back
0.27 of the 0.29 val mIoU points int8 loses (0.36 of 0.86 on test); the 5 worst by
``relative_rmse`` (projection convolutions) 0.02 (0.01).

Operators are named by the Keras layers they compute (``tfseg.tflite.operator_layers``), so the
worst layers can be left in float (``tfseg.tflite.to_tflite_bytes(..., float_layers=...)``, or
``Diagnosis.quantize``) and shipped (``tfseg.export.to_tflite(..., float_fallback=...)``).

Example:
  >>> diagnosis = diagnose(model, calibration_images, val_images)
  >>> print(diagnosis.markdown(top=10))
  >>> mixed = diagnosis.quantize(diagnosis.worst_layers(3), io_dtype="uint8")
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfseg.errors import ConfigError
from tfseg.options import DIAGNOSIS_METRICS, IO_DTYPES
from tfseg.tflite import (
    calibrated_tflite,
    calibration_batches,
    float_fallback_tensors,
    interpreter,
    operator_layers,
    quantize_calibrated,
    tflite_ops,
)

NUMERIC_VERIFY = "NumericVerify"
# The standard deviation of a uniform rounding error, in quantization steps: rmse_scale's floor.
ROUNDING_RMSE_SCALE = 1 / np.sqrt(12)


@dataclasses.dataclass
class LayerError:
    """The int8 error of one TFLite operator against its float twin, over the diagnosis images.

    Attributes:
      layer: the Keras layer to name it by (the one with weights among those fused into the
        operator, else the last), or None when no layer's name survives in the file.
      layers: every Keras layer the operator computes, in model order.
      op: the TFLite operator (``CONV_2D``, ``ADD``, ...).
      tensor: the TFLite tensor it writes (what ``quantize_calibrated`` deny-lists).
      rmse, max_abs_error: of dequantized int8 minus float.
      scale: the output's quantization step.
      float_std: the standard deviation of the float output.
      rmse_scale, relative_rmse: see the module docstring.
      elements: output values compared (over all images).
    """

    layer: str | None
    layers: list
    op: str
    tensor: str
    rmse: float
    max_abs_error: float
    scale: float
    float_std: float
    elements: int

    @property
    def rmse_scale(self) -> float:
        return self.rmse / self.scale if self.scale > 0 else float("inf")

    @property
    def relative_rmse(self) -> float:
        return self.rmse / self.float_std if self.float_std > 0 else (0.0 if self.rmse == 0 else float("inf"))

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "rmse_scale": self.rmse_scale, "relative_rmse": self.relative_rmse}


@dataclasses.dataclass
class Diagnosis:
    """Per-operator int8 errors of a model, worst first by ``metric``; ``calibrated`` (the float
    TFLite model with its ranges) quantizes it again with layers left in float."""

    model: object = dataclasses.field(repr=False)
    calibrated: bytes = dataclasses.field(repr=False)
    rows: list
    metric: str
    images: int

    @property
    def layer_names(self) -> list[str]:
        """The diagnosed Keras layers, worst first (each once)."""
        return list(dict.fromkeys(row.layer for row in self.rows if row.layer is not None))

    def worst_layers(self, k: int) -> list[str]:
        """The ``k`` worst layers by name.

        Raises:
          ConfigError: ``k`` < 1 or more than the layers diagnosed.
        """
        names = self.layer_names
        if not 1 <= k <= len(names):
            raise ConfigError(f"cannot leave the {k} worst layers in float: {self.model.name!r} has "
                              f"{len(names)} int8 layers diagnosed (choose 1 to {len(names)})")
        return names[:k]

    def float_tensors(self, layers) -> list[str]:
        """The TFLite tensors whose operators stay float when ``layers`` (Keras names) fall back.

        Raises:
          ConfigError: an unknown layer, or one without an operator of its own (the message says which).
        """
        try:
            return float_fallback_tensors(self.model, self.calibrated, layers)
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def quantize(self, layers=(), io_dtype: str = "uint8") -> bytes:
        """The int8 model with ``layers`` (Keras names) left in float; without any, the full int8
        model (the same operators and outputs as ``to_tflite_bytes(model, "int8", ...)`` calibrated on
        the same images). Input and output are ``io_dtype`` either way."""
        if io_dtype not in IO_DTYPES:
            raise ConfigError(f"io_dtype must be one of {IO_DTYPES}, got {io_dtype!r}")
        return quantize_calibrated(self.calibrated, io_dtype, self.float_tensors(layers) if layers else ())

    def as_dict(self) -> dict:
        return {"model": self.model.name, "metric": self.metric, "images": self.images,
                "rounding_rmse_scale": ROUNDING_RMSE_SCALE,
                "layers": [{"rank": rank, **row.as_dict()} for rank, row in enumerate(self.rows, 1)]}

    def markdown(self, top: int | None = 20) -> str:
        """The ranking as a Markdown table (the ``top`` worst operators; None: all)."""
        header = ("| rank | layer | TFLite op | RMSE / scale | relative RMSE | max abs error | output scale | "
                  "fused layers |")
        lines = [header, "|---:|---|---|---:|---:|---:|---:|---|"]
        for rank, row in enumerate(self.rows[:top] if top else self.rows, 1):
            others = [name for name in row.layers if name != row.layer]
            lines.append(f"| {rank} | {row.layer or '(' + row.tensor + ')'} | {row.op} | {row.rmse_scale:.3f} | "
                         f"{row.relative_rmse:.4f} | {row.max_abs_error:.4g} | {row.scale:.4g} | "
                         f"{', '.join(others) or '-'} |")
        return "\n".join(lines)


def _sort_key(metric):
    return lambda row: -getattr(row, metric)


def _calibrated_name(debug_name: str, names: set) -> str | None:
    """The calibrated model's tensor behind a debug-model tensor name: the debug conversion appends
    digits to the names it copies (``.../Conv2D1`` becomes ``.../Conv2D11``, ``Identity`` ``Identity2``)."""
    name = debug_name
    while name:
        if name in names:
            return name
        if not name[-1].isdigit():
            return None
        name = name[:-1]
    return None


def _describer(model, calibrated: bytes, debug: bytes):
    """A function from a debug-model tensor name to its operator (``operator_layers``' dict) as the
    calibrated model names it, the tensor a deny-list takes; the debug model's own when the two
    disagree (its layers, read from the same name scopes, are right either way)."""
    own = {op["tensor"]: op for op in operator_layers(model, debug)}
    twins = {op["tensor"]: op for op in operator_layers(model, calibrated)}
    names = set(twins)

    def describe(name: str) -> dict:
        mine = own.get(name, {"layers": [], "layer": None, "op": "?", "tensor": name})
        twin = twins.get(_calibrated_name(name, names))
        if twin is not None and twin["op"] == mine["op"] and mine["layers"] in ([], twin["layers"]):
            return twin
        return mine

    return describe


def diagnose(model, representative_data, images, *, input_shape=None, metric: str = DIAGNOSIS_METRICS[0],
             num_threads: int = 1) -> Diagnosis:
    """Measures the int8 error of every operator of ``model``'s post-training int8 TFLite model.

    Args:
      model: a float Keras model (not quantization-aware: its int8 comes from training).
      representative_data: the calibration images (as for ``to_tflite_bytes``; the int8 export
        takes 100 training images, ``tfseg.quantize.ptq.representative_images``).
      images: the images the error is measured on (float, pixels in [0, 255], at the model's
        input size): an array (N, H, W, 3) or anything ``calibration_batches`` takes. Use real
        images other than the calibration ones (a validation split).
      input_shape: (height, width[, channels]) for a model of unknown input size.
      metric: the ranking, one of ``DIAGNOSIS_METRICS`` (see the module docstring).
      num_threads: LiteRT threads.

    Returns:
      A ``Diagnosis``, its rows worst first.

    Raises:
      ConfigError: a quantization-aware model, an unknown metric, no images.
    """
    if metric not in DIAGNOSIS_METRICS:
        raise ConfigError(f"unknown diagnosis metric {metric!r}; choose one of {', '.join(DIAGNOSIS_METRICS)}")
    try:
        calibrated = calibrated_tflite(model, representative_data, input_shape=input_shape)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    debug = quantize_calibrated(calibrated, numeric_verify=True)
    describe = _describer(model, calibrated, debug)
    checks = [op for op in tflite_ops(debug) if op.get("custom_code") == NUMERIC_VERIFY]
    runner = interpreter(debug, num_threads, preserve_all_tensors=True)
    details = {d["index"]: d for d in runner.get_tensor_details()}
    (detail,) = runner.get_input_details()
    # Per check: sum of squared errors, max |error|, sum and sum of squares of the float output, count.
    sums = np.zeros((len(checks), 5))
    count = 0
    try:
        batches = list(calibration_batches(images, [tuple(detail["shape"])]))
    except ValueError as error:
        raise ConfigError(f"diagnosis images: {error}") from None
    for (batch,) in batches:
        runner.set_tensor(detail["index"], batch.astype(np.float32))
        runner.invoke()
        count += 1
        for i, check in enumerate(checks):
            reference = runner.get_tensor(check["inputs"][1]["index"]).astype(np.float64)
            error = runner.get_tensor(check["outputs"][0]["index"]).astype(np.float64)
            sums[i] += ((error ** 2).sum(), 0.0, reference.sum(), (reference ** 2).sum(), error.size)
            sums[i, 1] = max(sums[i, 1], float(np.abs(error).max(initial=0.0)))
    rows = []
    for check, (squared, largest, total, squares, n) in zip(checks, sums):
        quantized = check["inputs"][0]
        op = describe(quantized["name"])
        mean = total / n
        rows.append(LayerError(
            layer=op["layer"], layers=op["layers"], op=op["op"], tensor=op["tensor"],
            rmse=float(np.sqrt(squared / n)), max_abs_error=float(largest),
            scale=float(details[quantized["index"]]["quantization"][0]),
            float_std=float(np.sqrt(max(squares / n - mean ** 2, 0.0))), elements=int(n)))
    rows.sort(key=_sort_key(metric))
    return Diagnosis(model=model, calibrated=calibrated, rows=rows, metric=metric, images=count)


__all__ = ["DIAGNOSIS_METRICS", "Diagnosis", "LayerError", "ROUNDING_RMSE_SCALE", "diagnose"]
