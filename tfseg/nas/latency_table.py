"""A persistent latency lookup table: every block a search may choose, timed alone in LiteRT.

FasterSeg's idea on this machine: each block is built alone as a tiny tf_keras model with the exact
input shape it has at the table's input size, through the same builders as the deployed network
(``tfseg.models.searched``), converted (int8 with int8 I/O, or float32), checked to run as ONE
XNNPACK partition, and timed with ``tfseg.tflite.litert_latencies`` (median after warm-up, all blocks
of a build in interleaved rounds) at each thread count. Summed, the entries predict a whole net
(``tfseg.nas.expected_latency``).

Entries are keyed by readable strings (``stem_key``, ``cell_key``, ``head_proj_key``, ``head_fuse_key``):

- ``stem|stage=1|cin=3|cout=16``: one stride-2 stem stage (stage 1 includes the input normalisation);
- ``cell|op=conv3x3|scale=16|stride=2|cin=32|cout=64``: a cell op; ``scale`` is its output scale, at
  stride 2 ``cin`` is a width of the next finer scale, in layer 0 a stem stage-3 width. An identity
  skip (stride 1, cin == cout) adds no layer: 0 ms, never measured;
- ``head_proj|scale=32|to=16|cin=128|cout=64``: a branch's 1x1 conv + BN + ReLU and its bilinear resize
  to the finest branch's size (none when ``to == scale``);
- ``head_fuse|scale=16|branches=2|width=64|classes=11``: at the finest branch's scale, the add of the
  projected branches (when ``branches`` is 2), the 3x3 fuse conv + BN + ReLU, the classifier and the
  bilinear resize of the logits to the input size.

The head parts are cut from one ``head()`` built on inputs of the right shapes (``head_part_models``),
at the tensors entering its add (with one branch: its fuse conv), so every layer of ``head()`` is in
exactly one part and the parts add up to it.

File (``FORMAT``): ``{"format", "meta": {input_size, dtype, threads, num_classes, runs, warmup,
runtime: {name, version}, machine: {cpu, cores}, date, space, corrections}, "entries": {key: {"ms":
{"1": ms, "2": ms}} or {"rejected": reason}}}``.

Fill or extend a table from the shell::

    tfseg latency-table TABLE.json --input-size 360x480 --num-classes 11 [--space JSON]
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
from pathlib import Path

from tfseg._keras import keras
from tfseg.checkpoint import atomic_write
from tfseg.models.common import image_input, normalize
from tfseg.models.searched import cell_op, stem
from tfseg.models.searched import head
from tfseg.nas.arch_params import SECOND_BRANCH_SCALES, beta_mask
from tfseg.nas.architecture import as_architecture
from tfseg.tflite import litert_latencies, to_tflite_bytes
from tfseg.tflite import random_images
from tfseg.train import progress_verbosity
from tfseg.xnnpack import delegation, summary
from tfseg.errors import ConfigError
from tfseg.nas.space import OPS, SCALES, SearchSpace, check_input_size, feature_sizes

FORMAT = "tfseg-nas-latency-table/1"
DTYPES = ("int8", "float32")
RUNTIME = "ai-edge-litert"
KEY_FIELDS = {
    "stem": ("stage", "cin", "cout"),
    "cell": ("op", "scale", "stride", "cin", "cout"),
    "head_proj": ("scale", "to", "cin", "cout"),
    "head_fuse": ("scale", "branches", "width", "classes"),
}
FILL_MODULE = "tfseg latency-table"  # the command that creates or extends a table


# --- keys -------------------------------------------------------------------------------------------

def _key(kind: str, **fields) -> str:
    return "|".join([kind, *(f"{name}={fields[name]}" for name in KEY_FIELDS[kind])])


def stem_key(stage: int, cin: int, cout: int) -> str:
    """Stem stage ``stage`` (1-3) from ``cin`` to ``cout`` channels."""
    return _key("stem", stage=stage, cin=cin, cout=cout)


def cell_key(op: str, scale: int, stride: int, cin: int, cout: int) -> str:
    """A cell's op ending at 1/``scale`` (its input at 1/``scale`` for stride 1, 1/``scale/2`` for stride 2)."""
    return _key("cell", op=op, scale=scale, stride=stride, cin=cin, cout=cout)


def head_proj_key(scale: int, to: int, cin: int, cout: int) -> str:
    """The projection of a branch ending at 1/``scale``, resized to the finest branch's 1/``to``."""
    return _key("head_proj", scale=scale, to=to, cin=cin, cout=cout)


