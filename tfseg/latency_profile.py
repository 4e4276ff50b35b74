"""Where LiteRT spends a model's time: operator times from LiteRT's own profiler summed over blocks
of Keras layers, beside the MACs of each block.

**Operator times** come from LiteRT's own profiler (``tfseg.litert_profiler``); ``tfseg.tflite.operator_layers``
names the Keras layers behind each TFLite operator, and operators with no layer (the QUANTIZE of the
input and of the output) get rows of their own, ``[input]`` and ``[output]``.

**Segments** (``segments``): ``cut="blocks"`` groups the layers by name: ``block_3_expand``,
``block_3_depthwise_BN``, ... form ``block_3``, ``s16_block2_dw`` forms ``s16_block2``, ``head_conv``
forms ``head`` (a name's first part, or its parts up to the last one with a digit among the first
two; TF-MOT's ``quant_`` prefix aside), and a batch normalization or activation joins the layer it
follows whatever its name (``bn_Conv1`` joins ``Conv1``). A block need not be contiguous in the model's topological order (the LR-ASPP
head interleaves with its skip branch). ``cut="live"`` cuts wherever a single tensor is live;
``cut="layers"`` makes every layer a segment; a list of layer names cuts after each.

**Prefix sub-models** (``method="prefix"``, no profiler needed): every prefix of the model up to a
segment's end (its outputs: the tensors live at the cut) is converted and timed, all in one
``tfseg.tflite.litert_latencies`` call, and each segment costs its prefix's time minus the previous
one's. Blunter than the profiler: every prefix pays for its own outputs (with uint8 I/O, an int8
-> uint8 QUANTIZE of the cut tensors in TFLite's own kernel, which XNNPACK does not take: 1.5 ms for
a 360x480x11 output on the machine this was written on), and each increment carries the noise of
two timings.

``profile_layers(..., peak_gmacs=...)`` states a latency as a multiple of the MAC-bound time from
``tfseg.litert_peak``.

    result = profile_layers(model, "int8", random_images((360, 480, 3), 4), num_threads=1)
    print(format_layer_profile(result))
    peaks = peak_gmacs(litert_peak(num_threads=(1,)))
"""

from __future__ import annotations

import math

from tfseg._keras import keras
from tfseg.litert_profiler import ProfilerUnavailable, litert_op_profile
from tfseg.models.profiling import layer_table
from tfseg.tflite import check_layer_names, litert_latencies, operator_layers, random_images, to_tflite_bytes

layers = keras.layers

CUTS = ("blocks", "live", "layers")
METHODS = ("profiler", "prefix")
INPUT_ROW, OUTPUT_ROW = "[input]", "[output]"

# Layers that join the segment of the layer feeding them (they fuse into it at conversion, mostly).
_ATTACHED = (
    layers.BatchNormalization, layers.ReLU, layers.Activation, layers.LeakyReLU, layers.PReLU, layers.ELU,
    layers.Softmax, layers.Dropout, layers.ThresholdedReLU,
)


# ---------------------------------------------------------------------------------------------
# Segments of a flat functional model


def _graph(model) -> tuple[list, dict]:
    """The layers of a flat functional model in topological order and each one's inbound layer names.

    Raises:
      ValueError: naming the model, when it is not functional, has several inputs, nests a model or
        calls a layer more than once.
    """
    if not getattr(model, "_is_graph_network", False):
        raise ValueError(f"{getattr(model, 'name', model)!r} is not a flat functional model (it is a "
                         f"{type(model).__name__} without a layer graph): segments are cut in a functional graph")
    if len(model.inputs) != 1:
        raise ValueError(f"{model.name!r} has {len(model.inputs)} inputs: profiling takes single-input models")
    own_nodes = getattr(model, "_network_nodes", None)
    inbound, order = {}, []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise ValueError(f"{model.name!r} is not a flat functional model: its layer {layer.name!r} is a nested "
                             "model (rebuild it flat, or profile the nested model on its own)")
        calls = [node for index, node in enumerate(layer.inbound_nodes)
                 if own_nodes is None or f"{layer.name}_ib-{index}" in own_nodes]
        if len(calls) != 1:
            raise ValueError(f"{model.name!r} is not a flat functional model: its layer {layer.name!r} is called "
                             f"{len(calls)} times")
        sources = calls[0].inbound_layers
        sources = [source.name for source in (sources if isinstance(sources, (list, tuple)) else [sources])]
        if any(source not in inbound for source in sources):
            raise ValueError(f"the layers of {model.name!r} are not in topological order at {layer.name!r}")
        inbound[layer.name] = sources
        order.append(layer)
    return [layer for layer in order if not isinstance(layer, layers.InputLayer)], inbound


