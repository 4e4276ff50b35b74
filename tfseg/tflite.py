"""Small TFLite helpers: convert a Keras model to TFLite bytes (float32, float16, full int8), run
the bytes, and time them with LiteRT.

The full export module (SavedModel, parity reports, files on disk) builds on these.

Post-training int8 also comes in its two halves, ``calibrated_tflite`` (measure the activation
ranges) and ``quantize_calibrated`` (quantize, optionally leaving chosen operators in float), with
``operator_layers`` naming the Keras layers behind each TFLite operator: float fallback of chosen
layers (``to_tflite_bytes(..., float_layers=...)``) and the int8 diagnosis of ``tfseg.quantize.diagnose``.

Why conversion goes through a concrete function with a fixed input signature instead of
``TFLiteConverter.from_keras_model``:

- A fixed batch of 1 removes the SHAPE / STRIDED_SLICE / PACK ops that a dynamic batch leaves
  around every transpose convolution (``from_keras_model`` keeps the model's ``None`` batch).
- ``from_keras_model`` (and ``from_concrete_functions`` with its default
  ``experimental_lower_to_saved_model``) first writes a full Keras SavedModel, tracing every
  layer's call: 11-27 s for a 0.5 M-parameter U-Net here, against 2 s for the frozen concrete
  function, with the same ops and the same outputs (max difference 3e-7 on random images).
- Models built with ``input_shape=(None, None, 3)`` convert at any size without a rebuild.

Runtime: ``ai_edge_litert.interpreter.Interpreter`` (``pip install ai-edge-litert``), imported
only when something is run, so conversion works without it.
"""

from __future__ import annotations

import difflib
import json
import time
import warnings

import numpy as np

from tfseg import _tfmot
from tfseg._keras import tf
from tfseg.options import IO_DTYPES, PTQ_MODES

# After tfseg._keras, which must be the first to import TensorFlow (it picks the Keras).
from tensorflow.lite.python import schema_py_generated as schema  # noqa: E402, I001
from tensorflow.lite.python.convert import mlir_quantize  # noqa: E402
from tensorflow.lite.tools import flatbuffer_utils  # noqa: E402

# Here float32 is None (the converter's own default); tfseg.options names it "none".
QUANTIZATIONS = (None, *PTQ_MODES)


def model_input_shapes(model, input_shape=None, fixed_batch=1) -> list[tuple]:
    """The full input shapes (batch included) a conversion uses.

    Args:
      model: a Keras model.
      input_shape: (height, width, channels) or (height, width) for a single-input model whose
        spatial size is unknown (or to convert it at another size).
      fixed_batch: batch size baked into the TFLite model (None keeps it dynamic).

    Raises:
      ValueError: a dimension other than the batch is unknown and ``input_shape`` does not fix it.
    """
    shapes = [tuple(spec.shape) for spec in model.inputs]
    if input_shape is not None:
        if len(shapes) != 1:
            raise ValueError(f"input_shape applies to single-input models; {model.name!r} has {len(shapes)} inputs")
        input_shape = tuple(int(d) for d in input_shape)
        if len(input_shape) == len(shapes[0]) - 2:  # (height, width): keep the model's channels
            input_shape = input_shape + shapes[0][-1:]
        channels = shapes[0][-1]
        if len(input_shape) != len(shapes[0]) - 1 or channels not in (None, input_shape[-1]):
            raise ValueError(f"input_shape {input_shape} does not fit {model.name!r}'s input {shapes[0][1:]}")
        shapes = [(None,) + input_shape]
    for shape in shapes:
        if None in shape[1:]:
            raise ValueError(
                f"{model.name!r} takes inputs of shape {shape[1:]} with unknown dimensions: "
                "pass input_shape=(height, width, channels)"
            )
    return [(fixed_batch,) + shape[1:] for shape in shapes]


def random_images(input_shape, count: int = 8, seed: int = 0) -> np.ndarray:
    """``count`` random float32 images of ``input_shape`` (H, W, C) with pixels uniform in [0, 255].

    Enough to calibrate an int8 conversion when only its size or speed matters; the quantization
    ranges it yields are not the ones real images give, so measure accuracy with real data.
    """
    return np.random.default_rng(seed).uniform(0.0, 255.0, (count, *input_shape)).astype(np.float32)