def head_fuse_key(scale: int, branches: int, width: int, classes: int) -> str:
    """The head after the projections, at the finest branch's 1/``scale``, with ``branches`` to add."""
    return _key("head_fuse", scale=scale, branches=branches, width=width, classes=classes)


def parse_key(key: str) -> tuple:
    """``(kind, {field: value})`` of a table key (ints, ``op`` a str), or a ConfigError saying what is wrong."""
    kind, *pieces = str(key).split("|")
    if kind not in KEY_FIELDS:
        raise ConfigError(f"latency-table key {key!r}: unknown kind {kind!r}; kinds: {', '.join(KEY_FIELDS)}")
    names = tuple(piece.split("=", 1)[0] for piece in pieces)
    if names != KEY_FIELDS[kind] or any("=" not in piece for piece in pieces):
        raise ConfigError(f"latency-table key {key!r}: expected {_key(kind, **{n: n.upper() for n in KEY_FIELDS[kind]})}")
    fields = {}
    for piece in pieces:
        name, value = piece.split("=", 1)
        try:
            fields[name] = value if name == "op" else int(value)
        except ValueError:
            raise ConfigError(f"latency-table key {key!r}: {name} must be an integer, got {value!r}") from None
    problem = _check_fields(kind, fields)
    if problem:
        raise ConfigError(f"latency-table key {key!r}: {problem}")
    return kind, fields


def _check_fields(kind: str, f: dict):
    """What makes the block of a well-formed key impossible, or None."""
    if any(value < 1 for name, value in f.items() if name != "op"):
        return "every number must be >= 1"
    if kind == "stem":
        if f["stage"] not in (1, 2, 3):
            return "stage must be 1, 2 or 3"
        if f["stage"] == 1 and f["cin"] != 3:
            return "stage 1 takes the 3-channel image"
    elif kind == "cell":
        if f["op"] not in OPS:
            return f"unknown op {f['op']!r}; known ops: {', '.join(OPS)}"
        if f["scale"] not in SCALES or f["stride"] not in (1, 2) or (f["stride"] == 2 and f["scale"] == SCALES[0]):
            return f"scale must be one of {SCALES}, stride 1 or 2 (stride 2 only into 1/16 and 1/32)"
    elif kind == "head_proj":
        if f["scale"] not in SCALES or f["to"] not in SCALES or f["to"] > f["scale"]:
            return f"scale and to must be in {SCALES}, to <= scale"
    elif f["scale"] not in SCALES or f["branches"] not in (1, 2) or (f["branches"] == 2 and f["scale"] == SCALES[-1]):
        return f"scale must be in {SCALES}, branches 1 or 2 (two branches end finer than 1/{SCALES[-1]})"
    return None


def is_identity(key: str) -> bool:
    """An identity skip: no layer, 0 ms."""
    kind, f = parse_key(key)
    return kind == "cell" and f["op"] == "skip" and f["stride"] == 1 and f["cin"] == f["cout"]


def keys_for_space(space: SearchSpace, num_classes: int) -> list:
    """Every entry a search over ``space`` needs (identity skips left out), in a stable order: the stem
    stages over their width choices, every cell's ops over its input edges and widths, and the head
    parts of the two-branch nets a search derives (1/32 plus 1/16 or 1/8)."""

    keys = [stem_key(1, 3, cout) for cout in space.stem_width_choices(0)]
    for stage in (1, 2):
        keys += [stem_key(stage + 1, cin, cout) for cin in space.stem_width_choices(stage - 1)
                 for cout in space.stem_width_choices(stage)]
    edges = beta_mask(space)
    for layer in range(space.num_layers):
        for s, scale in enumerate(SCALES):
            if not space.cell_exists(layer, scale):
                continue
            inputs = []
            if layer == 0:
                inputs.append((1, space.stem_width_choices(2)))
            else:
                if edges[layer, s, 0]:
                    inputs.append((1, space.cell_width_choices(scale)))
                if edges[layer, s, 1]:
                    inputs.append((2, space.cell_width_choices(SCALES[s - 1])))
            keys += [cell_key(op, scale, stride, cin, cout) for op in space.ops for stride, cins in inputs
                     for cin in cins for cout in space.cell_width_choices(scale)]
    coarsest = SCALES[-1]
    for finest in SECOND_BRANCH_SCALES:
        for scale in (coarsest, finest):
            keys += [head_proj_key(scale, finest, cin, cout) for cin in space.cell_width_choices(scale)
                     for cout in space.head_width_choices()]
        keys += [head_fuse_key(finest, 2, width, num_classes) for width in space.head_width_choices()]
    return [key for key in dict.fromkeys(keys) if not is_identity(key)]


