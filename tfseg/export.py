"""Exporting models for serving: TFLite (float, float16, dynamic range, full int8) and SavedModel,
with their description embedded, files written atomically, and parity checks against Keras.

- ``to_tflite(model, path, quantization=..., io_dtype=...)``: batch fixed at 1, the ``tfseg/1``
  JSON of docs/export_format.md embedded under the TFLite metadata name ``tfseg`` and written
  beside as ``<file>.json``, and TFLite Model Metadata (``TFLITE_METADATA`` with the label file,
  ``tfseg.tflite_metadata``) so MediaPipe's ImageSegmenter loads it; the file is loaded in LiteRT
  and run once before it replaces ``path``. A quantization-aware model
  (``tfseg.quantize.quantize_aware``) converts to int8 from
  its own ranges; a float model needs ``representative_data`` (``tfseg.quantize.ptq``).
  ``output="low_res_logits"`` or ``"class_map"`` ends the graph before the model's final bilinear
  upsampling (``tfseg.output_tail``): logits, or their ARG_MAX as uint8 class ids, at the model's
  own stride; the metadata's ``output.upsampling`` says how a runner maps them onto the input
  pixels. On CamVid test, runners that upsample the low-resolution logits bilinearly as the model
  did score the full export's mIoU (float32: the same class maps); nearest on class ids (the
  ``class_map`` output) cost 1.6 mIoU for the stride-8 LR-ASPP student, 0.2 for the stride-4
  DeepLabV3+. MediaPipe's ImageSegmenter loads ``low_res_logits`` files but stretches the scores
  over the image with align-corners bilinear, ignoring the crop of the padding (about 2 mIoU lower);
  ``class_map`` files carry no MediaPipe metadata (``tfseg.tflite_metadata``).
- ``to_saved_model(model, path)``: a ``serving_default`` signature taking uint8 images of any
  size (normalisation and resizing inside the graph) and returning ``class_map`` and
  ``probabilities`` at the image's size; a ``metadata`` signature returns the JSON.
- ``verify(keras_model, exported_path, data)``: runs both on real images and reports argmax
  agreement and the mIoU of each; it warns loudly (``QuantizationCollapseWarning``) when the
  exported model falls behind, as int8 models with bilinear upsampling are reported to do
  (tensorflow/model-optimization#1000).

Example:
  >>> from tfseg import export
  >>> from tfseg.quantize.ptq import representative_images
  >>> calibration = representative_images(train_split, (360, 480), count=100)
  >>> export.to_tflite(model, "student_int8.tflite", "int8", representative_data=calibration, info=info)
  >>> export.verify(model, "student_int8.tflite", test_split)["agreement"]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from tfseg import __version__, tflite_metadata
from tfseg._keras import keras, tf
from tfseg.checkpoint import DIR_MODE, atomic_write, deployable, write_json
from tfseg.data.info import IGNORE_LABEL, DatasetInfo
from tfseg.errors import ConfigError
from tfseg.evaluate import Agreement, ConfusionMatrix, stream
from tfseg.models.common import unwrapped_name
from tfseg.options import EXPORT_OUTPUTS, FLOAT_QUANTIZATION_ALIASES, IO_DTYPES, PTQ_MODES, QUANTIZATIONS
from tfseg.output_tail import Tail, find_tail, output_model
from tfseg.predictors import KerasPredictor, load_predictor, model_input_size
from tfseg.quantize.ptq import DEFAULT_CALIBRATION_IMAGES, representative_images
from tfseg.quantize.qat import is_quantization_aware
from tfseg.tflite import (
    calibration_batches,
    embed_metadata,
    interpreter,
    read_metadata,
    run_tflite,
    to_tflite_bytes,
)

FORMAT = "tfseg/1"
SIDECAR_SUFFIX = ".json"
# Names of the layer that normalises pixels inside tfseg models (ResNet and VGG backbones call
# their Caffe-style mean subtraction "preprocess").
NORMALIZATION_LAYERS = ("normalize", "preprocess")
SERVING_OUTPUTS = ("class_map", "probabilities")
# verify()'s defaults: a healthy int8 model agrees with float on ~97-99 % of the pixels of a
# trained segmentation network and keeps its mIoU within a point or two; below these something
# broke (a collapse is far below).
MIN_AGREEMENT = 0.90
MIN_MIOU_RATIO = 0.90


class QuantizationCollapseWarning(UserWarning):
    """An exported (typically int8) model disagrees with its Keras model on real images."""


# ------------------------------------------------------------------------------ metadata


def normalization_of(model) -> tuple[np.ndarray, np.ndarray]:
    """The per-channel ``(scale, offset)`` a model applies to its raw pixels (``x * scale + offset``).

    Found by name (``NORMALIZATION_LAYERS``), also in quantization-aware models, where it is a
    1x1 DepthwiseConv2D (see ``tfseg.quantize.configs``).

    Raises:
      ConfigError: the model has no normalisation layer: exported models take raw pixels, so
        the contract with the device runner cannot be met.
    """
    for layer in model.layers:
        if unwrapped_name(layer.name) not in NORMALIZATION_LAYERS:
            continue
        inner = getattr(layer, "layer", layer)  # a TF-MOT QuantizeWrapper holds the layer
        channels = layer.input_shape[-1]  # the wrapped layer itself is never called
        if isinstance(inner, keras.layers.Rescaling):
            scale = np.broadcast_to(np.asarray(inner.scale, np.float64), (channels,))
            offset = np.broadcast_to(np.asarray(inner.offset, np.float64), (channels,))
            return scale, offset
        if isinstance(inner, keras.layers.DepthwiseConv2D) and tuple(inner.kernel_size) == (1, 1):
            # By variable name: a QuantizeWrapper replaces the kernel attribute by its fake-quant tensor.
            values = {w.name.split("/")[-1].split(":")[0]: w.numpy() for w in layer.weights}
            scale = values["depthwise_kernel"].reshape(-1).astype(np.float64)
            offset = values["bias"].astype(np.float64) if inner.use_bias else np.zeros(channels)
            return scale, offset
    raise ConfigError(
        f"model {model.name!r} has no normalisation layer (a Rescaling named one of {NORMALIZATION_LAYERS}); "
        "exported tfseg models take raw [0, 255] pixels and normalise inside the graph"
    )


def _number(value: float) -> str:
    return f"{value:.6g}"


def normalization_text(scale, offset) -> str:
    """The ``input.normalization`` sentence of docs/export_format.md, e.g.
    ``"inside the model: x / 127.5 - 1 (feed raw RGB pixels)"``."""
    scale, offset = np.asarray(scale, np.float64), np.asarray(offset, np.float64)
    if np.allclose(scale, scale[0]) and np.allclose(offset, offset[0]):
        s, o = float(scale[0]), float(offset[0])
        if np.isclose(s, 1.0, rtol=1e-6):
            term = "x"
        elif s != 0 and np.isclose(1.0 / s, round(1.0 / s, 3), rtol=1e-5):  # 1/127.5 reads better as "/ 127.5"
            term = f"x / {_number(round(1.0 / s, 3))}"
        else:
            term = f"x * {_number(s)}"
        if not np.isclose(o, 0.0, atol=1e-7):
            term += f" {'-' if o < 0 else '+'} {_number(abs(o))}"
    else:
        term = "x"
        if not np.allclose(scale, 1.0):
            term += " * [" + ", ".join(_number(v) for v in scale) + "]"
        term += " + [" + ", ".join(_number(v) for v in offset) + "] per RGB channel"
    return f"inside the model: {term} (feed raw RGB pixels)"


def model_metadata(
    model,
    info: DatasetInfo,
    *,
    quantization: str = "none",
    input_dtype: str = "float32",
    output_dtype: str = "float32",
    input_size=None,
    model_name: str | None = None,
    output_kind: str = "logits",
    tail: Tail | None = None,
) -> dict:
    """The ``tfseg/1`` description of an exported model (docs/export_format.md), every field filled.

    Args:
      model: the Keras model being exported (for its normalisation and class count).
      info: the dataset's classes, palette and ignore label (``Run.info``).
      quantization: ``none``, ``float16``, ``dynamic`` or ``int8``.
      input_dtype, output_dtype: the exported model's tensor types.
      input_size: (height, width) of the exported input (default: the model's).
      model_name: the zoo name (``run.json``'s ``model``); default the Keras model's name.
      output_kind: ``logits``, ``probabilities``, or for an export cut before the model's final
        upsampling (``tfseg.output_tail``) ``low_res_logits`` or ``class_map``.
      tail: for those two, ``tfseg.output_tail.find_tail(model)``: the output's size, ``stride``,
        ``upsampling`` (how the runner maps it onto the input pixels) and ``source_layer``.

    Returns:
      The JSON-ready dict.

    Raises:
      ConfigError: classes that do not match the model's outputs, no normalisation layer, an
        unknown quantization.

    Example:
      >>> model_metadata(model, info, quantization="int8", input_dtype="uint8", output_dtype="uint8")["input"]
    """
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    classes = int(model.output_shape[-1])
    if classes != info.num_classes:
        raise ConfigError(
            f"model {model.name!r} outputs {classes} classes but the dataset info {info.name!r} has "
            f"{info.num_classes}: export with the info of the data it was trained on"
        )
    height, width = input_size_of(model, input_size)
    output = {"kind": output_kind, "height": height, "width": width, "classes": classes, "dtype": output_dtype}
    if (tail is None) != (output_kind in ("logits", "probabilities")):
        raise ConfigError(f"output kind {output_kind!r} {'needs' if tail is None else 'takes no'} the model's upsampling tail")
    if tail is not None:
        output.update(tail.output_fields(output_kind))
    return {
        "format": FORMAT,
        "tfseg_version": __version__,
        "model": model_name or model.name,
        "task": "segmentation",
        "dataset": info.name,
        "classes": list(info.class_names),
        "palette": [list(map(int, colour)) for colour in info.palette],
        "ignore_label": int(info.ignore_label),
        "input": {
            "height": height, "width": width, "channels": 3, "layout": "NHWC",
            "dtype": input_dtype,
            "pixel_range": [0, 255],
            "normalization": normalization_text(*normalization_of(model)),
        },
        "output": output,
        "quantization": quantization,
    }


def input_size_of(model, input_size=None) -> tuple[int, int]:
    """The (height, width) a model is exported at: its fixed input size, else ``input_size``.

    Raises:
      ConfigError: neither is known, or they differ.
    """
    try:
        return tuple(int(v) for v in model_input_size(model, input_size))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def sidecar_path(path) -> Path:
    """Where the sidecar JSON of an exported file or directory goes: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _info_or_generic(model, info):
    return info if info is not None else DatasetInfo.generic(int(model.output_shape[-1]))


# ------------------------------------------------------------------------------ TFLite


def _failing_layer(model, error, input_shape) -> str | None:
    """The model layer holding the TensorFlow op a converter error names, if it can be found.

    The converter reports the op type (``'tf.ResizeBicubic' op is neither a custom op nor a flex
    op``) and a Python traceback, not the layer; the layer is found by tracing the model and
    looking for ops of that type, whose names start with the layer's name scope.
    """
    types = set(re.findall(r"'tf\.(\w+)' op", str(error)))
    if not types:
        return None
    names = {layer.name for layer in model.layers}
    spec = tf.TensorSpec((1, *input_shape), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    for op in graph.get_operations():
        if op.type in types:
            for part in op.name.split("/"):
                if part in names:
                    return part
    return None


def _convert(model, quantization, representative_data, io_dtype, input_size, float_fallback=()) -> bytes:
    height, width = input_size_of(model, input_size)
    try:
        return to_tflite_bytes(
            model, None if quantization == "none" else quantization, representative_data,
            input_shape=(height, width, 3), io_dtype=io_dtype, float_layers=float_fallback or None,
        )
    except ValueError as error:  # our own argument checks (tfseg.tflite)
        raise ConfigError(str(error)) from error
    except Exception as error:  # the converter's ConverterError and friends
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        name = _failing_layer(model, error, (height, width, 3))
        if name is None:
            raise ConfigError(f"cannot convert {model.name!r} to {quantization} TFLite: {first}") from error
        kind = type(model.get_layer(name)).__name__
        ops = ", ".join(sorted(set(re.findall(r"'tf\.(\w+)' op", str(error)))))
        raise ConfigError(
            f"layer {name!r} ({kind}) cannot be exported to {quantization} TFLite: its op {ops} has no TFLite "
            f"builtin kernel{' in int8' if quantization == 'int8' else ''} (converter: {first})"
        ) from error


def _tensor_dtype(detail) -> str:
    return np.dtype(detail["dtype"]).name


def _warn_if_uint8_input_is_not_raw(detail, path):
    """MediaPipe feeds a uint8 input the image's bytes unchanged; that equals what LiteRT and
    tfseg-lite feed (pixels quantized with the tensor's scale and zero point) only for scale 1 and
    zero point 0, which calibration images spanning 0..255 give."""
    if np.dtype(detail["dtype"]) != np.uint8:
        return
    scale, zero = detail["quantization"]
    if not np.isclose(scale, 1.0, rtol=1e-5) or zero != 0:
        warnings.warn(
            f"{path}: the uint8 input is quantized with scale {scale:.6g} and zero point {zero}, not 1 and 0 "
            "(the calibration images do not span pixel values 0..255): MediaPipe feeds raw pixels to uint8 "
            "inputs, so its results will differ from LiteRT's and tfseg-lite's. Calibrate on real images, "
            "or export with io_dtype='float32'.",
            UserWarning,
            stacklevel=3,
        )


def _check_tflite_file(path, metadata) -> dict:
    """Loads a written ``.tflite`` file in LiteRT, runs it once and checks its embedded metadata."""
    data = Path(path).read_bytes()
    runner = interpreter(data)
    detail = runner.get_input_details()[0]
    runner.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    runner.invoke()
    output = runner.get_tensor(runner.get_output_details()[0]["index"])
    if read_metadata(data) != metadata:
        raise RuntimeError(f"{path}: the embedded tfseg metadata did not read back as written")
    standard = tflite_metadata.read(data, str(path))
    mean, std = tflite_metadata.normalization_options(metadata["input"]["pixel_range"])
    if metadata["output"]["kind"] in tflite_metadata.CLASS_MAP_KINDS:
        if standard is not None:
            raise RuntimeError(f"{path}: a class-map export has TFLite Model Metadata (TFLITE_METADATA)")
    elif (standard is None or standard["labels"] != metadata["classes"] or standard["input"]["mean"] != [mean]
            or standard["input"]["std"] != [std]
            or standard["activation"] != tflite_metadata.ACTIVATION_OF_OUTPUT[metadata["output"]["kind"]]):
        raise RuntimeError(f"{path}: the TFLite Model Metadata (TFLITE_METADATA) did not read back as written")
    if tuple(output.shape[1:3]) != (metadata["output"]["height"], metadata["output"]["width"]):
        raise RuntimeError(f"{path}: output shape {output.shape} does not match the metadata")
    return {"input": detail, "output": runner.get_output_details()[0]}


def to_tflite(
    model,
    path,
    quantization: str = "int8",
    *,
    io_dtype: str | None = None,
    representative_data=None,
    info: DatasetInfo | None = None,
    input_size=None,
    model_name: str | None = None,
    verify_data=None,
    float_fallback=(),
    output: str = "logits",
) -> dict:
    """Converts a model to a TFLite file with batch 1, its description embedded and beside it.

    Args:
      model: a Keras segmentation model (float, pruned-and-stripped, or quantization-aware), or
        a ``Distiller`` (its student is exported).
      path: the ``.tflite`` file to write; the sidecar JSON goes to ``<path>.json``.
      quantization: ``"none"`` (float32), ``"float16"``, ``"dynamic"`` (int8 weights, float
        activations) or ``"int8"`` (full integer; a QAT model's own ranges, else calibrated on
        ``representative_data``).
      io_dtype: input/output tensor type for ``"int8"``: ``"uint8"`` (default: raw pixels in,
        argmax-able logits out), ``"int8"`` or ``"float32"``. Float exports are always float32.
      representative_data: for int8 of a float model: ~100 training images at the model's input
        size (``tfseg.quantize.ptq.representative_images``).
      info: classes, palette and ignore label; default generic names for the output channels.
      input_size: (height, width) for models of unknown input size.
      model_name: the zoo name to record (default the Keras model's name).
      verify_data: optional real data (see ``verify``) to check the export against the model
        right away; the report is returned under ``"verify"`` (and warns on a collapse). Without
        it, a calibrated int8 export is still compared with the model on 8 calibration images
        (argmax agreement under ``"calibration_agreement"``, with the same warning).
      float_fallback: for post-training int8: Keras layer names whose operators stay in float
        (the worst layers of ``tfseg.quantize.diagnose``); input and output keep ``io_dtype``.
      output: what the file outputs (``tfseg.output_tail``): ``"logits"`` at the input size (the
        model as it is), ``"low_res_logits"`` (the graph ends before the model's final bilinear
        upsampling: logits at its own stride, ``io_dtype``) or ``"class_map"`` (then an ARG_MAX:
        uint8 class ids (1, h, w) at that stride, int32 beyond 256 classes). The metadata's
        ``output.upsampling`` says how a runner maps the low-resolution output onto the input
        pixels; tfseg-lite and ``tfseg.predictors.TFLitePredictor`` follow it. MediaPipe's
        ImageSegmenter: see docs/export_format.md.

    Returns:
      ``{"path", "sidecar", "bytes", "metadata"}`` (+ ``"verify"`` or ``"calibration_agreement"``).

    Raises:
      ConfigError: bad arguments, or a layer that cannot be converted (naming the layer), or a
        low-resolution ``output`` of a model without a final bilinear upsampling (naming the
        model and the layer where its tail ends).
      ImportError: ai-edge-litert is missing (needed to check the file loads).

    Example:
      >>> to_tflite(qat_model, "runs/camvid/student-qat/student_int8.tflite", "int8", info=info)
    """
    model = deployable(model)
    quantization = "none" if quantization in FLOAT_QUANTIZATION_ALIASES else quantization
    if quantization not in QUANTIZATIONS:
        raise ConfigError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if io_dtype is None:
        io_dtype = "uint8" if quantization == "int8" else "float32"
    if io_dtype not in IO_DTYPES:
        raise ConfigError(f"io_dtype must be one of {IO_DTYPES}, got {io_dtype!r}")
    if quantization != "int8" and io_dtype != "float32":
        raise ConfigError(f"io_dtype {io_dtype!r} needs quantization='int8'; {quantization} models take float32")
    if is_quantization_aware(model) and quantization != "int8":
        raise ConfigError(f"{model.name!r} is quantization-aware: export it with quantization='int8'")
    if output not in EXPORT_OUTPUTS:
        raise ConfigError(f"output must be one of {EXPORT_OUTPUTS}, got {output!r}")
    info = _info_or_generic(model, info)
    path = Path(path)
    tail = None if output == "logits" else find_tail(model, input_size)
    exported = output_model(model, output, tail)

    flatbuffer = _convert(exported, quantization, representative_data, io_dtype, input_size, float_fallback)
    probe = interpreter(flatbuffer)
    metadata = model_metadata(
        model, info, quantization=quantization, input_size=input_size, model_name=model_name,
        input_dtype=_tensor_dtype(probe.get_input_details()[0]),
        output_dtype=_tensor_dtype(probe.get_output_details()[0]), output_kind=output, tail=tail,
    )
    _warn_if_uint8_input_is_not_raw(probe.get_input_details()[0], path)
    flatbuffer = embed_metadata(flatbuffer, metadata)
    try:  # last: TFLite Model Metadata for MediaPipe, its label file zipped onto the end
        if output not in tflite_metadata.CLASS_MAP_KINDS:  # class ids are no segmenter scores (see there)
            flatbuffer = tflite_metadata.populate(flatbuffer, metadata)
    except tflite_metadata.MetadataFormatError as error:
        raise ConfigError(f"{path}: {error}") from error

    def write(tmp):
        Path(tmp).write_bytes(flatbuffer)
        _check_tflite_file(tmp, metadata)

    atomic_write(path, write)
    sidecar = write_json(sidecar_path(path), metadata)
    result = {"path": str(path), "sidecar": str(sidecar), "bytes": len(flatbuffer), "metadata": metadata}
    if verify_data is not None:
        result["verify"] = verify(model, path, verify_data, info=info, image_size=input_size)
    elif quantization == "int8" and representative_data is not None:
        result["calibration_agreement"] = _calibration_agreement(exported, flatbuffer, representative_data, path)
    return result


def post_training_quantize(
    model,
    path,
    mode: str = "int8",
    *,
    calibration_split=None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    seed: int = 0,
    input_size=None,
    **export_options,
):
    """Quantizes a float model after training and writes it as TFLite (``tfseg.export.to_tflite``).

    Args:
      model: a float Keras model (or Distiller).
      path: the ``.tflite`` file.
      mode: ``"int8"`` (full integer, calibrated on ``calibration_split``), ``"float16"`` or
        ``"dynamic"`` (int8 weights, float activations; no calibration).
      calibration_split: for int8: the training split to draw representative images from.
      calibration_images: how many.
      seed: which ones (see ``representative_images``).
      input_size: (height, width), for models of unknown input size.
      **export_options: passed to ``to_tflite`` (``info``, ``io_dtype``, ``model_name``,
        ``verify_data``, ``output``).

    Returns:
      ``to_tflite``'s result dict.

    Raises:
      ConfigError: unknown mode, int8 without a calibration split, a layer that cannot be converted.

    Example:
      >>> post_training_quantize(model, "student_int8.tflite", calibration_split=train, info=train.info,
      ...                        verify_data=test)["verify"]["agreement"]
    """
    if mode not in PTQ_MODES:
        raise ConfigError(f"post-training quantization mode must be one of {PTQ_MODES}, got {mode!r}")
    model = deployable(model)
    representative = None
    if mode == "int8":
        if calibration_split is None:
            raise ConfigError("int8 post-training quantization needs calibration_split (e.g. the training split)")
        size = input_size_of(model, input_size)
        representative = representative_images(calibration_split, size, calibration_images, seed)
    return to_tflite(model, path, mode, representative_data=representative, input_size=input_size, **export_options)


def _class_ids(output) -> np.ndarray:
    """Class ids of a batch of exported outputs: logits (N, h, w, C) or class maps (N, h, w)."""
    output = np.asarray(output)
    return output if output.ndim == 3 else np.argmax(output, axis=-1)


def _calibration_agreement(model, flatbuffer, representative_data, path, count: int = 8) -> float:
    """Argmax agreement of the int8 model with Keras on a few calibration images (no labels
    needed), so that a collapse is reported even when no ``verify_data`` was given. ``model`` is
    the converted Keras model (``tfseg.output_tail.output_model``): both sides at its output size."""
    runner = interpreter(flatbuffer)
    shape = [tuple(runner.get_input_details()[0]["shape"])]
    same = total = 0
    for step, (batch,) in enumerate(calibration_batches(representative_data, shape)):
        if step >= count:
            break
        expected = _class_ids(model(batch, training=False))
        got = _class_ids(run_tflite(runner, batch))
        same, total = same + int((expected == got).sum()), total + expected.size
    agreement = same / max(total, 1)
    if agreement < MIN_AGREEMENT:
        _warn_collapse({"quantization": "int8", "path": str(path), "agreement": agreement,
                        "num_images": min(step + 1, count), "source": "calibration images (no labels)"},
                       MIN_AGREEMENT, MIN_MIOU_RATIO)
    return agreement


# ------------------------------------------------------------------------------ SavedModel


def serving_module(model, info: DatasetInfo, *, input_size=None, model_name: str | None = None):
    """A ``tf.Module`` with the serving and metadata functions of ``to_saved_model``.

    Only the model's variables are tracked, not the Keras model itself: tracking it would make
    ``tf.saved_model.save`` serialise every Keras layer, which fails for quantization-aware
    models with Conv2DTranspose (tf-keras#115); this is what ``model.export()`` does too.

    Returns:
      ``(module, metadata)``; ``module.serve(images uint8 [N, H, W, 3])`` returns
      ``{"class_map": int32 [N, H, W], "probabilities": float32 [N, H, W, C]}``.
    """
    model = deployable(model)
    height, width = input_size_of(model, input_size)
    metadata = model_metadata(model, info, input_size=(height, width), model_name=model_name,
                              input_dtype="uint8", output_dtype="float32", output_kind="probabilities")
    # A QAT model serves its fake-quant graph in float: "none" in the format's terms.
    metadata["quantization_aware"] = is_quantization_aware(model)
    metadata["input"]["resize"] = (
        f"any height and width: resized to {height}x{width} (bilinear) inside the graph; outputs at the input size"
    )
    metadata["output"].update(height=None, width=None)
    metadata["signature"] = {
        "name": "serving_default",
        "inputs": {"images": "uint8 [N, H, W, 3] RGB"},
        "outputs": {"class_map": "int32 [N, H, W]", "probabilities": "float32 [N, H, W, C]"},
    }
    text = json.dumps(metadata, sort_keys=True)

    module = tf.Module()
    module.model_variables = list(model.variables)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(images):
        image_size = tf.shape(images)[1:3]
        x = tf.image.resize(tf.cast(images, tf.float32), (height, width), method="bilinear")
        logits = model(x, training=False)
        # The evaluation protocol: logits (not labels) resized to the image, then argmax.
        logits = tf.image.resize(logits, image_size, method="bilinear")
        return {
            "class_map": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    @tf.function(input_signature=[])
    def describe():
        return {"metadata": tf.constant(text)}

    module.serve, module.describe = serve, describe
    return module, metadata


def _check_saved_model(path, metadata):
    """Loads a SavedModel directory and runs its signature on an image of an unusual size."""
    loaded = tf.saved_model.load(str(path))
    height, width = metadata["input"]["height"], metadata["input"]["width"]
    probe = np.zeros((1, height + 3, width + 5, 3), np.uint8)
    outputs = loaded.signatures["serving_default"](images=tf.constant(probe))
    if tuple(outputs["class_map"].shape) != probe.shape[:3]:
        raise RuntimeError(f"{path}: class_map has shape {outputs['class_map'].shape}, expected {probe.shape[:3]}")
    if json.loads(loaded.signatures["metadata"]()["metadata"].numpy().decode()) != metadata:
        raise RuntimeError(f"{path}: the metadata signature did not read back as written")


def to_saved_model(model, path, *, info: DatasetInfo | None = None, input_size=None, model_name: str | None = None) -> dict:
    """Writes a SavedModel that serves uint8 images of any size, with its description.

    Signatures: ``serving_default(images: uint8 [N, H, W, 3])`` -> ``class_map`` (int32
    [N, H, W]) and ``probabilities`` (float32 [N, H, W, C]), at the image's own size (the image
    is resized to the model's input size and the logits back, bilinear, as in evaluation);
    ``metadata()`` -> ``{"metadata": JSON string}``. The JSON is also written to
    ``assets.extra/tfseg.json`` inside the directory and to ``<path>.json`` beside it.

    The directory is written under a temporary name, loaded and run once, then renamed over
    ``path`` (a previous export there is replaced).

    Args:
      model: a Keras segmentation model (float or quantization-aware) or a ``Distiller``.
      path: the SavedModel directory.
      info: classes, palette, ignore label (default generic).
      input_size: (height, width) the model runs at, for models of unknown input size.
      model_name: the zoo name to record.

    Returns:
      ``{"path", "sidecar", "metadata"}``.

    Raises:
      ConfigError: a model without normalisation layer, classes that do not match, unknown size.

    Example:
      >>> to_saved_model(model, "exports/teacher_savedmodel", info=info)
      >>> served = tf.saved_model.load("exports/teacher_savedmodel").signatures["serving_default"]
      >>> served(images=tf.constant(uint8_batch))["class_map"]
    """
    model = deployable(model)
    info = _info_or_generic(model, info)
    module, metadata = serving_module(model, info, input_size=input_size, model_name=model_name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    os.chmod(tmp, DIR_MODE)  # mkdtemp makes it owner-only
    try:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.serve, "metadata": module.describe})
        write_json(tmp / "assets.extra" / "tfseg.json", metadata)
        _check_saved_model(tmp, metadata)
        _replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sidecar = write_json(sidecar_path(path), metadata)
    return {"path": str(path), "sidecar": str(sidecar), "metadata": metadata}


def _replace_directory(new: Path, path: Path):
    """Renames ``new`` to ``path``; an existing ``path`` is moved aside first and removed after,
    so readers see the old or the new complete directory (a rename cannot replace a non-empty one)."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(new, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------ parity


def verify(
    keras_model,
    exported_path,
    data,
    *,
    info: DatasetInfo | None = None,
    image_size=None,
    max_images: int | None = None,
    min_agreement: float = MIN_AGREEMENT,
    min_miou_ratio: float = MIN_MIOU_RATIO,
    num_threads: int = 1,
) -> dict:
    """Runs an exported model and its Keras model on the same real images and compares them.

    TFLite files run in LiteRT (float images resized to the model's input size, as in
    evaluation); SavedModels through their ``serving_default`` signature on the uint8 images at
    their own size. Both predictions are taken at the labels' resolution (logits resized
    bilinearly, then argmax), where agreement and mIoU are measured: one pass of
    ``tfseg.evaluate.stream`` with a ``KerasPredictor`` and the export's predictor
    (``tfseg.predictors.load_predictor``), so the two mIoUs are what ``tfseg.evaluate.evaluate``
    reports for the model and for the file.

    Args:
      keras_model: the model that was exported (or a Distiller).
      exported_path: a ``.tflite`` file or a SavedModel directory.
      data: a tfseg split, a ``tf.data.Dataset`` of ``(image, mask)`` (batched or not), or a
        tuple ``(images, masks)`` of arrays; images are RGB in [0, 255].
      info: for the ignore label (default: the split's, else 255).
      image_size: (height, width) to feed the Keras model, if it accepts any size and the
        exported model does not say (TFLite models have a fixed size).
      max_images: stop after this many images.
      min_agreement: warn below this fraction of pixels where the two argmaxes agree.
      min_miou_ratio: warn when the exported mIoU is below this fraction of the Keras mIoU.
      num_threads: LiteRT threads.

    Returns:
      ``{"kind", "quantization", "num_images", "agreement", "min_image_agreement",
      "miou_keras", "miou_exported", "miou_ratio", "pixel_accuracy_keras",
      "pixel_accuracy_exported", "per_class_iou_keras", "per_class_iou_exported", "collapsed"}``.

    Raises:
      FileNotFoundError: ``exported_path`` is neither a file nor a SavedModel.
      ConfigError: no images, or class counts that differ.

    Warns:
      QuantizationCollapseWarning: agreement or mIoU ratio under the thresholds.

    Example:
      >>> report = verify(model, "student_int8.tflite", tfseg.data.load("camvid", "test"))
      >>> print(f"{report['agreement']:.1%} agreement, mIoU {report['miou_exported']:.3f}")
    """
    keras_model = deployable(keras_model)
    exported = load_predictor(exported_path, num_threads=num_threads)
    num_classes = int(keras_model.output_shape[-1])
    if exported.num_classes != num_classes:
        raise ConfigError(f"{exported.path} outputs {exported.num_classes} classes, the Keras model {num_classes}")
    if info is None and hasattr(data, "info"):
        info = data.info
    ignore_label = info.ignore_label if info is not None else IGNORE_LABEL
    if exported.input_size is not None:  # TFLite: a fixed size
        size = exported.input_size
    elif image_size is not None or None not in tuple(keras_model.input_shape[1:3]):
        size = input_size_of(keras_model, image_size)
    else:
        meta_input = (exported.metadata or {}).get("input", {})
        size = input_size_of(keras_model, (meta_input.get("height"), meta_input.get("width")))
    keras = KerasPredictor(keras_model, size)

    confusion_keras = ConfusionMatrix(keras, num_classes, ignore_label)
    confusion_exported = ConfusionMatrix(exported, num_classes, ignore_label)
    agreement = Agreement(keras, exported)
    # One image at a time, as the exported model runs.
    if not stream([keras, exported], data, [confusion_keras, confusion_exported, agreement], batch_size=1,
                  max_images=max_images):
        raise ConfigError("verify: the data yielded no images")

    keras_scores, exported_scores = confusion_keras.scores(), confusion_exported.scores()
    miou_keras, miou_exported = keras_scores["miou"], exported_scores["miou"]
    ratio = miou_exported / miou_keras if miou_keras > 0 else (1.0 if miou_exported == 0 else float("inf"))
    report = {
        "path": str(exported.path),
        "kind": exported.kind,
        "quantization": exported.quantization,
        "num_images": len(agreement.per_image),
        "agreement": agreement.fraction,
        "min_image_agreement": min(agreement.per_image),
        "miou_keras": miou_keras,
        "miou_exported": miou_exported,
        "miou_ratio": ratio,
        "pixel_accuracy_keras": keras_scores["pixel_accuracy"],
        "pixel_accuracy_exported": exported_scores["pixel_accuracy"],
        "per_class_iou_keras": keras_scores["per_class_iou"].tolist(),
        "per_class_iou_exported": exported_scores["per_class_iou"].tolist(),
    }
    report["collapsed"] = report["agreement"] < min_agreement or ratio < min_miou_ratio
    if report["collapsed"]:
        _warn_collapse(report, min_agreement, min_miou_ratio)
    return report


def _warn_collapse(report, min_agreement, min_miou_ratio):
    bar = "!" * 78
    if "miou_keras" in report:
        detail = (
            f"  argmax agreement {report['agreement']:.1%} (threshold {min_agreement:.0%}), "
            f"worst image {report['min_image_agreement']:.1%}\n"
            f"  mIoU {100 * report['miou_exported']:.2f} exported vs {100 * report['miou_keras']:.2f} Keras "
            f"(ratio {report['miou_ratio']:.2f}, threshold {min_miou_ratio:.2f}) on {report['num_images']} images\n"
        )
    else:
        detail = (f"  argmax agreement {report['agreement']:.1%} (threshold {min_agreement:.0%}) on "
                  f"{report['num_images']} {report['source']}\n")
    warnings.warn(
        f"\n{bar}\n"
        f"EXPORTED MODEL DISAGREES WITH ITS KERAS MODEL ({report['quantization']}): {report['path']}\n"
        + detail +
        "  int8 accuracy is known to collapse on some models with bilinear upsampling "
        "(tensorflow/model-optimization#1000).\n"
        "  Try: quantization-aware training (tfseg quantize), other / more calibration images, or float16.\n"
        f"{bar}",
        QuantizationCollapseWarning,
        stacklevel=3,
    )


__all__ = [
    "FORMAT",
    "IO_DTYPES",
    "MIN_AGREEMENT",
    "MIN_MIOU_RATIO",
    "QUANTIZATIONS",
    "QuantizationCollapseWarning",
    "input_size_of",
    "model_metadata",
    "normalization_of",
    "normalization_text",
    "post_training_quantize",
    "serving_module",
    "sidecar_path",
    "to_saved_model",
    "to_tflite",
    "verify",
]
