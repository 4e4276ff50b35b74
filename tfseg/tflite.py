"""Small TFLite helpers: convert a Keras model to TFLite bytes (float32, float16, full int8), run
the bytes, and time them with LiteRT.

The full export module (SavedModel, parity reports, files on disk) builds on these.

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

import json
import time

import numpy as np

from tfseg import _tfmot
from tfseg._keras import tf
from tfseg.options import IO_DTYPES, PTQ_MODES

# After tfseg._keras, which must be the first to import TensorFlow (it picks the Keras).
from tensorflow.lite.python import schema_py_generated as schema  # noqa: E402, I001
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

    Returns:
      The ``.tflite`` file contents.

    Raises:
      ValueError: an unknown ``quantization`` or ``io_dtype``, int8 without representative data,
        or an input size that is neither fixed by the model nor given.

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


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as err:
        raise ImportError(
            "running TFLite models needs the LiteRT runtime: pip install ai-edge-litert "
            "(or pip install 'tfseg[litert]')"
        ) from err
    return Interpreter


def interpreter(tflite_bytes: bytes, num_threads: int = 1):
    """A LiteRT interpreter over ``tflite_bytes`` with its tensors allocated.

    Raises:
      ImportError: ai-edge-litert is not installed (the message says how to install it).
    """
    runner = _interpreter_class()(model_content=bytes(tflite_bytes), num_threads=num_threads)
    runner.allocate_tensors()
    return runner


def run_tflite(tflite_bytes: bytes, inputs, num_threads: int = 1) -> np.ndarray:
    """Runs a single-input, single-output TFLite model on float inputs; returns float outputs.

    Integer inputs and outputs are quantized and dequantized with the tensors' own scale and
    zero point, so float32, float16 and int8 models can be compared on the same images.

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
    if np.issubdtype(out["dtype"], np.integer):
        scale, zero = out["quantization"]
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
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    runner = interpreter(tflite_bytes, num_threads)
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
        runner.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    times = np.asarray(times)
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(times.mean()),
        "min_ms": float(times.min()),
        "max_ms": float(times.max()),
        "runs": runs,
        "warmup": warmup,
        "num_threads": num_threads,
    }




# TFLite files carry named metadata buffers (the converter already writes some, e.g.
# "min_runtime_version"); tfseg's JSON goes under this name, for the device runner (tfseg-lite).
METADATA_NAME = "tfseg"


def embed_metadata(tflite_bytes: bytes, metadata: dict, name: str = METADATA_NAME) -> bytes:
    """Returns the TFLite model with ``metadata`` stored as a JSON buffer named ``name`` (replaced if present)."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    payload = np.frombuffer(json.dumps(metadata, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    model.metadata = [entry for entry in (model.metadata or []) if entry.name.decode() != name]
    buffer = schema.BufferT()
    buffer.data = payload
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_metadata(tflite_bytes: bytes, name: str = METADATA_NAME) -> dict | None:
    """The JSON metadata named ``name`` in a TFLite model, or None."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite_bytes))
    for entry in model.metadata or []:
        if entry.name.decode() == name:
            return json.loads(bytes(model.buffers[entry.buffer].data).decode("utf-8"))
    return None


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
        return {"name": name, "dtype": dtype, "shape": shape, "data": data}

    ops = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        builtin = max(code.builtinCode, code.deprecatedBuiltinCode)  # the schema keeps both fields
        ops.append({
            "op": op_names.get(builtin, f"BUILTIN_{builtin}"),
            "inputs": [tensor(i) for i in op.inputs if i >= 0],
            "outputs": [tensor(i) for i in op.outputs],
        })
    return ops


__all__ = [
    "IO_DTYPES",
    "METADATA_NAME",
    "QUANTIZATIONS",
    "embed_metadata",
    "interpreter",
    "litert_latency",
    "model_input_shapes",
    "random_images",
    "read_metadata",
    "run_tflite",
    "tflite_ops",
    "to_tflite_bytes",
]