def keys_for_architecture(architecture, num_classes: int) -> list:
    """The entries of a derived net, one per block in network order (repeats kept, identity skips left
    out): their sum is the net's table latency. Branches are built apart (``build_searched_net``), so a
    cell two branches share counts twice, as it runs twice."""

    arch = as_architecture(architecture)
    widths = arch.stem_widths
    keys = [stem_key(1, 3, widths[0]), stem_key(2, widths[0], widths[1]), stem_key(3, widths[1], widths[2])]
    ends = []
    for b, branch in enumerate(arch.branches):
        cin = widths[2]
        for cell, stride in zip(branch, arch.strides(b)):
            keys.append(cell_key(cell.op, cell.scale, stride, cin, cell.width))
            cin = cell.width
        ends.append((branch[-1].scale, cin))
    finest = min(arch.branch_scales)
    keys += [head_proj_key(scale, finest, cin, arch.head_width) for scale, cin in ends]
    keys.append(head_fuse_key(finest, len(ends), arch.head_width, num_classes))
    return [key for key in keys if not is_identity(key)]


# --- blocks -----------------------------------------------------------------------------------------

def head_part_models(scales, cins, width: int, num_classes: int, input_size) -> tuple:
    """``head()`` built on inputs of the given scales and channels, and cut into its parts.

    Returns ``(full, projections, fuse)``: the whole head as a model, one model per branch (1x1
    conv + BN + ReLU and the resize to the finest branch) and the model from the projected branches
    to the logits (add, fuse conv, classifier, final resize). Together the parts hold every layer
    of ``full`` once.
    """

    sizes = feature_sizes(input_size)
    inputs = [keras.Input((*sizes[scale], cin), name=f"branch{i}") for i, (scale, cin) in enumerate(zip(scales, cins))]
    logits = head(inputs, tuple(scales), width, num_classes, tuple(input_size))
    full = keras.Model(inputs, logits, name="head")
    cut = full.get_layer("head_add").input if len(scales) == 2 else [full.get_layer("head_fuse_conv").input]
    projections = [keras.Model(x, y, name=f"head_proj{i}") for i, (x, y) in enumerate(zip(inputs, cut))]
    return full, projections, keras.Model(cut, logits, name="head_fuse")