# Name prefixes of TF-MOT's wrappers (a quantization-aware or pruned model's layers).
_WRAPPER_PREFIXES = ("quant_", "prune_low_magnitude_")


def _unwrapped(layer):
    return layer.layer if isinstance(layer, layers.Wrapper) else layer


def _block_name(name: str) -> str:
    """``block_3_expand_BN`` -> ``block_3``, ``s16_block2_dw`` -> ``s16_block2``, ``head_conv`` -> ``head``
    (``quant_head_conv`` too)."""
    for prefix in _WRAPPER_PREFIXES:
        name = name[len(prefix):] if name.startswith(prefix) and len(name) > len(prefix) else name
    parts = name.split("_")
    numbered = [i for i, part in enumerate(parts[:2]) if any(c.isdigit() for c in part)]
    return "_".join(parts[: numbered[-1] + 1]) if numbered else parts[0]


def _contiguous(groups: list[list[str]], position: dict) -> list[list[str]]:
    """Groups merged where they interleave, so that each is a run of consecutive layers."""
    spans = sorted((min(position[n] for n in g), max(position[n] for n in g)) for g in groups)
    merged = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    names = sorted(position, key=position.get)
    return [names[start: end + 1] for start, end in merged]


def segments(model, cut="blocks", contiguous: bool = False) -> list[dict]:
    """The segments of a flat functional model a profile reports on, in model order.

    Args:
      model: a flat functional Keras model (one input, no nested model, no shared layer).
      cut: ``"blocks"`` (layers grouped by name, see the module docstring), ``"live"`` (cut where a
        single tensor is live), ``"layers"`` (every layer), or layer names to cut after.
      contiguous: merge interleaved blocks so that each segment is a run of consecutive layers in
        topological order (what prefix sub-models need).

    Returns:
      ``[{"segment" (its name), "layers" (names, model order)}, ...]``; every layer but the input
      is in exactly one segment.

    Raises:
      ValueError: not a flat functional model (naming it), an unknown ``cut`` or layer name.
    """
    graph, inbound = _graph(model)
    position = {layer.name: i for i, layer in enumerate(graph)}
    if isinstance(cut, str) and cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS} or a list of layer names, got {cut!r}")
    if cut == "blocks":
        group = {}
        for layer in graph:
            sources = [s for s in inbound[layer.name] if s in position]
            attach = isinstance(_unwrapped(layer), _ATTACHED) and len(inbound[layer.name]) == 1 and sources
            group[layer.name] = group[sources[0]] if attach else _block_name(layer.name)
        keys = list(dict.fromkeys(group[layer.name] for layer in graph))
        found = [[layer.name for layer in graph if group[layer.name] == key] for key in keys]
        if not contiguous:
            return [{"segment": key, "layers": names} for key, names in zip(keys, found)]
        found = _contiguous(found, position)
    elif cut == "layers":
        found = [[layer.name] for layer in graph]
    else:
        if cut == "live":
            live = _live_counts(graph, inbound, model.output_names)
            ends = [i for i, count in enumerate(live) if count == 1]
        else:
            ends = sorted(position[name] for name in check_layer_names(model, cut) if name in position)
        ends = sorted(set(ends) | {len(graph) - 1})
        found = [[layer.name for layer in graph[start: end + 1]] for start, end in zip([0] + [e + 1 for e in ends], ends)]
    return [{"segment": names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}", "layers": names}
            for names in found if names]


def _live_counts(graph, inbound, output_names) -> list[int]:
    """How many layer outputs are still needed after each layer of ``graph``."""
    position = {layer.name: i for i, layer in enumerate(graph)}
    last_use = {name: len(graph) for name in output_names}
    for i, layer in enumerate(graph):
        for source in inbound[layer.name]:
            last_use[source] = max(last_use.get(source, -1), i)
    return [sum(1 for name, end in last_use.items() if end > k and position.get(name, -1) <= k)
            for k in range(len(graph))]


