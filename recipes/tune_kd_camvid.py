"""Screens distillation settings for a CamVid student on val (never test) at a short schedule.

Each variant trains the student of ``students_camvid.py`` (same crops, batch, optimiser, poly
schedule, augmentation, precise BN) for ``--epochs`` epochs, with 'scratch' (no distillation) as
the baseline at the same length. The screen reports each variant's best val mIoU and its gain
over that baseline; the settings that pay here go to the full 30-epoch, three-seed table.

    python recipes/tune_kd_camvid.py --student deeplabv3plus --epochs 15 \\
        --variants scratch cwd:temperature=4,weight=1 pixel_kd:temperature=1,alpha=0.5

Runs go to runs/camvid/kd_tuning/STUDENT-EPOCHSep/VARIANT/seedN (killed ones resume); each
finished run's val curve is merged into ``docs/results/camvid_kd_tuning-STUDENT-EPOCHSep.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

import students_camvid as table

RESULTS = Path("docs/results")
STUDENTS = {"lraspp": table.LRASPP, "deeplabv3plus": table.DEEPLABV3PLUS}


def folder_name(variant: str) -> str:
    """A variant as a directory name: 'cwd:temperature=4,weight=1' -> 'cwd-temperature4-weight1'."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "", variant.replace(":", "-").replace(",", "-").replace("=", ""))


def print_screen(key: str, runs: dict) -> None:
    base = [r["val_miou"] for r in runs.get("scratch", {}).values()]
    print(f"\n{key}: best val mIoU (mean over the seeds run), gain over no distillation\n")
    print("| variant | seeds | val mIoU | gain |")
    print("|---|---:|---:|---:|")
    for variant, seeds in runs.items():
        vals = [r["val_miou"] for r in seeds.values()]
        gain = f"{100 * (statistics.mean(vals) - statistics.mean(base)):+.2f}" if base and variant != "scratch" else ""
        print(f"| {variant} | {','.join(sorted(seeds))} | {100 * statistics.mean(vals):.2f} | {gain} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", choices=list(STUDENTS), default="deeplabv3plus")
    parser.add_argument("--variants", nargs="+", default=["scratch"],
                        help="'scratch' or losses joined by '+', each NAME[:KEY=VALUE,...]")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--teacher", default="runs/camvid/teacher")
    parser.add_argument("--weights", default=table.MOBILENET_035, help="ImageNet MobileNetV2-0.35 no-top .h5")
    parser.add_argument("--out", default="runs/camvid/kd_tuning")
    parser.add_argument("--camvid", help="CamVid folder (default $TFSEG_CAMVID_DIR or ../shared/data/camvid)")
    parser.add_argument("--precise-bn", type=int, default=16, help="batches for precise BN (0: off)")
    parser.add_argument("--table", action="store_true", help="only print the screen so far")
    args = parser.parse_args(argv)
    from tfseg.distill.losses.registry import make_distillation_loss
    from tfseg.options import variant_specs

    for variant in args.variants:  # a typo fails here, before any training
        for spec in variant_specs(variant):
            make_distillation_loss(spec)
    key = f"{args.student}-{args.epochs}ep"
    results = RESULTS / f"camvid_kd_tuning-{key}.json"
    model, options = STUDENTS[args.student]
    if not args.table:
        for seed in args.seeds:
            for variant in args.variants:
                out = Path(args.out) / key / folder_name(variant) / f"seed{seed}"
                table.train_student(out, model, options, True, variant, seed, args)
                curve = table.val_curve(out)
                result = {"val_curve": curve, "val_miou": max(curve), "best_epoch": curve.index(max(curve)) + 1}
                table.merge_result(variant, seed, result, results)
    print_screen(key, json.loads(results.read_text()) if results.exists() else {})


if __name__ == "__main__":
    sys.exit(main())