def block_model(key: str, input_size):
    """The block of ``key`` alone, as a tf_keras model with the input shape it has in a net of
    ``input_size`` (height, width), built by ``tfseg.models.searched``'s builders."""

    kind, f = parse_key(key)
    input_size = check_input_size(input_size)
    sizes = {1: input_size, **feature_sizes(input_size)}
    if kind == "stem":
        stage = f["stage"]
        if stage == 1:
            inputs = image_input((*input_size, 3))
            x = normalize(inputs)
        else:
            inputs = x = keras.Input((*sizes[2 ** (stage - 1)], f["cin"]), name="image")
        return keras.Model(inputs, stem(x, (f["cout"],), (f"stem{stage}",)), name="block")
    if kind == "cell":
        if is_identity(key):
            raise ConfigError(f"latency-table key {key!r} is an identity skip: no layer to time")
        inputs = keras.Input((*sizes[f["scale"] // f["stride"]], f["cin"]), name="image")
        return keras.Model(inputs, cell_op(inputs, f["op"], f["cout"], f["stride"], name=f"cell_{f['op']}"), name="block")
    if kind == "head_proj":
        scale, to = f["scale"], f["to"]
        if scale == to == SCALES[-1]:
            scales, cins, part = (scale,), (f["cin"],), 0
        elif scale == to:
            scales, cins, part = (SCALES[-1], scale), (f["cout"], f["cin"]), 1
        else:
            scales, cins, part = (scale, to), (f["cin"], f["cout"]), 0
        return head_part_models(scales, cins, f["cout"], 1, input_size)[1][part]
    scales = (f["scale"],) if f["branches"] == 1 else (SCALES[-1], f["scale"])
    return head_part_models(scales, (f["width"],) * len(scales), f["width"], f["classes"], input_size)[2]


def _representative(model, count: int = 2, seed: int = 0):
    """Random calibration data for ``model``'s inputs (one array, or tuples for several inputs)."""

    arrays = [random_images(tuple(x.shape[1:]), count, seed + i) for i, x in enumerate(model.inputs)]
    return arrays[0] if len(arrays) == 1 else list(zip(*arrays))


def measure_blocks(keys, input_size, dtype: str = "int8", threads=(1, 2), runs: int = 20, warmup: int = 3,
                   *, build=block_model, verbose="auto") -> dict:
    """Converts every block of ``keys``, checks its XNNPACK delegation and times the ones that run as
    one partition, all in interleaved rounds per thread count.

    Args:
      keys: table keys (no identity skips).
      input_size: (height, width) of the net the blocks belong to.
      dtype: ``"int8"`` (int8 I/O, calibrated on random images) or ``"float32"``.
      threads: LiteRT thread counts.
      runs, warmup: per block and thread count (``litert_latencies``).
      build: ``build(key, input_size) -> keras.Model`` (``block_model``; tests inject others).
      verbose: progress bar: 0 none, 1 live, 2 a line at the end, "auto".

    Returns:
      ``{key: {threads: median ms}}``, or ``{key: reason}`` (a str) for a block that does not run
      as one XNNPACK partition (its operators outside are named).
    """

    if dtype not in DTYPES:
        raise ConfigError(f"latency-table dtype must be one of {DTYPES}, got {dtype!r}")
    keys = list(dict.fromkeys(keys))
    progress = keras.utils.Progbar(len(keys) + len(threads), unit_name="step", verbose=progress_verbosity(verbose))
    converted, results = {}, {}
    for key in keys:
        model = build(key, input_size)
        if dtype == "int8":
            flatbuffer = to_tflite_bytes(model, "int8", _representative(model), io_dtype="int8")
        else:
            flatbuffer = to_tflite_bytes(model)
        report = delegation(flatbuffer)
        if report["single_partition"]:
            converted[key] = flatbuffer
        else:
            results[key] = f"not one XNNPACK partition (partitions: {summary(report)})"
        progress.add(1)
    for count in threads:
        stats = litert_latencies(converted, count, runs, warmup) if converted else {}
        for key in converted:
            results.setdefault(key, {})[int(count)] = stats[key]["median_ms"]
        progress.add(1)
    return results


# --- the table --------------------------------------------------------------------------------------

def installed_runtime_version():
    """The installed ai-edge-litert version, or None."""
    try:
        return importlib.metadata.version(RUNTIME)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """``{"cpu": model name, "cores": count}`` of this machine."""
    cpu = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count()}


def _size_text(size) -> str:
    return "x".join(str(int(side)) for side in size)


class LatencyTable:
    """Block latencies in ms at one input size, dtype and set of thread counts, measured on one machine.

    Args:
      input_size: (height, width) of the nets the blocks belong to (the deployment size).
      num_classes: the classifier's classes (recorded; ``head_fuse`` keys carry theirs).
      dtype: ``"int8"`` or ``"float32"``.
      threads: thread counts every entry is timed at.
      space: the SearchSpace the table is for (recorded, and what the fill command uses).
      path: where ``save()`` writes (and ``ensure`` saves after measuring).
      read_only: missing entries are a ConfigError instead of being measured.
      measure: ``measure(keys) -> {key: {threads: ms} or reason str}``; by default ``measure_blocks``
        at this table's size, dtype and threads (tests inject fakes).
      runs, warmup: per block and thread count when timing.
      verbose: the progress bar of ``measure_blocks`` (0, 1, 2 or "auto": live on a terminal).
      fill_command: the shell command to quote when a read-only table lacks entries (default:
        ``tfseg latency-table PATH ...``).
    """

    def __init__(self, input_size, num_classes: int, dtype: str = "int8", threads=(1, 2), *, space=None, path=None,
                 read_only: bool = False, measure=None, runs: int = 20, warmup: int = 3, verbose="auto",
                 fill_command: str | None = None):
        if dtype not in DTYPES:
            raise ConfigError(f"latency-table dtype must be one of {DTYPES}, got {dtype!r}")
        threads = tuple(sorted({int(t) for t in threads}))
        if not threads or threads[0] < 1:
            raise ConfigError(f"latency-table thread counts must be >= 1, got {list(threads)}")
        self.meta = {"input_size": list(check_input_size(input_size)), "dtype": dtype, "threads": list(threads),
                     "num_classes": int(num_classes), "runs": int(runs), "warmup": int(warmup),
                     "runtime": {"name": RUNTIME, "version": installed_runtime_version()}, "machine": machine_info(),
                     "date": _now(), "space": space.to_dict() if space is not None else None, "corrections": {}}
        self.entries = {}
        self.path = Path(path) if path is not None else None
        self.read_only = read_only
        self.verbose = verbose
        self.fill_command = fill_command
        self._measure = measure

    # properties of the measurement
    @property
    def input_size(self) -> tuple:
        return tuple(self.meta["input_size"])

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]

    @property
    def threads(self) -> tuple:
        return tuple(self.meta["threads"])

    @property
    def source(self) -> str:
        return f"latency table {self.path}" if self.path else "latency table (not saved)"

    def to_dict(self) -> dict:
        return {"format": FORMAT, "meta": self.meta, "entries": self.entries}

    def save(self, path=None) -> Path:
        """Writes the JSON whole, then renames it into place (never half-written)."""
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ConfigError("latency table: no path to save to")
        document = json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n"
        atomic_write(path, lambda tmp: Path(tmp).write_text(document))
        self.path = path
        return path

    @classmethod
    def load(cls, path, *, read_only: bool = False, measure=None, verbose="auto", fill_command=None) -> "LatencyTable":
        """Reads a table ``save`` wrote; errors name the file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"latency table {path} does not exist (build it with: {FILL_MODULE} {shlex.quote(str(path))} "
                              "--input-size HxW --num-classes N)")
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"latency table {path}: not JSON ({error})") from error
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            found = document.get("format") if isinstance(document, dict) else type(document).__name__
            raise ConfigError(f"latency table {path}: not a tfseg latency table (format {found!r}, expected {FORMAT!r})")
        try:
            meta = document["meta"]
            table = cls(meta["input_size"], meta["num_classes"], meta["dtype"], meta["threads"], path=path,
                        read_only=read_only, measure=measure, runs=meta["runs"], warmup=meta["warmup"], verbose=verbose,
                        fill_command=fill_command)
            table.meta.update(meta)
            table.meta.setdefault("corrections", {})
            table.entries = dict(document["entries"])
        except ConfigError as error:
            raise ConfigError(f"latency table {path}: {error}") from error
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"latency table {path}: malformed ({type(error).__name__}: {error})") from error
        return table

    def check_compatible(self, input_size, dtype: str = "int8", runtime_version=None, num_classes=None, space=None,
                         threads=None) -> list:
        """Raises a ConfigError naming the file when the table was measured at another input size,
        dtype or runtime version than the search deploys with (``runtime_version`` None: the installed
        one), or lacks a thread count. With ``space`` and ``num_classes``, returns the entries a search
        over it still needs (measured by ``ensure``), or raises if the table is read-only."""
        wanted_version = runtime_version if runtime_version is not None else installed_runtime_version()
        have = (self.input_size, self.dtype, self.meta["runtime"].get("version"))
        want = (tuple(check_input_size(input_size)), dtype, wanted_version)
        if have[:2] != want[:2] or (want[2] is not None and have[2] != want[2]):
            raise ConfigError(f"{self.source}: measured at {_size_text(have[0])} {have[1]} on {RUNTIME} {have[2]}; this search deploys at "
                              f"{_size_text(want[0])} {want[1]} on {want[2] or have[2]}. Measure a table for it: "
                              f"{FILL_MODULE} NEW_TABLE.json --input-size {_size_text(want[0])} --dtype {want[1]} "
                              "--num-classes N")
        missing_threads = sorted(set(threads or ()) - set(self.threads))
        if missing_threads:
            raise ConfigError(f"{self.source}: timed at {list(self.threads)} threads, not at {missing_threads}")
        if space is None:
            return []
        keys = keys_for_space(space, num_classes if num_classes is not None else self.meta["num_classes"])
        missing = self.missing(keys)
        if missing and self.read_only:
            self._raise_missing(missing, _space_args(space, num_classes))
        return missing

    def missing(self, keys) -> list:
        """The keys of ``keys`` without an entry (identity skips never need one)."""
        return [key for key in dict.fromkeys(keys) if key not in self.entries and not is_identity(key)]

    def _raise_missing(self, missing, fill_args=None):
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        if self.fill_command:
            command = self.fill_command
        else:
            args = fill_args if fill_args is not None else [arg for key in missing for arg in ("--key", key)]
            command = " ".join([FILL_MODULE, shlex.quote(str(self.path or "TABLE.json")), *map(shlex.quote, args)])
        raise ConfigError(f"{self.source} is read-only and has no entry for {len(missing)} block(s): {shown}. "
                          f"Fill it with: {command}")

    def ensure(self, keys, fill_args=None) -> None:
        """Measures every missing entry of ``keys`` in one batch (then saves, when the table has a path).

        Raises:
          ConfigError: the table is read-only (the message names the missing entries and the command
            that fills them; ``fill_args`` are that command's arguments after the path), or this
            machine / runtime is not the one the table was measured on.
        """
        missing = self.missing(keys)  # parses (validates) every key
        if not missing:
            return
        if self.read_only:
            self._raise_missing(missing, fill_args)
        measure = self._measure
        if measure is None:
            here = {"runtime": installed_runtime_version(), "cpu": machine_info()["cpu"]}
            there = {"runtime": self.meta["runtime"].get("version"), "cpu": self.meta["machine"].get("cpu")}
            if here != there:
                raise ConfigError(f"{self.source} was measured with {RUNTIME} {there['runtime']} on {there['cpu']!r}; "
                                  f"entries measured here ({here['runtime']} on {here['cpu']!r}) would not fit it: "
                                  "measure a new table on this machine, or fill this one where it was measured")

            def measure(batch):
                return measure_blocks(batch, self.input_size, self.dtype, self.threads, self.meta["runs"],
                                      self.meta["warmup"], verbose=self.verbose)
        results = measure(missing)
        for key in missing:
            if key not in results:
                raise ConfigError(f"{self.source}: the measurement returned nothing for block {key}")
            value = results[key]
            if isinstance(value, str):
                self.entries[key] = {"rejected": value}
                continue
            times = {int(t): float(ms) for t, ms in value.items()}
            if not set(self.threads) <= set(times) or any(ms < 0 for ms in times.values()):
                raise ConfigError(f"{self.source}: block {key} measured at {sorted(times)} threads "
                                  f"(needs {list(self.threads)}), or a negative time")
            self.entries[key] = {"ms": {str(t): times[t] for t in self.threads}}
        self.meta["updated"] = _now()
        if self.path is not None:
            self.save()

    def lookup(self, key: str, threads: int = 1) -> float:
        """The block's median latency in ms at ``threads`` (measured now if missing and writable).

        Raises:
          ConfigError: a malformed key, a thread count the table lacks, a read-only table without the
            entry, or a block that was rejected (it does not run as one XNNPACK partition).
        """
        if is_identity(key):
            return 0.0
        if int(threads) not in self.threads:
            raise ConfigError(f"{self.source}: timed at {list(self.threads)} threads, not at {threads}")
        if key not in self.entries:
            self.ensure([key])
        entry = self.entries[key]
        if "rejected" in entry:
            raise ConfigError(f"{self.source}: block {key} is rejected: {entry['rejected']}; it would split the "
                              "deployed graph, so its latency cannot be predicted from the table (remove its op "
                              "or width from the search space)")
        return float(entry["ms"][str(int(threads))])

    def rejected(self) -> dict:
        """``{key: reason}`` of the blocks that do not run as one XNNPACK partition."""
        return {key: entry["rejected"] for key, entry in self.entries.items() if "rejected" in entry}

    def set_correction(self, threads: int, record: dict) -> None:
        """Stores a whole-net correction fit (``LatencyModel.fit_correction``) and saves when possible."""
        self.meta.setdefault("corrections", {})[str(int(threads))] = record
        if self.path is not None and not self.read_only:
            self.save()

    def correction(self, threads: int = 1):
        """The stored correction record at ``threads``, or None."""
        return self.meta.get("corrections", {}).get(str(int(threads)))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _space_args(space, num_classes) -> list:
    args = ["--space", json.dumps(space.to_dict(), separators=(",", ":"))]
    return args + (["--num-classes", str(num_classes)] if num_classes is not None else [])


__all__ = ["DTYPES", "FORMAT", "LatencyTable", "block_model", "cell_key", "head_fuse_key", "head_part_models",
           "head_proj_key", "installed_runtime_version", "is_identity", "keys_for_architecture", "keys_for_space",
           "machine_info", "measure_blocks", "parse_key", "stem_key"]