# ---------------------------------------------------------------------------------------------
# Profiles


def _convert(model, quantization, representative_data, input_shape, io_dtype):
    quantization = None if quantization in (None, "float32", "none") else quantization
    if quantization == "int8":
        return to_tflite_bytes(model, "int8", representative_data, input_shape=input_shape, io_dtype=io_dtype)
    return to_tflite_bytes(model, quantization, input_shape=input_shape)


def _segment_rows(model, found, input_shape) -> tuple[list[dict], dict]:
    """Rows with the types, output shape and MACs of each segment; the layer -> segment map."""
    table = {row["name"]: row for row in layer_table(model, input_shape)}
    rows, segment_of = [], {}
    for index, segment in enumerate(found):
        inner = [_unwrapped(model.get_layer(name)) for name in segment["layers"]]
        kinds = [type(layer).__name__ for layer in inner if not isinstance(layer, _ATTACHED)]
        macs = [table[name]["macs"] for name in segment["layers"]]
        rows.append({
            "segment": segment["segment"],
            "first": segment["layers"][0],
            "last": segment["layers"][-1],
            "layers": segment["layers"],
            "types": ", ".join(dict.fromkeys(kinds)) or type(inner[0]).__name__,
            "output_shape": table[segment["layers"][-1]]["output_shape"],
            "macs": None if None in macs else int(sum(macs)),
            "ms": 0.0,
        })
        segment_of.update({name: index for name in segment["layers"]})
    return rows, segment_of


def _io_row(name: str) -> dict:
    return {"segment": name, "first": None, "last": None, "layers": [], "types": "", "output_shape": None,
            "macs": 0, "ms": 0.0}


def _profiler_method(model, tflite_bytes, rows, segment_of, num_threads, runs, warmup) -> dict:
    profile = litert_op_profile(tflite_bytes, num_threads, runs, warmup)
    owners = operator_layers(model, tflite_bytes)
    extra = {INPUT_ROW: _io_row(INPUT_ROW), OUTPUT_ROW: _io_row(OUTPUT_ROW)}
    index_of = []
    for op in profile["ops"]:
        owner = owners[op["index"]] if op["index"] is not None else {"layer": None, "layers": [], "tensor": ""}
        names = [owner["layer"]] + owner["layers"] if owner["layer"] else []
        if not names and op["op"] not in ("QUANTIZE", "DEQUANTIZE") and owner["tensor"].startswith("Identity"):
            names = model.output_names  # writes the output before its int8 -> uint8 QUANTIZE: the output layer
        index_of.append(next((segment_of[name] for name in names if name in segment_of), None))
    layered = [k for k, index in enumerate(index_of) if index is not None]
    current = extra[INPUT_ROW]
    for k, (op, index) in enumerate(zip(profile["ops"], index_of)):
        if index is not None:
            current = rows[index]
        elif op["op"] in ("QUANTIZE", "DEQUANTIZE") and (not layered or k < layered[0] or k > layered[-1]):
            current = extra[INPUT_ROW if not layered or k < layered[0] else OUTPUT_ROW]  # the model's I/O conversion
        op["segment"] = current["segment"]  # an operator with no layer of its own: with the one before
        current["ms"] += op["ms"]
        if current["segment"] in extra:
            current["types"] = ", ".join(dict.fromkeys(filter(None, current["types"].split(", ") + [op["op"]])))
    used = {op["segment"] for op in profile["ops"]}
    rows = [extra[INPUT_ROW]] * (INPUT_ROW in used) + rows + [extra[OUTPUT_ROW]] * (OUTPUT_ROW in used)
    return {"rows": rows, "total_ms": profile["total_ms"], "sum_ms": profile["ops_ms"], "ops": profile["ops"],
            "unaligned": profile["unaligned"], "noise_ms": None}


def prefix_models(model, cut="blocks") -> list:
    """The prefix sub-models of ``model`` ending after each of its contiguous segments (``segments(model,
    cut, contiguous=True)``): their outputs are the tensors live at the cut, in model order (one,
    or several where a skip connection crosses it). The last one is ``model`` itself.
    """
    return _prefix_models(model, segments(model, cut, contiguous=True))


