"""The model zoo at CamVid size: parameters, MACs, TFLite sizes and LiteRT latency per model.

Every registered model (or those named with --models) is built at 360x480 with 11 classes and
random weights (cost does not depend on the weights), then:

- parameters and MACs per image (``tfseg.models.profiling``: counted layer by layer, BN folded);
- float32 and full-int8 TFLite sizes at batch 1 (int8 calibrated on random images: the size is
  right, the quantization ranges are not, so this is no accuracy figure);
- LiteRT (ai-edge-litert, XNNPACK) latency of the float model at 1 and 2 threads: the median of
  --runs invocations after --warmup, on random input (``--int8-latency`` adds the int8 model).

It prints a Markdown table and, with --out, writes it under a header that records the machine,
the date, the library versions, the load average and the command. On a machine shared with
other jobs latencies are noisy: compare the load averages, rerun with more --runs.

    python recipes/model_table.py                                      # every model
    python recipes/model_table.py --models unet_small,fastseg_tiny --runs 20
    python recipes/model_table.py --out docs/models.md --int8-latency
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import shlex
import sys
import time

from tfseg.options import size as parse_size


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(name: str, args) -> dict:
    """One table row; a step that fails leaves its cells empty and its error in ``errors``."""
    from tfseg import models
    from tfseg._keras import keras
    from tfseg.models.profiling import profile
    from tfseg.tflite import litert_latency, random_images, to_tflite_bytes

    shape = (*args.size, 3)
    row = {"model": name, "errors": []}

    def step(label, function):
        try:
            return function()
        except Exception as err:  # noqa: BLE001 - one failing model or step must not stop the table
            row["errors"].append(f"{label}: {type(err).__name__}: {err}")
            return None

    start = time.perf_counter()
    model = step("build", lambda: models.build(name, shape, args.classes))
    if model is not None:
        row["task"] = "classification" if len(model.output_shape) == 2 else "segmentation"
        result = step("profile", lambda: profile(model, tflite=False))
        if result:
            row.update(params=result["params"], macs=result["macs"], uncounted=result["uncounted"])
        tflite = {"float32": step("float32 TFLite", lambda: to_tflite_bytes(model))}
        calibration = random_images(shape, count=args.calibration)
        tflite["int8"] = step("int8 TFLite", lambda: to_tflite_bytes(model, "int8", calibration))
        for kind, data in tflite.items():
            row[f"{kind}_bytes"] = len(data) if data else None
            if data and (kind == "float32" or args.int8_latency):
                for threads in args.threads:
                    stats = step(
                        f"{kind} latency ({threads} threads)",
                        lambda: litert_latency(data, num_threads=threads, runs=args.runs, warmup=args.warmup),
                    )
                    row[f"{kind}_ms_{threads}"] = stats["median_ms"] if stats else None
    model = None  # drop the graph before clear_session
    keras.backend.clear_session()
    gc.collect()
    row["seconds"] = time.perf_counter() - start
    return row


def _cell(value, fmt) -> str:
    return "–" if value is None else fmt.format(value)


def markdown_table(rows, args) -> str:
    kinds = ["float32", "int8"] if args.int8_latency else ["float32"]
    latency_columns = [(kind, threads) for kind in kinds for threads in args.threads]
    header = ["model", "task", "params (M)", "GMACs", "float32 TFLite (MB)", "int8 TFLite (MB)"] + [
        f"{kind} ms, {threads} thread{'s' if threads > 1 else ''}" for kind, threads in latency_columns
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    notes = []
    for row in rows:
        macs = row.get("macs")
        gmacs = _cell(None if macs is None else macs / 1e9, "{:.2f}") + ("*" if row.get("uncounted") else "")
        cells = [
            row["model"] + (f" [{len(notes) + 1}]" if row["errors"] else ""),
            row.get("task", "–"),
            _cell(None if row.get("params") is None else row["params"] / 1e6, "{:.2f}"),
            gmacs,
            _cell(None if row.get("float32_bytes") is None else row["float32_bytes"] / 1e6, "{:.2f}"),
            _cell(None if row.get("int8_bytes") is None else row["int8_bytes"] / 1e6, "{:.2f}"),
        ] + [_cell(row.get(f"{kind}_ms_{threads}"), "{:.1f}") for kind, threads in latency_columns]
        lines.append("| " + " | ".join(cells) + " |")
        if row["errors"]:
            notes.append("; ".join(row["errors"]))
    lines += [""] + [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    if any(row.get("uncounted") for row in rows):
        lines.append("\\* some layers have no MAC rule and are not counted (see tfseg.models.profiling)")
    return "\n".join(lines).rstrip() + "\n"


def header(args, argv, load_before, load_after) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def installed(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    command = "python recipes/model_table.py" + (" " + shlex.join(argv) if argv else "")
    return (
        f"# Model zoo at {args.size[0]}x{args.size[1]}, {args.classes} classes\n\n"
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, {cpu_name()}, "
        f"{os.cpu_count()} CPUs; Python {platform.python_version()}, TensorFlow {installed('tensorflow')}, "
        f"tf-keras {installed('tf-keras')}, ai-edge-litert {installed('ai-edge-litert')}. "
        f"Load average (1 min) {load_before:.2f} before, {load_after:.2f} after.\n\n"
        f"Command: `{command}`\n\n"
        "Parameters and MACs per image from `tfseg.models.profiling` (multiply-accumulates of conv and "
        "dense layers; batch norm folded, so 0). TFLite: batch 1; int8 is full-integer "
        f"(`TFLITE_BUILTINS_INT8`, int8 input/output) calibrated on {args.calibration} random images, "
        "which gives the right size but not a meaningful accuracy. Latency: LiteRT (XNNPACK) "
        f"`invoke()` on random input, median of {args.runs} runs after {args.warmup} warm-up runs, "
        "random weights.\n\n"
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated names (default: every registered model)")
    parser.add_argument("--size", type=parse_size, default=(360, 480), help="HxW (default 360x480)")
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--runs", type=int, default=10, help="timed LiteRT invocations per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=lambda t: [int(n) for n in t.split(",")], default=[1, 2],
                        help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--calibration", type=int, default=8, help="random images for int8 calibration")
    parser.add_argument("--int8-latency", action="store_true", help="also time the int8 models")
    parser.add_argument("--out", default=None, help="also write the table with its header here (e.g. docs/models.md)")
    args = parser.parse_args(argv)
    from tfseg import models  # after parsing, so that --help does not wait for TensorFlow

    names = args.models.split(",") if args.models else models.available()
    unknown = sorted(set(names) - set(models.available()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; available: {', '.join(models.available())}")
    load_before = os.getloadavg()[0]
    rows = []
    for name in names:
        row = measure(name, args)
        rows.append(row)
        errors = f" ({'; '.join(row['errors'])})" if row["errors"] else ""
        print(f"{name}: {row['seconds']:.0f} s{errors}", file=sys.stderr, flush=True)
    table = markdown_table(rows, args)
    print(table, end="")
    if args.out:
        with open(args.out, "w") as out:
            out.write(header(args, argv, load_before, os.getloadavg()[0]) + table)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
