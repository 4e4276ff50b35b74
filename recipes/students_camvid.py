"""CamVid students under a tenth of the teacher's MACs: which path gives the best small model?

Every row trains one student with the same schedule (30 epochs of 288x384 crops, batch 8, Adam 1e-3
with poly decay, unweighted cross entropy, the teacher recipe's augmentation, precise BN before each
validation) through the same Distiller loop (rows without distillation use no distillation loss,
so the loop is not what differs), for each seed. Val picks the epoch; the table reports test mIoU
at 360x480 on the full-resolution labels, mean and sample standard deviation over the seeds.

    python recipes/students_camvid.py                               # every row, seeds 0 1 2
    python recipes/students_camvid.py --rows lraspp lraspp_cwd --seeds 0
    python recipes/students_camvid.py --table                       # only print the table so far

Finished runs are kept and killed ones resume (runs/camvid/students3/ROW/seedN). Each finished
run's figures (val curve, val and test mIoU, test per-class IoU, time) are merged into
``docs/results/camvid_students.json``, which the table is printed from, so figures survive a
machine without ``runs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from distill_camvid import EVAL_SIZE, test_miou

from tfseg.options import variant_specs

MOBILENET_035 = "../shared/weights/mobilenet_v2_0.35_224_imagenet_no_top/mobilenet_v2_0.35_224_imagenet_no_top.h5"
# CWD at the authors' T = 4 with a quarter of the default weight, so that its term (about 4 at
# weight 1 on this student) is of the order of the cross entropy (about 1): at weight 1 it
# outweighed it fivefold and the first probe lost 1.1 val mIoU. Not yet tuned on val beyond that.
CWD = "cwd:temperature=4,weight=0.25"
# Chosen on val for DeepLabV3+-lite by recipes/tune_kd_camvid.py (15-epoch screen, seed 0): T 4 at
# weight 1 gave val 61.45 against 56.32 without distillation, ahead of T 1 / weight 3 (the mmrazor
# setting) and of pixel KD at T 1 (56.81); docs/results/camvid_kd_tuning-deeplabv3plus-15ep.json.
CWD_TUNED = "cwd:temperature=4,weight=1"
ACE = "ace"
LRASPP = ("mobilenet_v2_lraspp", {"alpha": 0.35})
DEEPLABV3PLUS = ("mobilenet_v2_deeplabv3plus", {"alpha": 0.35})
# row -> (what the table calls it, zoo model, builder options, ImageNet backbone?, distillation variant)
ROWS = {
    "lraspp_scratch": ("LR-ASPP-0.35, random init", *LRASPP, False, "scratch"),
    "lraspp": ("LR-ASPP-0.35, ImageNet", *LRASPP, True, "scratch"),
    "lraspp_cwd": ("LR-ASPP-0.35, ImageNet + CWD", *LRASPP, True, CWD),
    "lraspp_ace": ("LR-ASPP-0.35, ImageNet + ACE", *LRASPP, True, ACE),
    "lraspp_cwd_ace": ("LR-ASPP-0.35, ImageNet + CWD + ACE", *LRASPP, True, f"{CWD}+{ACE}"),
    "deeplabv3plus_scratch": ("DeepLabV3+-lite-0.35, random init", *DEEPLABV3PLUS, False, "scratch"),
    "deeplabv3plus": ("DeepLabV3+-lite-0.35, ImageNet", *DEEPLABV3PLUS, True, "scratch"),
    "deeplabv3plus_cwd": ("DeepLabV3+-lite-0.35, ImageNet + CWD (T 4, weight 1, tuned on val)", *DEEPLABV3PLUS, True,
                          CWD_TUNED),
    "deeplabv3plus_ace": ("DeepLabV3+-lite-0.35, ImageNet + ACE", *DEEPLABV3PLUS, True, ACE),
    "deeplabv3plus_cwd_ace": ("DeepLabV3+-lite-0.35, ImageNet + CWD (tuned) + ACE", *DEEPLABV3PLUS, True,
                              f"{CWD_TUNED}+{ACE}"),
    "fastseg_tiny_cwd_ace": ("fastseg_tiny, random init + CWD + ACE (defaults)", "fastseg_tiny", {}, False, "cwd+ace"),
}
RESULTS = Path("docs/results/camvid_students.json")
AUGMENT = {"scale": (0.75, 1.5), "rotate_degrees": 5.0, "colour_jitter": 0.1}


def train_row(row: str, seed: int, args) -> Path:
    """Trains one row for one seed (unless finished); returns its run directory."""
    _, model, options, pretrained, variant = ROWS[row]
    out = Path(args.out) / row / f"seed{seed}"
    train_student(out, model, options, pretrained, variant, seed, args)
    return out


def train_student(out: Path, model: str, options: dict, pretrained: bool, variant: str, seed: int, args) -> None:
    """Trains one student with the table's schedule into ``out`` unless it is finished there
    (a killed run resumes). ``args`` gives weights, teacher, camvid, epochs and precise_bn."""
    from tfseg.pipeline import distill
    from tfseg.runs import Run

    if (out / "run.json").exists() and Run.open(out).finished:
        return
    options = {**options, **({"weights": args.weights} if pretrained else {})}
    config = distill.DistillConfig(
        out_dir=str(out), model=model, model_options=options, dataset="camvid",
        data_options={"root": args.camvid} if args.camvid else {},
        crop_size=(288, 384), eval_size=EVAL_SIZE, batch_size=8, epochs=args.epochs,
        loss="ce", class_weights=None, optimizer="adam", learning_rate=1e-3, schedule="poly",
        augment=AUGMENT, seed=seed, precise_bn=args.precise_bn,
        teacher_run=args.teacher, losses=variant_specs(variant),
    )
    start = time.time()
    distill.run(config, verbose=2)
    print(f"{out}: {time.time() - start:.0f} s", flush=True)


def val_curve(run_dir: Path) -> list[float]:
    """Val mIoU after each epoch, from the run's log."""
    lines = (run_dir / "log.csv").read_text().splitlines()
    column = lines[0].split(",").index("val_miou")
    return [round(float(line.split(",")[column]), 4) for line in lines[1:]]