def _prefix_models(model, found) -> list:
    graph, inbound = _graph(model)
    position = {layer.name: i for i, layer in enumerate(graph)}
    prefixes = []
    for k, segment in enumerate(found[:-1]):
        end = max(position[name] for name in segment["layers"])
        needed = {s for layer in graph[end + 1:] for s in inbound[layer.name]} | set(model.output_names)
        live = [layer.output for layer in graph[: end + 1] if layer.name in needed]
        prefixes.append(keras.Model(model.inputs, live, name=f"{model.name}_prefix{k}"))
    return prefixes + [model]


def _prefix_method(model, rows, found, convert, num_threads, runs, warmup) -> dict:
    prefixes = {str(k): convert(prefix) for k, prefix in enumerate(_prefix_models(model, found))}
    stats = litert_latencies(prefixes, num_threads, runs, warmup)
    times = [stats[str(k)]["median_ms"] for k in range(len(found))]
    for row, time, before in zip(rows, times, [0.0] + times[:-1]):
        row["ms"] = time - before
        row["prefix_ms"] = time
    whole = stats[str(len(found) - 1)]
    return {"rows": rows, "total_ms": whole["median_ms"], "sum_ms": float(sum(row["ms"] for row in rows)),
            "ops": None, "unaligned": None,
            "noise_ms": float(max(s["p90_ms"] - s["median_ms"] for s in stats.values()))}