def calibration_batches(representative_data, shapes):
    """Yields lists of float32 input arrays with exactly the converter's input shapes.

    Elements may be single images, batches (split into the fixed batch size) or ``(image, mask)``
    pairs as tfseg's datasets yield them (the mask is dropped).
    """
    data = representative_data() if callable(representative_data) else representative_data
    if isinstance(data, tf.data.Dataset):
        data = data.as_numpy_iterator()
    count = 0
    for element in data:
        if len(shapes) == 1 and isinstance(element, (tuple, list)):
            element = [element[0]]
        elif len(shapes) == 1:
            element = [element]
        arrays = []
        for array, shape in zip(element, shapes):
            array = np.asarray(array, np.float32)
            if array.ndim == len(shape) - 1:
                array = array[None]
            if array.shape[1:] != shape[1:]:
                raise ValueError(f"representative data of shape {array.shape[1:]} does not fit the input {shape[1:]}")
            arrays.append(array)
        step = shapes[0][0] or arrays[0].shape[0]
        for start in range(0, arrays[0].shape[0] - step + 1, step):
            count += 1
            yield [array[start : start + step] for array in arrays]
    if not count:
        raise ValueError("representative_data yielded no complete batch: int8 calibration needs at least one input")


def to_tflite_bytes(
    model,
    quantization=None,
    representative_data=None,
    fixed_batch=1,
    *,
    input_shape=None,
    io_dtype: str = "int8",
    float_layers=None,
) -> bytes:
    """Converts a Keras model to a TFLite flatbuffer.

    Args:
      model: a Keras model (plain, pruned-and-stripped or QAT).
      quantization: None (float32), ``"float16"`` (float16 weights), ``"dynamic"`` (dynamic range:
        int8 weights, float activations, no calibration) or ``"int8"`` (full integer: int8
        weights and activations, only ``TFLITE_BUILTINS_INT8`` ops, so the conversion fails
        rather than leaving float ops behind). A quantization-aware (TF-MOT) model converts to
        ``"int8"`` with the ranges its fake-quant nodes learned, without calibration.
      representative_data: for ``"int8"`` of a float model: images to calibrate activation ranges with: an array
        (N, H, W, C), an iterable or ``tf.data.Dataset`` of images, batches or ``(image, mask)``
        pairs, or a callable returning one. A hundred real images is typical; ``random_images``
        when only size or speed matters.
      fixed_batch: batch size baked into the model (1 by default: that drops the shape ops a
        dynamic batch leaves around transpose convolutions); None keeps the batch dynamic.
      input_shape: (height, width[, channels]) when the model's spatial size is unknown.
      io_dtype: for ``"int8"``: the type of the model's input and output tensors, ``"int8"``,
        ``"uint8"`` or ``"float32"`` (quantize/dequantize inside the model).
      float_layers: for post-training ``"int8"``: Keras layer names whose TFLite operators stay
        in float (float fallback, e.g. the worst layers of ``tfseg.quantize.diagnose``).

    Returns:
      The ``.tflite`` file contents.

    Raises:
      ValueError: an unknown ``quantization`` or ``io_dtype``, int8 without representative data,
        an input size that is neither fixed by the model nor given, or ``float_layers`` that
        name no operator (or with a quantization-aware model, or another quantization).

    Example:
      >>> float_bytes = to_tflite_bytes(model, input_shape=(360, 480, 3))
      >>> int8_bytes = to_tflite_bytes(model, "int8", random_images((360, 480, 3)), input_shape=(360, 480, 3))
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype must be one of {IO_DTYPES}, got {io_dtype!r}")
    qat = any(_tfmot.is_qat_layer(layer) for layer in model.layers)
    if qat and quantization != "int8":
        raise ValueError(f"{model.name!r} is quantization-aware: convert it with quantization='int8'")
    if quantization == "int8" and representative_data is None and not qat:
        raise ValueError(
            "int8 conversion needs representative_data (e.g. 100 training images); "
            "tfseg.tflite.random_images(shape) will do when only size or speed matters"
        )
    if float_layers and (quantization != "int8" or qat):
        raise ValueError(
            f"float fallback applies to post-training int8 of a float model; {model.name!r} "
            + ("is quantization-aware (its int8 ranges come from training)" if qat else f"converts to {quantization}")
        )
    if float_layers:
        calibrated = calibrated_tflite(model, representative_data, fixed_batch, input_shape=input_shape)
        return quantize_calibrated(calibrated, io_dtype, float_fallback_tensors(model, calibrated, float_layers))
    converter = _converter(model, quantization, representative_data, fixed_batch, input_shape, io_dtype, qat)
    flatbuffer = converter.convert()
    if quantization == "int8" and qat:
        left = sorted({op["op"] for op in tflite_ops(flatbuffer)
                       if op["op"] not in ("QUANTIZE", "DEQUANTIZE")
                       and any(t["dtype"] == "float32" for t in op["inputs"] + op["outputs"])})
        if left:
            raise ValueError(
                f"the quantization-aware model {model.name!r} converted with float operators left ({', '.join(left)}): "
                "some layer has no fake-quant range (see tfseg.quantize.configs)"
            )
    return flatbuffer


def _converter(model, quantization, representative_data, fixed_batch, input_shape, io_dtype, qat):
    """The TFLiteConverter ``to_tflite_bytes`` runs, set up for ``quantization``."""
    shapes = model_input_shapes(model, input_shape, fixed_batch)
    specs = [tf.TensorSpec(shape, spec.dtype) for shape, spec in zip(shapes, model.inputs)]

    @tf.function
    def serve(*inputs):
        return model(inputs[0] if len(inputs) == 1 else list(inputs), training=False)

    concrete = serve.get_concrete_function(*specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], model)
    converter.experimental_lower_to_saved_model = False  # see the module docstring: 5-10x faster
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if not qat:
            converter.representative_dataset = lambda: calibration_batches(representative_data, shapes)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # A QAT model carries its ranges in its fake-quant nodes. Requiring TFLITE_BUILTINS_INT8
        # for it fails in TF 2.21 ("a representative_dataset must be specified": the check runs
        # before the converter has seen the graph), so its ops are checked after conversion.
        if io_dtype != "float32":
            converter.inference_input_type = converter.inference_output_type = getattr(tf, io_dtype)
    return converter


def calibrated_tflite(model, representative_data, fixed_batch=1, *, input_shape=None) -> bytes:
    """The float TFLite model with the activation ranges measured on ``representative_data``.

    The first half of a post-training int8 conversion (``to_tflite_bytes(model, "int8", ...)``
    runs the same converter with the same calibration); ``quantize_calibrated`` does the second,
    optionally leaving chosen operators in float. Calibrating once serves several quantizations.

    Raises:
      ValueError: a quantization-aware model (it carries its own ranges), no data, a bad size.
    """
    if any(_tfmot.is_qat_layer(layer) for layer in model.layers):
        raise ValueError(f"{model.name!r} is quantization-aware: its int8 ranges come from training, not calibration")
    if representative_data is None:
        raise ValueError("calibration needs representative_data (e.g. 100 training images)")
    # float32 I/O here: quantize_calibrated sets the types (int8 ones would want input statistics).
    converter = _converter(model, "int8", representative_data, fixed_batch, input_shape, "float32", False)
    # The converter's own switch: stop after measuring the ranges (what QuantizationDebugger uses).
    converter._experimental_calibrate_only = True
    return converter.convert()


def quantize_calibrated(calibrated: bytes, io_dtype: str = "int8", float_tensors=(), *,
                        numeric_verify: bool = False) -> bytes:
    """Quantizes a ``calibrated_tflite`` model to int8, leaving the operators that write ``float_tensors`` in float.

    The call the converter makes after calibration (TensorFlow's MLIR quantizer), with its
    experimental deny-list: a denied operator keeps float weights and computes in float between a
    DEQUANTIZE and a QUANTIZE. Input and output keep ``io_dtype``.

    Args:
      calibrated: from ``calibrated_tflite``.
      io_dtype: ``"int8"``, ``"uint8"`` or ``"float32"`` input and output tensors.
      float_tensors: TFLite tensor names (of the calibrated model) whose operators stay float
        (``float_fallback_tensors`` finds them from Keras layer names).
      numeric_verify: instead, the debug model of ``tf.lite.experimental.QuantizationDebugger``:
        every int8 operator is followed by its float twin on the same (dequantized) inputs and a
        ``NumericVerify`` operator comparing the two (``io_dtype`` is then float32).

    Returns:
      The ``.tflite`` contents.
    """
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype must be one of {IO_DTYPES}, got {io_dtype!r}")
    io = tf.float32 if numeric_verify else getattr(tf, io_dtype)
    return mlir_quantize(calibrated, input_data_type=io, output_data_type=io, enable_numeric_verify=numeric_verify,
                         denylisted_nodes=list(float_tensors) or None)


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise ImportError(
            "running TFLite models needs the LiteRT runtime: pip install ai-edge-litert "
            "(or pip install 'tfseg[litert]')"
        ) from err
    return Interpreter


def interpreter(tflite_bytes: bytes, num_threads: int = 1, *, preserve_all_tensors: bool = False):
    """A LiteRT interpreter over ``tflite_bytes`` with its tensors allocated.

    ``preserve_all_tensors`` keeps every intermediate tensor readable after ``invoke()`` (for
    debugging; it costs memory).

    Raises:
      ImportError: ai-edge-litert is not installed (the message says how to install it).
    """
    with warnings.catch_warnings():
        # LiteRT warns that preserving tensors is for debugging: asked for, it is.
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        runner = _interpreter_class()(model_content=bytes(tflite_bytes), num_threads=num_threads,
                                      experimental_preserve_all_tensors=preserve_all_tensors)
    runner.allocate_tensors()
    return runner


def run_tflite(tflite_bytes: bytes, inputs, num_threads: int = 1) -> np.ndarray:
    """Runs a single-input, single-output TFLite model on float inputs; returns float outputs.

    Integer inputs and outputs are quantized and dequantized with the tensors' own scale and
    zero point, so float32, float16 and int8 models can be compared on the same images; an
    integer output without quantization (class ids) is returned as its values.

    Args:
      tflite_bytes: the model, or an interpreter from ``interpreter()`` to reuse across calls
        (creating one packs the weights again, which dominates when running many images).
      inputs: float array of the model's input shape (batch included), pixels in [0, 255].
      num_threads: interpreter threads (when given bytes).
    """
    runner = tflite_bytes if hasattr(tflite_bytes, "invoke") else interpreter(tflite_bytes, num_threads)
    (inp,), (out,) = runner.get_input_details(), runner.get_output_details()
    x = np.asarray(inputs, np.float32)
    if np.issubdtype(inp["dtype"], np.integer):
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max)
    runner.set_tensor(inp["index"], x.astype(inp["dtype"]))
    runner.invoke()
    y = runner.get_tensor(out["index"])
    scale, zero = out["quantization"]
    if np.issubdtype(out["dtype"], np.integer) and scale:  # scale 0: not quantized (class ids of an ARG_MAX)
        y = (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def litert_latency(tflite_bytes: bytes, num_threads: int = 1, runs: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """Times ``invoke()`` of a TFLite model in LiteRT (XNNPACK on CPU) on random inputs.

    Only the invocation is timed (input copy and allocation are not). On a shared machine the
    median is the figure to quote; p90 shows the noise.

    Args:
      tflite_bytes: the model.
      num_threads: interpreter threads.
      runs: timed invocations.
      warmup: untimed invocations first (XNNPACK packs weights on the first one).
      seed: for the random inputs.

    Returns:
      ``{"median_ms", "p90_ms", "mean_ms", "min_ms", "max_ms", "runs", "warmup", "num_threads"}``.

    Raises:
      ImportError: ai-edge-litert is not installed.
      ValueError: ``runs`` < 1.
    """
    return litert_latencies({"model": tflite_bytes}, num_threads, runs, warmup, seed)["model"]


def litert_latencies(models: dict, num_threads: int = 1, runs: int = 20, warmup: int = 3, seed: int = 0) -> dict:
    """Times several TFLite models in turns, as ``litert_latency`` times one: each round invokes every
    model once, so a load that comes and goes on a shared machine falls on all of them alike and
    their ratios hold within one call.

    Args:
      models: name -> model bytes.
      num_threads, runs, warmup, seed: as for ``litert_latency`` (runs and warmup per model).

    Returns:
      name -> ``litert_latency``'s dict.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    runners = {}
    for name, tflite_bytes in models.items():
        runner = runners[name] = interpreter(tflite_bytes, num_threads)
        rng = np.random.default_rng(seed)
        for detail in runner.get_input_details():
            dtype = np.dtype(detail["dtype"])
            if np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                value = rng.integers(info.min, info.max, detail["shape"], endpoint=True)
            else:
                value = rng.uniform(0.0, 255.0, detail["shape"])
            runner.set_tensor(detail["index"], value.astype(dtype))
    for _ in range(warmup):
        for runner in runners.values():
            runner.invoke()
    times = {name: [] for name in runners}
    for _ in range(runs):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.invoke()
            times[name].append((time.perf_counter() - start) * 1000.0)
    stats = {}
    for name, values in times.items():
        values = np.asarray(values)
        stats[name] = {
            "median_ms": float(np.median(values)),
            "p90_ms": float(np.percentile(values, 90)),
            "mean_ms": float(values.mean()),
            "min_ms": float(values.min()),
            "max_ms": float(values.max()),
            "runs": runs,
            "warmup": warmup,
            "num_threads": num_threads,
        }
    return stats




# TFLite files carry named metadata buffers (the converter already writes some, e.g.
# "min_runtime_version"); tfseg's JSON goes under this name, for the device runner (tfseg-lite).
METADATA_NAME = "tfseg"


def embed_buffer(tflite_bytes: bytes, name: str, payload: bytes) -> bytes:
    """Returns the TFLite model with ``payload`` stored as the metadata buffer ``name`` (replaced if present).

    The model is re-serialised, so anything appended after its flatbuffer (the associated-files
    zip of ``tfseg.tflite_metadata``) is dropped: attach that last.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    model.metadata = [entry for entry in (model.metadata or []) if entry.name.decode() != name]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(bytes(payload), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_buffer(tflite_bytes: bytes, name: str) -> bytes | None:
    """The contents of the metadata buffer named ``name`` in a TFLite model, or None."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    for entry in model.metadata or []:
        if entry.name.decode() == name:
            data = model.buffers[entry.buffer].data
            return b"" if data is None else bytes(np.asarray(data, np.uint8))
    return None


def embed_metadata(tflite_bytes: bytes, metadata: dict, name: str = METADATA_NAME) -> bytes:
    """Returns the TFLite model with ``metadata`` stored as a JSON buffer named ``name`` (replaced if present)."""
    return embed_buffer(tflite_bytes, name, json.dumps(metadata, sort_keys=True).encode("utf-8"))


def read_metadata(tflite_bytes: bytes, name: str = METADATA_NAME) -> dict | None:
    """The JSON metadata named ``name`` in a TFLite model, or None."""
    payload = read_buffer(tflite_bytes, name)
    return None if payload is None else json.loads(payload.decode("utf-8"))


def io_tensors(tflite_bytes: bytes) -> dict:
    """The subgraph count and the main graph's input and output tensors, without running the model.

    Returns:
      ``{"subgraphs": int, "inputs": [...], "outputs": [...]}``, each tensor
      ``{"name", "dtype" ("uint8", "float32", ...), "shape"}``.
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    type_names = _enum_names(schema.TensorType)
    graph = model.subgraphs[0]

    def describe(index):
        t = graph.tensors[index]
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        shape = [int(d) for d in (t.shape if t.shape is not None else [])]
        return {"name": name, "dtype": type_names[t.type].lower(), "shape": shape}

    return {
        "subgraphs": len(model.subgraphs),
        "inputs": [describe(i) for i in graph.inputs],
        "outputs": [describe(i) for i in graph.outputs],
    }


def _enum_names(enum_class) -> dict:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def tflite_ops(tflite_bytes: bytes) -> list[dict]:
    """The operators of a TFLite model's main graph, in execution order, with their tensors.

    For checking what a conversion produced (every convolution in int8, no float op left) and
    reading constant weights (e.g. the sparsity of int8 kernels) without running the model.

    Args:
      tflite_bytes: the model.

    Returns:
      One dict per operator: ``{"op": "CONV_2D", "inputs": [...], "outputs": [...]}``, each
      tensor ``{"name", "dtype" ("int8", "float32", ...), "shape", "data"}`` where ``data`` is
      the constant's values as an array (None for activations; absent optional inputs are left
      out).

    Example:
      >>> [op["op"] for op in tflite_ops(int8_bytes) if op["outputs"][0]["dtype"] == "float32"]
      []
    """
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    op_names, type_names = _enum_names(schema.BuiltinOperator), _enum_names(schema.TensorType)
    graph = model.subgraphs[0]

    def tensor(index):
        t = graph.tensors[index]
        dtype = type_names[t.type].lower()
        data = model.buffers[t.buffer].data if t.buffer else None
        shape = [int(d) for d in (t.shape if t.shape is not None else [])]
        if data is not None and len(data):
            raw = bytes(np.asarray(data, np.uint8))
            try:
                data = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
            except (TypeError, ValueError):  # e.g. string tensors: left as bytes
                data = raw
        else:
            data = None
        name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        return {"name": name, "dtype": dtype, "shape": shape, "data": data, "index": int(index)}

    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)  # the schema keeps both fields
        entry = {
            "op": op_names.get(builtin, f"BUILTIN_{builtin}"),
            "inputs": [tensor(i) for i in op.inputs if i >= 0],
            "outputs": [tensor(i) for i in op.outputs],
        }
        if code.customCode:
            entry["custom_code"] = code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
        ops.append(entry)
    return ops


def _layer_scopes(tensor_name: str) -> list[str]:
    """The name scopes in a TFLite tensor name: fused operators join their TensorFlow op names with
    ``;`` (``model/block_1_expand_relu/Relu6;model/block_1_expand/Conv2D``); the last part of each
    is the op, the parts before are scopes (the model's, then the layer's)."""
    return [scope for piece in tensor_name.split(";") for scope in piece.split("/")[:-1]]


def operator_layers(model, tflite_bytes: bytes) -> list[dict]:
    """The operators of a TFLite model converted from ``model``, each with the Keras layers it computes.

    TFLite keeps the TensorFlow op names as tensor names, and those start with the model's and the
    layer's name scopes; a fused operator (convolution + batch norm + ReLU6) names all its layers.
    The operator writing the model's output is named after the output (``Identity``): it is
    given the model's output layer.

    Args:
      model: the Keras model the file was converted from (by ``to_tflite_bytes`` or
        ``calibrated_tflite``).
      tflite_bytes: the file.

    Returns:
      One dict per operator in execution order: ``{"index", "op", "tensor" (its first output's
      name), "layers" (Keras layer names in model order, possibly empty), "layer" (the one to show:
      the first with weights, else the last)}``.

    Example:
      >>> operator_layers(model, calibrated)[3]["layers"]
      ['expanded_conv_depthwise', 'expanded_conv_depthwise_BN', 'expanded_conv_depthwise_relu']
    """
    order = {layer.name: position for position, layer in enumerate(model.layers)}
    ops = tflite_ops(tflite_bytes)
    consumed = {t["index"] for op in ops for t in op["inputs"]}
    output_layers = [name for name in getattr(model, "output_names", []) if name in order]
    found = []
    for index, op in enumerate(ops):
        tensor = op["outputs"][0]
        names = sorted({scope for scope in _layer_scopes(tensor["name"]) if scope in order}, key=order.get)
        if not names and tensor["index"] not in consumed and op["op"] not in ("QUANTIZE", "DEQUANTIZE"):
            names = output_layers
        weighted = [name for name in names if model.get_layer(name).weights]
        found.append({"index": index, "op": op.get("custom_code", op["op"]), "tensor": tensor["name"], "layers": names,
                      "layer": weighted[0] if weighted else (names[-1] if names else None)})
    return found


def check_layer_names(model, layers) -> list[str]:
    """``layers`` (a name or names) as a list, each checked to be a layer of ``model``.

    Raises:
      ValueError: naming the first unknown name and the closest layer names.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    known = {layer.name for layer in model.layers}
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{model.name!r} has no layer {name!r}{hint}")
    return names