def figures(run_dir: Path, camvid) -> dict:
    """What the table needs from a finished run."""
    from tfseg.runs import Run

    run = Run.open(run_dir)
    curve = val_curve(run_dir)
    test = test_miou(run_dir, camvid)
    return {"val_curve": curve, "val_miou": max(curve), "best_epoch": curve.index(max(curve)) + 1,
            "test_miou": test, "test_per_class_iou": run.scores("test")["per_class_iou"],
            "train_seconds": run.record.get("train_seconds"), "model_options": run.model_options,
            "losses": run.record.get("distillation_losses")}


def merge_result(row: str, seed: int, result: dict, path: Path = RESULTS) -> None:
    """Adds one run's figures to the committed results file (written whole, then renamed)."""
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault(row, {})[str(seed)] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _mean_std(values) -> str:
    if not values:
        return ""
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"  # sample std over the seeds


def _baseline_row(row: str) -> str | None:
    """The same architecture from ImageNet without distillation, which a row's gain is measured against."""
    return next((base for base in ("deeplabv3plus", "lraspp") if row.startswith(base)), None)


def print_table(teacher_miou: float, macs: dict) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    print(f"\nTeacher test mIoU {100 * teacher_miou:.2f}; test mIoU at 360x480, mean ± std over seeds\n")
    print("| row | GMACs | seeds | val mIoU | test mIoU | vs same student, ImageNet, no KD | % of teacher |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row, (title, *_rest) in ROWS.items():
        runs = results.get(row, {})
        if not runs:
            continue
        tests = [r["test_miou"] for r in runs.values()]
        base = _baseline_row(row)
        baseline = [r["test_miou"] for r in results.get(base, {}).values()]
        delta = f"{100 * (statistics.mean(tests) - statistics.mean(baseline)):+.2f}" if baseline and row != base else ""
        print(f"| {title} | {macs.get(row, float('nan')):.3f} | {','.join(sorted(runs))} | "
              f"{_mean_std([r['val_miou'] for r in runs.values()])} | {_mean_std(tests)} | {delta} | "
              f"{100 * statistics.mean(tests) / teacher_miou:.1f} |")


def row_macs() -> dict:
    from tfseg import models

    macs = {}
    for row, (_, model, options, _pretrained, _variant) in ROWS.items():
        macs[row] = models.profile(models.build(model, (*EVAL_SIZE, 3), 11, **options), tflite=False)["macs"] / 1e9
    return macs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--teacher", default="runs/camvid/teacher")
    parser.add_argument("--weights", default=MOBILENET_035, help="ImageNet MobileNetV2-0.35 no-top .h5")
    parser.add_argument("--out", default="runs/camvid/students3")
    parser.add_argument("--camvid", help="CamVid folder (default $TFSEG_CAMVID_DIR or ../shared/data/camvid)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--precise-bn", type=int, default=16, help="batches for precise BN (0: off)")
    parser.add_argument("--table", action="store_true", help="only print the table of the results so far")
    args = parser.parse_args(argv)
    if not args.table:
        for seed in args.seeds:  # seed-major: every row gets a first figure before any gets a third
            for row in args.rows:
                merge_result(row, seed, figures(train_row(row, seed, args), args.camvid))
    print_table(test_miou(Path(args.teacher), args.camvid), row_macs())


if __name__ == "__main__":
    sys.exit(main())