def profile_layers(model, quantization=None, representative_data=None, num_threads: int = 1, runs: int = 10,
                   warmup: int = 2, cut="blocks", *, method: str = "profiler", input_shape=None,
                   io_dtype: str = "uint8", peak_gmacs: float | None = None) -> dict:
    """How the LiteRT time of a flat functional model splits over its segments of layers.

    Args:
      model: a flat functional tf_keras model with one input (tfseg's segmentation models are).
      quantization: None or ``"float32"`` (float32), ``"int8"`` (post-training full integer),
        ``"float16"`` or ``"dynamic"`` (see ``tfseg.tflite.to_tflite_bytes``).
      representative_data: int8 calibration images (random images when None: ranges do not
        change the time); every prefix of the prefix method is calibrated on the same ones.
      num_threads: LiteRT (XNNPACK) threads.
      runs, warmup: timed and untimed invocations (medians over ``runs``).
      cut: the segments (see ``segments``): ``"blocks"``, ``"live"``, ``"layers"`` or layer names.
      method: ``"profiler"`` (LiteRT's per-operator profiler, ``litert_op_profile``) or
        ``"prefix"`` (time prefix sub-models and take differences; segments made contiguous).
      input_shape: (height, width[, channels]) when the model's input size is unknown.
      io_dtype: the int8 model's input/output type (uint8, as tfseg exports).
      peak_gmacs: the machine's dense GMAC/s for this quantization and thread count (from
        ``peak_gmacs(litert_peak(...))``): adds the MAC-bound time and the ratio to it.

    Returns:
      ``{"model", "quantization", "method", "cut", "num_threads", "runs", "macs", "total_ms" (the
      whole model's median invocation), "sum_ms" (of the rows), "noise_ms" (prefix: the largest
      p90 - median of a prefix), "unaligned" (profiler: see ``litert_op_profile``), "rows", "ops"
      (profiler: per TFLite operator, with its segment), "peak_gmacs", "mac_bound_ms", "ratio"}``.
      Each row: ``{"segment", "first", "last", "layers", "types", "output_shape", "macs", "ms",
      "percent" (of sum_ms), "gmacs_per_s", "peak_percent"}``; the profiler adds rows ``[input]``
      and ``[output]`` for conversion operators with no layer.

    Raises:
      ValueError: not a flat functional model (naming it), a bad ``cut``, ``method`` or size.
      ProfilerUnavailable: ``method="profiler"`` and the installed LiteRT lacks its C API.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    found = segments(model, cut, contiguous=method == "prefix")
    shape = tuple(model.inputs[0].shape[1:]) if input_shape is None else tuple(input_shape)
    if quantization == "int8" and representative_data is None:
        representative_data = random_images(shape if len(shape) == 3 else (*shape, model.inputs[0].shape[-1]), 4)
    rows, segment_of = _segment_rows(model, found, input_shape)

    def convert(keras_model):
        return _convert(keras_model, quantization, representative_data, input_shape, io_dtype)

    if method == "profiler":
        measured = _profiler_method(model, convert(model), rows, segment_of, num_threads, runs, warmup)
    else:
        measured = _prefix_method(model, rows, found, convert, num_threads, runs, warmup)
    macs = sum(row["macs"] or 0 for row in rows)
    total = measured["total_ms"]
    for row in measured["rows"]:
        row["percent"] = 100.0 * row["ms"] / measured["sum_ms"] if measured["sum_ms"] else None
        row["gmacs_per_s"] = row["macs"] / row["ms"] / 1e6 if row["macs"] and row["ms"] > 0 else None
        row["peak_percent"] = (100.0 * row["gmacs_per_s"] / peak_gmacs
                               if peak_gmacs and row["gmacs_per_s"] is not None else None)
    bound = macs / peak_gmacs / 1e6 if peak_gmacs else None
    return {
        "model": model.name,
        "quantization": "float32" if quantization in (None, "none") else quantization,
        "method": method,
        "cut": cut if isinstance(cut, str) else list(cut),
        "num_threads": num_threads,
        "runs": runs,
        "macs": macs,
        "total_ms": total,
        "sum_ms": measured["sum_ms"],
        "noise_ms": measured["noise_ms"],
        "unaligned": measured["unaligned"],
        "gmacs_per_s": macs / total / 1e6 if total else None,
        "peak_gmacs": peak_gmacs,
        "mac_bound_ms": bound,
        "ratio": total / bound if bound else None,
        "rows": measured["rows"],
        "ops": measured["ops"],
    }


# ---------------------------------------------------------------------------------------------
# Markdown


def _cell(value, fmt: str = "{:.2f}") -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def _shape(shape) -> str:
    return "–" if shape is None else "x".join(str(d) for d in shape)


def format_layer_profile(*results) -> str:
    """A Markdown table of one or more ``profile_layers`` results of the same model and cut, side
    by side (e.g. float32 and int8), with the totals under it."""
    labels = [f"{r['quantization']} {r['num_threads']}t" for r in results]
    peak = any(r["peak_gmacs"] for r in results)
    header = ["segment", "layers", "types", "output", "MMACs"]
    for label in labels:
        header += [f"{label} ms", f"{label} %", f"{label} GMAC/s"] + ([f"{label} % of peak"] if peak else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * (len(header) - 4)]
    order = list(dict.fromkeys(row["segment"] for r in results for row in r["rows"]))
    by_name = [{row["segment"]: row for row in r["rows"]} for r in results]
    for name in order:
        first = next(rows[name] for rows in by_name if name in rows)
        span = "–" if not first["layers"] else (first["first"] if len(first["layers"]) == 1
                                                 else f"{first['first']}..{first['last']} ({len(first['layers'])})")
        cells = [name, span, first["types"], _shape(first["output_shape"]),
                 _cell(None if first["macs"] is None else first["macs"] / 1e6)]
        for rows in by_name:
            row = rows.get(name, {})
            cells += [_cell(row.get("ms"), "{:.3f}"), _cell(row.get("percent"), "{:.1f}"),
                      _cell(row.get("gmacs_per_s"), "{:.1f}")]
            cells += [_cell(row.get("peak_percent"), "{:.0f}")] if peak else []
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for label, r in zip(labels, results):
        note = (f"; noise (largest p90 - median of a prefix) {r['noise_ms']:.3f} ms" if r["noise_ms"] is not None
                else f"; {r['unaligned']} XNNPACK operators of an unexpected kind" if r["unaligned"] else "")
        bound = (f"; MAC-bound {r['mac_bound_ms']:.2f} ms at {r['peak_gmacs']:.1f} GMAC/s, "
                 f"latency {r['ratio']:.1f}x that" if r["ratio"] else "")
        lines.append(f"- {label}: whole model {r['total_ms']:.3f} ms, rows sum to {r['sum_ms']:.3f} ms "
                     f"({r['method']}){note}; {r['macs'] / 1e9:.3f} GMACs, {_cell(r['gmacs_per_s'], '{:.1f}')} GMAC/s"
                     f"{bound}")
    return "\n".join(lines) + "\n"


__all__ = ["CUTS", "METHODS", "ProfilerUnavailable", "format_layer_profile", "prefix_models", "profile_layers",
           "segments"]
