"""Float vs. post-training int8 vs. quantization-aware int8 on CamVid, measured on LiteRT.

For the teacher (``runs/camvid/teacher``) and the distilled student (--student: default
``runs/camvid/student-kd`` as in the README's ``tfseg distill`` example; the distillation ablation,
``recipes/distill_camvid.py``, writes ``runs/camvid/students/<variant>``: pass the best one), at
360x480 (the runs' evaluation size):

- **float**: the trained model as float32 TFLite;
- **PTQ int8**: full-integer int8 (uint8 in and out) calibrated on 100 random training images;
- **QAT int8**: the model made quantization-aware (``tfseg.quantize.quantize_aware``, activation
  ranges started from 32 training images), fine-tuned a few epochs on CamVid train with the
  run's loss, then converted from its own ranges;
- **QKD int8** (student only): the same fine-tuning inside a ``Distiller`` with the teacher
  (quantization-aware knowledge distillation, pixel KD).

Each TFLite file is scored on the test split **in LiteRT** (``tfseg.export.verify``: images
resized to 360x480, logits resized to the labels, mIoU at full label resolution) and checked
against its own Keras model (argmax agreement); file sizes and LiteRT latency at 1 and 2
threads (median of --runs ``invoke()`` calls) complete the row. The goals of the issue are
checked per row: PTQ int8 within 1.0 mIoU of float, QAT within 0.5, int8 files at most 0.3x the
float size.

Everything lands in --out (default ``runs/camvid/quantization``): the ``.tflite`` files with
their ``.json`` sidecars, the QAT run directories (``teacher-qat``, ``student-qat``,
``student-qkd``; a finished one is reused unless --retrain), ``results.json`` and ``table.md``
(the table under a header recording machine, date, versions, load and command).

    python recipes/quantize_camvid.py                                   # ~3-4 h on 2 cores (QAT at 360x480)
    python recipes/quantize_camvid.py --qat-epochs 5 --qat-lr 5e-5
    python recipes/quantize_camvid.py --no-student                      # the teacher only
    # a functional check on a tiny synthetic run (not CamVid):
    tfseg train --model unet_small --epochs 1 --out /tmp/r
    python recipes/quantize_camvid.py --teacher /tmp/r --no-student --size 96x96 --out /tmp/rq \\
        --qat-epochs 1 --calibration-images 16 --runs 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from tfseg.options import size as parse_size

DEFAULT_TEACHER = "runs/camvid/teacher"
DEFAULT_STUDENT = "runs/camvid/student-kd"
DEFAULT_OUT = "runs/camvid/quantization"
# The goals of the quantization issue, in mIoU points and file-size ratio.
PTQ_MAX_DROP = 1.0
QAT_MAX_DROP = 0.5
INT8_MAX_SIZE_RATIO = 0.3


def qat_model(role: str, run: str, args, teacher_run: str | None = None):
    """Fine-tunes (or reuses) the quantization-aware copy of ``run``; returns the best QAT model."""
    from tfseg.pipeline import quantize
    from tfseg.pipeline.quantize import QATConfig
    from tfseg.runs import Run

    name = f"{role}-{'qkd' if teacher_run else 'qat'}"
    out = Path(args.out) / name
    if (out / "last.h5").exists() and not args.retrain:
        print(f"{name}: reusing the finished run in {out}", file=sys.stderr)
        return Run.open(out).model("best")
    config = QATConfig(run_dir=run, out_dir=str(out), epochs=args.qat_epochs, learning_rate=args.qat_lr,
                       batch_size=args.qat_batch_size, image_size=args.size, teacher_run=teacher_run,
                       calibration_images=args.qat_calibration_images, freeze_batch_norm=args.qat_freeze_bn,
                       seed=args.seed)
    start = time.time()
    qat = quantize.run(config, verbose=2)
    model, scores = qat.model(size=qat.eval_size), qat.scores(qat.record.get("val_split", "val"))
    print(f"{name}: fine-tuned in {time.time() - start:.0f} s, val mIoU {100 * scores['miou']:.2f}", file=sys.stderr)
    return model


def measure(role, variant, keras_model, path, data, info, args) -> dict:
    """One table row: LiteRT test mIoU, agreement with its Keras model, size, latency."""
    from tfseg.export import verify
    from tfseg.tflite import litert_latency

    report = verify(keras_model, path, data, info=info, max_images=args.max_images)
    flatbuffer = Path(path).read_bytes()
    row = {
        "model": role, "variant": variant, "file": str(path), "bytes": len(flatbuffer),
        "miou_litert": report["miou_exported"], "miou_keras": report["miou_keras"],
        "agreement": report["agreement"], "num_images": report["num_images"], "collapsed": report["collapsed"],
        "per_class_iou_litert": report["per_class_iou_exported"],
    }
    for threads in args.threads:
        row[f"ms_{threads}"] = litert_latency(flatbuffer, num_threads=threads, runs=args.runs, warmup=args.warmup)["median_ms"]
    print(f"{role} {variant}: LiteRT mIoU {100 * row['miou_litert']:.2f}, agreement {100 * row['agreement']:.2f} %, "
          f"{row['bytes'] / 1e6:.2f} MB", file=sys.stderr, flush=True)
    return row


def model_rows(role: str, run: str, args, teacher_run: str | None) -> list[dict]:
    from tfseg import data as seg_data
    from tfseg.export import to_tflite
    from tfseg.quantize.ptq import representative_images
    from tfseg.runs import Run

    source = Run.open(run)
    record = source.record
    options = {"root": args.camvid} if args.camvid else record["data_options"]
    test = seg_data.load(record["dataset"], args.split, **options)
    train = seg_data.load(record["dataset"], "train", **options)
    model, info = source.model(size=args.size), source.info
    out = Path(args.out)
    common = dict(info=info, input_size=args.size, model_name=source.model_name)

    files = {"float": out / f"{role}_float32.tflite", "PTQ int8": out / f"{role}_ptq_int8.tflite"}
    to_tflite(model, files["float"], "none", **common)
    calibration = representative_images(train, args.size, args.calibration_images, seed=args.seed)
    to_tflite(model, files["PTQ int8"], "int8", representative_data=calibration, **common)
    rows = [measure(role, variant, model, path, test, info, args) for variant, path in files.items()]

    variants = [("QAT int8", None)] + ([("QKD int8", teacher_run)] if teacher_run else [])
    for variant, teacher in variants:
        qat = qat_model(role, run, args, teacher)
        path = out / f"{role}_{variant.split()[0].lower()}_int8.tflite"
        to_tflite(qat, path, "int8", **common)
        rows.append(measure(role, variant, qat, path, test, info, args))
    return rows


def check_goals(rows):
    """Adds ``drop`` (mIoU points vs. float), ``size_ratio`` and ``goal`` to each row."""
    float_rows = {row["model"]: row for row in rows if row["variant"] == "float"}
    for row in rows:
        reference = float_rows[row["model"]]
        row["drop"] = 100 * (reference["miou_litert"] - row["miou_litert"])
        row["size_ratio"] = row["bytes"] / reference["bytes"]
        if row["variant"] == "float":
            row["goal"] = ""
            continue
        limit = PTQ_MAX_DROP if row["variant"].startswith("PTQ") else QAT_MAX_DROP
        met = row["drop"] <= limit and row["size_ratio"] <= INT8_MAX_SIZE_RATIO
        row["goal"] = f"{'met' if met else 'MISSED'} (≤ {limit} mIoU, ≤ {INT8_MAX_SIZE_RATIO}x size)"


def markdown_table(rows, threads) -> str:
    header = ["model", "variant", "test mIoU (LiteRT)", "Δ vs float", "agreement with Keras", "file (MB)",
              "vs float size"] + [f"ms, {n} thread{'s' if n > 1 else ''}" for n in threads] + ["goal"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 3) + "---|"]
    for row in rows:
        cells = [row["model"], row["variant"], f"{100 * row['miou_litert']:.2f}",
                 "–" if row["variant"] == "float" else f"{-row['drop']:+.2f}",
                 f"{100 * row['agreement']:.2f} %" + (" (collapsed)" if row["collapsed"] else ""),
                 f"{row['bytes'] / 1e6:.2f}", f"{row['size_ratio']:.2f}x"]
        cells += [f"{row[f'ms_{n}']:.1f}" for n in threads] + [row["goal"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def header(args, argv, load_before, load_after, rows) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def installed(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "not installed"

    images = rows[0]["num_images"] if rows else 0
    return (
        f"# Quantization at {args.size[0]}x{args.size[1]}: float vs. PTQ int8 vs. QAT int8\n\n"
        f"Measured {datetime.date.today().isoformat()} on {platform.machine()}, {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}, TensorFlow {installed('tensorflow')}, tf-keras {installed('tf-keras')}, "
        f"tensorflow-model-optimization {installed('tensorflow-model-optimization')}, ai-edge-litert "
        f"{installed('ai-edge-litert')}. Load average (1 min) {load_before:.2f} before, {load_after:.2f} after.\n\n"
        f"Command: `python recipes/quantize_camvid.py{' ' + shlex.join(argv) if argv else ''}`\n\n"
        f"mIoU on the {args.split} split ({images} images) run in LiteRT at full label resolution; agreement: "
        "share of pixels where the TFLite model's argmax equals its own Keras model's. int8 models take "
        f"uint8 pixels. PTQ calibrated on {args.calibration_images} random training images; QAT/QKD "
        f"fine-tuned {args.qat_epochs} epochs (peak learning rate {args.qat_lr}, cosine). Latency: LiteRT "
        f"(XNNPACK) `invoke()`, median of {args.runs} runs after {args.warmup} warm-up runs.\n\n"
    )


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default=DEFAULT_TEACHER, help=f"teacher run (default {DEFAULT_TEACHER})")
    parser.add_argument("--student", default=DEFAULT_STUDENT, help=f"distilled student run (default {DEFAULT_STUDENT})")
    parser.add_argument("--no-student", action="store_true", help="measure the teacher only")
    parser.add_argument("--camvid", help="CamVid folder (default: the runs' data options)")
    parser.add_argument("--size", type=parse_size, default=(360, 480), help="model input HxW (default 360x480)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int, help="score at most this many images (quick runs)")
    parser.add_argument("--calibration-images", type=int, default=100, help="PTQ calibration images")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-lr", type=float, default=1e-4)
    parser.add_argument("--qat-batch-size", type=int, help="default: each run's batch size")
    parser.add_argument("--qat-calibration-images", type=int, default=32, help="images QAT ranges start from")
    parser.add_argument("--qat-freeze-bn", action="store_true", help="QAT/QKD keep the BN statistics as trained")
    parser.add_argument("--retrain", action="store_true", help="fine-tune again even if a QAT run has finished")
    parser.add_argument("--threads", type=lambda t: [int(n) for n in t.split(",")], default=[1, 2])
    parser.add_argument("--runs", type=int, default=20, help="timed LiteRT invocations per file")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    from tfseg.runs import Run

    for run in [args.teacher] + ([] if args.no_student else [args.student]):
        Run.open(run)  # fail now, not after hours of teacher fine-tuning
    Path(args.out).mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    rows = model_rows("teacher", args.teacher, args, None)
    if not args.no_student:
        rows += model_rows("student", args.student, args, args.teacher)
    check_goals(rows)
    table = markdown_table(rows, args.threads)
    print(table, end="")
    text = header(args, argv, load_before, os.getloadavg()[0], rows) + table
    (Path(args.out) / "table.md").write_text(text)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out}/table.md and results.json", file=sys.stderr)


if __name__ == "__main__":
    main()