def float_fallback_tensors(model, calibrated: bytes, layers) -> list[str]:
    """The tensor names that ``quantize_calibrated`` leaves in float for the Keras layers ``layers``.

    Raises:
      ValueError: a name that is not a layer of ``model`` (with the closest names), or a layer
        with no TFLite operator of its own (removed or folded into another at conversion).
    """
    names = check_layer_names(model, layers)
    operators = operator_layers(model, calibrated)
    tensors = []
    for name in names:
        mine = [op["tensor"] for op in operators if name in op["layers"] and op["op"] not in ("QUANTIZE", "DEQUANTIZE")]
        if not mine:
            raise ValueError(f"layer {name!r} of {model.name!r} has no TFLite operator of its own "
                             f"({type(model.get_layer(name)).__name__} removed or folded at conversion): "
                             "name the layer it is fused into")
        tensors.extend(tensor for tensor in mine if tensor not in tensors)
    return tensors


__all__ = [
    "IO_DTYPES",
    "METADATA_NAME",
    "QUANTIZATIONS",
    "calibrated_tflite",
    "embed_buffer",
    "embed_metadata",
    "float_fallback_tensors",
    "interpreter",
    "io_tensors",
    "litert_latencies",
    "litert_latency",
    "model_input_shapes",
    "operator_layers",
    "quantize_calibrated",
    "random_images",
    "read_buffer",
    "read_metadata",
    "run_tflite",
    "tflite_ops",
    "to_tflite_bytes",
]
