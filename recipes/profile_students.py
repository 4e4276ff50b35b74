"""Where the zoo's students spend their LiteRT time: a per-block profile, float32 vs int8, against
the machine's MAC-bound limit.

For each student (default: fastseg_tiny, mobilenet_v2_lraspp and mobilenet_v2_deeplabv3plus with
--alpha 0.35, at 360x480x3 with 11 classes and random weights: the time does not depend on them)
and each trained run given with --run (its best.keras at the run's evaluation size), at each
--threads count:

- LiteRT's own per-operator profiler (``tfseg.latency_profile.profile_layers``), its times summed
  per block of Keras layers, for float32 and for int8 (post-training full integer with uint8 I/O as
  tfseg exports it, calibrated on --calibration random images): ms, share, MACs and GMAC/s of each
  block, and the rows ``[input]``/``[output]`` for the uint8 <-> int8 conversions;
- the MAC-bound limit (``litert_peak``: dense 1x1 and 3x3 convolutions, and a depthwise 3x3, which
  is memory-bound) and each model's latency as a multiple of its MAC-bound time, MACs / peak.

It prints Markdown tables and writes, under --out (default runs/profile_students), ``profile.md``
(the tables under a header recording the machine, date, versions, load and command),
``profile.json`` and ``<model>.png`` (float32 vs int8 ms per block, at the first thread count).
On a machine busy with other jobs the times are noisy: the per-operator medians resist
preemption better than the whole-model median (the gap between "whole" and "sum" shows it).

    python recipes/profile_students.py
    python recipes/profile_students.py --threads 1,2 --runs 30
    python recipes/profile_students.py --models none --run runs/camvid/student-kd
    python recipes/profile_students.py --method prefix      # timing prefix sub-models instead
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import sys
from pathlib import Path

from tfseg.options import size as parse_size

DEFAULT_MODELS = "fastseg_tiny,mobilenet_v2_lraspp,mobilenet_v2_deeplabv3plus"
QUANTIZATIONS = ("float32", "int8")


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated zoo names, or 'none'")
    parser.add_argument("--alpha", type=float, default=0.35, help="width of the mobilenet_v2_* students")
    parser.add_argument("--run", action="append", default=[], help="a trained run directory to profile too (repeatable)")
    parser.add_argument("--size", type=parse_size, default=(360, 480), help="HxW of the zoo models (default 360x480)")
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--threads", type=lambda t: [int(n) for n in t.split(",")], default=[1],
                        help="comma-separated thread counts (default 1; 1,2 adds two threads)")
    parser.add_argument("--runs", type=int, default=20, help="profiled invocations per configuration")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cut", default="blocks", help="blocks, live or layers (see tfseg.latency_profile.segments)")
    parser.add_argument("--method", default="profiler", choices=("profiler", "prefix"))
    parser.add_argument("--calibration", type=int, default=4, help="random images for int8 calibration")
    parser.add_argument("--io-dtype", default="uint8", choices=("uint8", "int8", "float32"))
    parser.add_argument("--no-peak", action="store_true", help="skip the MAC-bound measurement")
    parser.add_argument("--out", type=Path, default=Path("runs/profile_students"))
    return parser


def student_models(args) -> list:
    """(label, function building the model) for each --models name and each --run."""
    from tfseg import models
    from tfseg.runs import Run

    shape = (*args.size, 3)
    entries = []
    for name in [] if args.models == "none" else args.models.split(","):
        options = {"alpha": args.alpha} if name.startswith("mobilenet") else {}
        label = f"{name} (alpha {args.alpha})" if options else name
        entries.append((label, lambda name=name, options=options: models.build(name, shape, args.classes, **options)))
    for path in args.run:
        run = Run.open(path)
        entries.append((f"{Path(path).name} ({run.model_name}, run)", lambda run=run: run.model("best", size=run.eval_size)))
    return entries


def profile_model(label: str, model, args, peaks: dict) -> tuple[list[dict], list[str]]:
    """The profiles of one model (per thread count and quantization) and their Markdown sections."""
    from tfseg.latency_profile import format_layer_profile, profile_layers
    from tfseg.tflite import random_images

    calibration = random_images(tuple(model.inputs[0].shape[1:]), args.calibration)
    results, sections = [], []
    for threads in args.threads:
        side_by_side, errors = [], []
        for quantization in QUANTIZATIONS:
            try:
                result = profile_layers(model, quantization, calibration, threads, args.runs, args.warmup, args.cut,
                                        method=args.method, io_dtype=args.io_dtype,
                                        peak_gmacs=peaks.get(quantization, {}).get(threads))
            except Exception as err:  # noqa: BLE001 - one failing conversion must not stop the others
                errors.append(f"{quantization}: {type(err).__name__}: {err}")
                continue
            result["label"] = label
            side_by_side.append(result)
        results.extend(side_by_side)
        body = format_layer_profile(*side_by_side) if side_by_side else ""
        sections.append(f"## {label}, {threads} thread{'s' if threads > 1 else ''}\n\n{body}"
                        + "".join(f"\n- failed: {error}\n" for error in errors))
        print(sections[-1], flush=True)
    return results, sections


def plot(label: str, results: list[dict], threads: int, out: Path) -> Path | None:
    from tfseg.report import plot_grouped_bars

    chosen = [r for r in results if r["num_threads"] == threads]
    if not chosen:
        return None
    names = list(dict.fromkeys(row["segment"] for r in chosen for row in r["rows"]))
    series = {r["quantization"]: [next((row["ms"] for row in r["rows"] if row["segment"] == name), None)
                                  for name in names] for r in chosen}
    stem = label.split(" ")[0]
    return plot_grouped_bars(names, series, out / f"{stem}.png", xlabel="LiteRT ms per block (median)",
                             title=f"{label}: {threads} thread{'s' if threads > 1 else ''}, {chosen[0]['method']}")


def summary_table(results: list[dict]) -> str:
    lines = ["| model | quantization | threads | GMACs | whole ms | sum ms | GMAC/s | peak GMAC/s | MAC-bound ms "
             "| latency / MAC-bound |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def cell(value, fmt="{:.2f}"):
        return "–" if value is None else fmt.format(value)

    for r in results:
        lines.append(f"| {r['label']} | {r['quantization']} | {r['num_threads']} | {r['macs'] / 1e9:.3f} | "
                     f"{r['total_ms']:.2f} | {r['sum_ms']:.2f} | {cell(r['gmacs_per_s'], '{:.1f}')} | "
                     f"{cell(r['peak_gmacs'], '{:.1f}')} | {cell(r['mac_bound_ms'])} | {cell(r['ratio'], '{:.1f}x')} |")
    return "\n".join(lines) + "\n"


def header(args, argv, load_before: float, load_after: float) -> str:
    from importlib.metadata import distributions

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling recipe, also when imported by path
    from model_table import cpu_name

    found = {d.metadata["Name"].lower(): d.version for d in distributions()}
    versions = ", ".join(f"{name} {found.get(name, 'not installed')}" for name in ("tensorflow", "ai-edge-litert"))
    command = "python recipes/profile_students.py" + (" " + shlex.join(argv) if argv else "")
    machine = f"{platform.machine()}, {cpu_name()}, {os.cpu_count()} CPUs"
    paragraphs = [
        f"# Where the students spend their LiteRT time ({args.size[0]}x{args.size[1]})",
        f"Measured {datetime.date.today().isoformat()} on {machine}; {versions}; load average (1 min) "
        f"{load_before:.2f} before, {load_after:.2f} after.",
        f"Command: `{command}`",
        f"Method: {args.method} (`tfseg.latency_profile`), cut {args.cut!r}; medians of {args.runs} runs after "
        f"{args.warmup} warm-up runs. int8: post-training full integer, {args.io_dtype} I/O, calibrated on "
        f"{args.calibration} random images. \"whole\": the model's median invocation; \"sum\": the rows' sum "
        "(the profiler's per-operator medians). MAC-bound: MACs / the best dense-convolution GMAC/s below.",
    ]
    return "\n\n".join(paragraphs) + "\n\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = argument_parser().parse_args(argv)

    from tfseg._keras import keras  # after parsing, so that --help does not wait for TensorFlow
    from tfseg.litert_peak import format_peak, litert_peak, peak_gmacs

    args.out.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    peak_rows = [] if args.no_peak else litert_peak(args.threads, args.runs, args.warmup)
    peaks = peak_gmacs(peak_rows)
    sections = ["## MAC-bound limit\n\n" + format_peak(peak_rows)] if peak_rows else []
    print(sections[0] if sections else "", flush=True)
    results, figures = [], []
    for label, build in student_models(args):
        model = build()
        found, text = profile_model(label, model, args, peaks)
        results.extend(found)
        sections.extend(text)
        figure = plot(label, found, args.threads[0], args.out)
        figures.extend([str(figure)] if figure else [])
        model = None  # drop the graph before clear_session
        keras.backend.clear_session()
        gc.collect()
    summary = "## Summary\n\n" + summary_table(results)
    print(summary)
    text = header(args, argv, load_before, os.getloadavg()[0]) + "\n".join([summary] + sections)
    (args.out / "profile.md").write_text(text)
    (args.out / "profile.json").write_text(json.dumps({"peak": peak_rows, "profiles": results, "figures": figures},
                                                      indent=1, default=str))
    print(f"wrote {args.out / 'profile.md'}, {args.out / 'profile.json'} and {len(figures)} figures", file=sys.stderr)


if __name__ == "__main__":
    main()
