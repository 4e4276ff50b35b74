"""LiteRT's own operator profiler, reached through the C API of the wheel's ``libLiteRt.so``.

**The profiler.** The Python ``Interpreter`` of ai-edge-litert has no operator profiler, but the
``libLiteRt.so`` of the same wheel exports LiteRT's C API, whose ``CompiledModel`` records per-operator
events when its runtime options say ``enable_profiling = true``. ``litert_op_profile`` drives
that API through ctypes on the CPU (XNNPACK, ``num_threads`` threads): an event for each XNNPACK
operator of each delegated partition, and one for each operator left to TFLite's built-in kernels
(e.g. the uint8 <-> int8 QUANTIZE of an int8 model's input and output), in whole microseconds. These
are the XNNPACK kernels ``tfseg.tflite.litert_latency`` times through the ``Interpreter``; the
whole-model times of the two agree within the noise. On a busy machine the sum of the operators'
medians is the steadier figure: a preemption lands in one operator of one run, and the median of
that operator drops it, while it stays in the whole invocation's time.

**Operators to layers.** An XNNPACK event names an XNNPACK operator ("Convolution (NHWC, QC8) IGEMM",
"Fully Connected (NC, F32) GEMM" for a 1x1 convolution, "Clamp (NC)" for an activation XNNPACK did
not fuse) and carries only its index inside its partition. The events are aligned to the delegated
TFLite operators in execution order by their kinds (``_align``: one XNNPACK operator per TFLite
operator where the kinds fit, several (ADD then Clamp) or none (fused away) where they must), and
the caller (``tfseg.latency_profile``) names the Keras layers behind each TFLite operator.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import lru_cache

import numpy as np

from tfseg.tflite import io_tensors, tflite_ops

class ProfilerUnavailable(RuntimeError):
    """The installed LiteRT does not export the C API ``litert_op_profile`` needs."""


_P = ctypes.c_void_p
_DEFAULT_EVENT, _OPERATOR_EVENT, _DELEGATE_OPERATOR_EVENT = 1, 1 << 1, 1 << 3  # LiteRtProfilerEventType
_HW_CPU, _LOCK_WRITE = 1, 1  # kLiteRtHwAcceleratorCpu, kLiteRtTensorBufferLockModeWrite


class _MemoryUsage(ctypes.Structure):
    _fields_ = [("total", ctypes.c_size_t), ("in_use", ctypes.c_size_t), ("private", ctypes.c_size_t)]


class _Event(ctypes.Structure):  # ProfiledEventData, litert/c/litert_profiler_event.h
    _fields_ = [
        ("tag", ctypes.c_char_p), ("event_type", ctypes.c_int), ("start_us", ctypes.c_uint64),
        ("elapsed_us", ctypes.c_uint64), ("begin_memory", _MemoryUsage), ("end_memory", _MemoryUsage),
        ("metadata1", ctypes.c_uint64), ("metadata2", ctypes.c_uint64), ("source", ctypes.c_int),
    ]


_FUNCTIONS = (
    "LiteRtCreateEnvironment", "LiteRtCreateModelFromBuffer", "LiteRtDestroyModel", "LiteRtCreateOptions",
    "LiteRtDestroyOptions", "LiteRtSetOptionsHardwareAccelerators", "LiteRtCreateOpaqueOptions",
    "LiteRtAddOpaqueOptions", "LiteRtCreateCompiledModel", "LiteRtDestroyCompiledModel", "LiteRtGetModelSignature",
    "LiteRtGetNumSignatureInputs", "LiteRtGetNumSignatureOutputs", "LiteRtGetSignatureInputTensorByIndex",
    "LiteRtGetSignatureOutputTensorByIndex", "LiteRtGetRankedTensorType",
    "LiteRtGetCompiledModelInputBufferRequirements", "LiteRtGetCompiledModelOutputBufferRequirements",
    "LiteRtCreateManagedTensorBufferFromRequirements", "LiteRtDestroyTensorBuffer", "LiteRtLockTensorBuffer",
    "LiteRtUnlockTensorBuffer", "LiteRtGetTensorBufferSize", "LiteRtRunCompiledModel",
    "LiteRtCompiledModelGetProfiler", "LiteRtStartProfiler", "LiteRtStopProfiler", "LiteRtResetProfiler",
    "LiteRtGetNumProfilerEvents", "LiteRtGetProfilerEvents",
)


@lru_cache(maxsize=None)
def _litert():
    """(the C library, a CPU environment), loaded once per process."""
    spec = importlib.util.find_spec("ai_edge_litert")  # where the wheel is; its Python API is not needed
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("profiling needs the LiteRT runtime: pip install ai-edge-litert")
    path = os.path.join(spec.submodule_search_locations[0], "libLiteRt.so")
    try:
        lib = ctypes.CDLL(path)
        missing = [name for name in _FUNCTIONS if not hasattr(lib, name)]
    except OSError as err:
        raise ProfilerUnavailable(f"cannot load LiteRT's C library {path}: {err}; use method='prefix'") from err
    if missing:
        raise ProfilerUnavailable(f"{path} lacks {', '.join(missing)} (another LiteRT version?); use method='prefix'")
    for name in ("LiteRtDestroyModel", "LiteRtDestroyOptions", "LiteRtDestroyCompiledModel", "LiteRtDestroyTensorBuffer"):
        getattr(lib, name).restype = None
    environment = _P()
    _check(lib.LiteRtCreateEnvironment(0, None, ctypes.byref(environment)), "LiteRtCreateEnvironment")
    return lib, environment


@lru_cache(maxsize=None)
def _libc():
    libc = ctypes.CDLL(None)
    libc.strdup.restype, libc.strdup.argtypes = _P, [ctypes.c_char_p]
    return libc


def _check(status: int, call: str):
    if status != 0:
        raise RuntimeError(f"LiteRT {call} failed with status {status}")


class _ProfiledModel:
    """A LiteRT CompiledModel on the CPU with profiling on, its input buffers filled with random values."""

    def __init__(self, tflite_bytes: bytes, num_threads: int, seed: int):
        self.lib, self.environment = _litert()
        self._model_bytes = ctypes.create_string_buffer(bytes(tflite_bytes), len(tflite_bytes))  # outlives the model
        self.model, self.options, self.compiled, self.buffers = _P(), _P(), _P(), []
        try:
            self._open(tflite_bytes, num_threads, seed)
        except Exception:
            self.close()
            raise

    def _open(self, tflite_bytes: bytes, num_threads: int, seed: int):
        lib, environment = self.lib, self.environment
        _check(lib.LiteRtCreateModelFromBuffer(environment, self._model_bytes, ctypes.c_size_t(len(tflite_bytes)),
                                               ctypes.byref(self.model)), "LiteRtCreateModelFromBuffer")
        _check(lib.LiteRtCreateOptions(ctypes.byref(self.options)), "LiteRtCreateOptions")
        _check(lib.LiteRtSetOptionsHardwareAccelerators(self.options, _HW_CPU), "LiteRtSetOptionsHardwareAccelerators")
        libc = _libc()
        for identifier, toml in (("runtime_options_string", "enable_profiling = true\n"),
                                 ("xnnpack", f"num_threads = {int(num_threads)}\n")):
            opaque = _P()  # the options own their TOML payload (malloc'd) and free it
            _check(lib.LiteRtCreateOpaqueOptions(identifier.encode(), _P(libc.strdup(toml.encode())),
                                                 ctypes.cast(libc.free, _P), ctypes.byref(opaque)),
                   "LiteRtCreateOpaqueOptions")
            _check(lib.LiteRtAddOpaqueOptions(self.options, opaque), "LiteRtAddOpaqueOptions")
        _check(lib.LiteRtCreateCompiledModel(environment, self.model, self.options, ctypes.byref(self.compiled)),
               "LiteRtCreateCompiledModel")
        signature = _P()
        _check(lib.LiteRtGetModelSignature(self.model, ctypes.c_size_t(0), ctypes.byref(signature)), "signature")
        rng = np.random.default_rng(seed)
        inputs = io_tensors(tflite_bytes)["inputs"]
        self.inputs = self._buffers(signature, "Input", [lambda size, t=t: _random_bytes(t["dtype"], size, rng)
                                                         for t in inputs])
        self.outputs = self._buffers(signature, "Output", None)
        self.profiler = _P()
        _check(lib.LiteRtCompiledModelGetProfiler(self.compiled, ctypes.byref(self.profiler)), "GetProfiler")

    def _buffers(self, signature, kind: str, fills):
        lib = self.lib
        count = ctypes.c_size_t()
        _check(getattr(lib, f"LiteRtGetNumSignature{kind}s")(signature, ctypes.byref(count)), kind)
        array = (_P * count.value)()
        for index in range(count.value):
            tensor, requirements, buffer = _P(), _P(), _P()
            tensor_type = ctypes.create_string_buffer(4096)  # LiteRtRankedTensorType, only passed back
            _check(getattr(lib, f"LiteRtGetSignature{kind}TensorByIndex")(signature, ctypes.c_size_t(index),
                                                                          ctypes.byref(tensor)), kind)
            _check(lib.LiteRtGetRankedTensorType(tensor, tensor_type), "LiteRtGetRankedTensorType")
            _check(getattr(lib, f"LiteRtGetCompiledModel{kind}BufferRequirements")(
                self.compiled, ctypes.c_size_t(0), ctypes.c_size_t(index), ctypes.byref(requirements)), kind)
            _check(lib.LiteRtCreateManagedTensorBufferFromRequirements(self.environment, tensor_type, requirements,
                                                                       ctypes.byref(buffer)), "tensor buffer")
            self.buffers.append(buffer)
            array[index] = buffer
            if fills:
                size, address = ctypes.c_size_t(), _P()
                _check(lib.LiteRtGetTensorBufferSize(buffer, ctypes.byref(size)), "LiteRtGetTensorBufferSize")
                _check(lib.LiteRtLockTensorBuffer(buffer, ctypes.byref(address), _LOCK_WRITE), "lock")
                data = fills[index](size.value)
                ctypes.memmove(address, data, len(data))
                _check(lib.LiteRtUnlockTensorBuffer(buffer), "unlock")
        return array

    def run(self):
        _check(self.lib.LiteRtRunCompiledModel(self.compiled, ctypes.c_size_t(0), ctypes.c_size_t(len(self.inputs)),
                                               self.inputs, ctypes.c_size_t(len(self.outputs)), self.outputs),
               "LiteRtRunCompiledModel")

    def events(self, runs: int) -> list[tuple]:
        """(tag, type, elapsed µs, metadata) of every event of ``runs`` profiled runs."""
        lib = self.lib
        _check(lib.LiteRtResetProfiler(self.profiler), "LiteRtResetProfiler")
        _check(lib.LiteRtStartProfiler(self.profiler), "LiteRtStartProfiler")
        for _ in range(runs):
            self.run()
        _check(lib.LiteRtStopProfiler(self.profiler), "LiteRtStopProfiler")
        count = ctypes.c_int()
        _check(lib.LiteRtGetNumProfilerEvents(self.profiler, ctypes.byref(count)), "LiteRtGetNumProfilerEvents")
        events = (_Event * max(count.value, 1))()
        _check(lib.LiteRtGetProfilerEvents(self.profiler, count, events), "LiteRtGetProfilerEvents")
        return [(e.tag.decode() if e.tag else "", e.event_type, int(e.elapsed_us), int(e.metadata1))
                for e in events[: count.value]]

    def close(self):
        lib = self.lib
        for buffer in self.buffers:
            lib.LiteRtDestroyTensorBuffer(buffer)
        self.buffers = []
        for handle, destroy in ((self.compiled, lib.LiteRtDestroyCompiledModel), (self.options, lib.LiteRtDestroyOptions),
                                (self.model, lib.LiteRtDestroyModel)):
            if handle:
                destroy(handle)
        self.compiled = self.options = self.model = _P()


def _random_bytes(dtype: str, size: int, rng) -> bytes:
    """``size`` bytes of random ``dtype`` values: the full range of an integer type, [0, 255] for floats."""
    dtype = np.dtype(dtype)
    count = size // dtype.itemsize
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, count, endpoint=True)
    else:
        values = rng.uniform(0.0, 255.0, count)
    return values.astype(dtype).tobytes()


# XNNPACK operator names (their start) -> the TFLite operators they can come from.
_XNNPACK_SOURCES = (
    ("Convolution", {"CONV_2D", "DEPTHWISE_CONV_2D"}),
    ("Deconvolution", {"TRANSPOSE_CONV"}),
    ("Fully Connected", {"CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL"}),
    ("Batch Matrix Multiply", {"BATCH_MATMUL"}),
    ("Add", {"ADD"}), ("Subtract", {"SUB"}), ("Multiply", {"MUL"}), ("Divide", {"DIV"}),
    ("Maximum", {"MAXIMUM"}), ("Minimum", {"MINIMUM"}), ("Squared Difference", {"SQUARED_DIFFERENCE"}),
    ("Constant Pad", {"PAD", "PADV2"}),
    ("Copy", {"CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS"}),
    ("Concatenate", {"CONCATENATION"}),
    ("Slice", {"SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V"}),
    ("Resize Bilinear", {"RESIZE_BILINEAR"}),
    ("Mean", {"MEAN", "AVERAGE_POOL_2D"}), ("Global Average Pooling", {"MEAN", "AVERAGE_POOL_2D"}),
    ("Average Pooling", {"AVERAGE_POOL_2D"}), ("Max Pooling", {"MAX_POOL_2D"}), ("Argmax Pooling", {"MAX_POOL_2D"}),
    ("Sigmoid", {"LOGISTIC"}), ("Tanh", {"TANH"}), ("HardSwish", {"HARD_SWISH"}), ("Softmax", {"SOFTMAX"}),
    ("Leaky ReLU", {"LEAKY_RELU"}), ("ELU", {"ELU"}), ("Clamp", {"RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1"}),
    ("Convert", {"QUANTIZE", "DEQUANTIZE"}), ("Transpose", {"TRANSPOSE"}),
    ("Depth To Space", {"DEPTH_TO_SPACE"}), ("Space To Depth", {"SPACE_TO_DEPTH"}),
)
# Operators XNNPACK may split off the TFLite operator before them (an unfused activation, a concat's copies).
_CONTINUATIONS = ("Clamp", "Copy")
_SKIP, _EXTRA, _UNKNOWN, _WRONG = 0.3, 0.1, 0.5, 1.0


def _kind_cost(kernel: str, op: str, continued: bool) -> float:
    """0 where XNNPACK's ``kernel`` can compute TFLite's ``op`` (``continued``: as its second operator)."""
    if continued and kernel.startswith(_CONTINUATIONS):
        return 0.0
    for start, sources in _XNNPACK_SOURCES:
        if kernel.startswith(start):
            return 0.0 if op in sources else _WRONG
    return _UNKNOWN  # a name the table does not know (XNNPACK names a fused unary op "Invalid Unary Op")


def _align(kernels: list[str], ops: list[str]) -> tuple[list[int], int]:
    """Assigns each XNNPACK operator to a TFLite operator, both in execution order (monotone).

    A dynamic programme over (XNNPACK operator, TFLite operator it belongs to): a TFLite operator
    may get none (fused away, cost _SKIP) or several (cost _EXTRA each beyond the first), and an
    operator of the wrong kind costs _WRONG (one of a name the table does not know, _UNKNOWN).
    Returns the TFLite positions and the count of XNNPACK operators placed on a TFLite operator of
    another kind.
    """
    n, m = len(kernels), len(ops)
    if not n or not m:
        return [0] * n if m else [], n if n and not m else 0
    cost = np.full((n, m), np.inf)
    back = np.zeros((n, m), dtype=int)
    for j in range(m):
        cost[0, j] = _SKIP * j + _kind_cost(kernels[0], ops[j], False)
    for i in range(1, n):
        best, best_j = np.inf, -1  # min over j' < j of cost[i-1, j'] + _SKIP * (j - j' - 1)
        for j in range(m):
            stay = cost[i - 1, j] + _EXTRA + _kind_cost(kernels[i], ops[j], True)
            move = best + _kind_cost(kernels[i], ops[j], False)
            cost[i, j], back[i, j] = (stay, j) if stay <= move else (move, best_j)
            if cost[i - 1, j] <= best + _SKIP:
                best, best_j = cost[i - 1, j], j
            else:
                best += _SKIP
    end = cost[-1] + _SKIP * (m - 1 - np.arange(m))
    j = int(np.argmin(end))
    assigned = [0] * n
    for i in range(n - 1, -1, -1):
        assigned[i] = j
        j = back[i, j]
    wrong = sum(1 for i, j in enumerate(assigned)
                if _kind_cost(kernels[i], ops[j], i > 0 and assigned[i - 1] == j) >= _WRONG)
    return assigned, wrong


def litert_op_profile(tflite_bytes: bytes, num_threads: int = 1, runs: int = 10, warmup: int = 2,
                      seed: int = 0) -> dict:
    """Per-operator times of a TFLite model in LiteRT on the CPU (XNNPACK), from LiteRT's profiler.

    Args:
      tflite_bytes: the model (single signature).
      num_threads: XNNPACK threads.
      runs: profiled invocations (medians are taken over them).
      warmup: unprofiled invocations first (XNNPACK packs weights on the first).
      seed: for the random inputs.

    Returns:
      ``{"total_ms" (median whole invocation), "ops_ms" (sum of the operators' medians), "ops",
      "unaligned", "runs", "warmup", "num_threads"}``. ``ops`` has one row per TFLite operator in
      execution order: ``{"index", "op" (e.g. "CONV_2D"), "delegated" (run by XNNPACK), "kernels"
      (its XNNPACK operators), "ms"}``; ``unaligned`` counts XNNPACK operators the alignment had to
      place on a TFLite operator of another kind (0 when the kinds fit throughout).

    Raises:
      ProfilerUnavailable: the installed LiteRT lacks the C API (use the prefix method).
      ValueError: ``runs`` < 1.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    model = _ProfiledModel(tflite_bytes, num_threads, seed)
    try:
        for _ in range(warmup):
            model.run()
        events = model.events(runs)
    finally:
        model.close()
    per_run, totals = [], []
    for tag, kind, elapsed, metadata in events:
        if kind == _DEFAULT_EVENT and tag == "Invoke":  # the interpreter's Invoke opens each run
            per_run.append([])
            totals.append(elapsed)
        elif kind in (_OPERATOR_EVENT, _DELEGATE_OPERATOR_EVENT) and per_run:
            per_run[-1].append((tag, kind, elapsed, metadata))
    if len(per_run) != runs or len({tuple(e[:2] for e in run) for run in per_run}) != 1:
        raise RuntimeError(f"LiteRT's profiler recorded {len(per_run)} runs of differing operators for {runs} runs")
    first = per_run[0]
    times = np.median(np.array([[e[2] for e in run] for run in per_run], dtype=float), axis=0) / 1000.0
    names = [op["op"] for op in tflite_ops(tflite_bytes)]
    rows = [{"index": i, "op": name, "delegated": True, "kernels": [], "ms": 0.0} for i, name in enumerate(names)]
    delegated_events = [k for k, e in enumerate(first) if e[1] == _DELEGATE_OPERATOR_EVENT]
    for k, (tag, kind, _elapsed, index) in enumerate(first):
        if kind == _OPERATOR_EVENT and index < len(names):  # TFLite's own kernel; the metadata: its index
            rows[index].update(delegated=False, kernels=[tag], ms=float(times[k]))
        elif kind == _OPERATOR_EVENT:  # a node the model does not have (a delegate's own kernel)
            rows.append({"index": None, "op": tag, "delegated": False, "kernels": [tag], "ms": float(times[k])})
    delegated = [row["index"] for row in rows if row["delegated"]]
    positions, wrong = _align([first[k][0] for k in delegated_events], [names[i] for i in delegated])
    for k, position in zip(delegated_events, positions):
        row = rows[delegated[position]]
        row["kernels"].append(first[k][0])
        row["ms"] += float(times[k])
    return {
        "total_ms": float(np.median(totals)) / 1000.0,
        "ops_ms": float(times.sum()),
        "ops": rows,
        "unaligned": wrong,
        "runs": runs,
        "warmup": warmup,
        "num_threads": num_threads,
    }


__all__ = ["ProfilerUnavailable", "litert_op_profile"]
