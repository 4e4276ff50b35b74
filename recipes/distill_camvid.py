"""CamVid distillation ablation: a small student from scratch vs. with each distillation loss.

Every variant trains the same student (default ``fastseg_tiny``: 0.21 GMACs at 360x480, 1/16 of
the DeepLabV3-MobileNetV2 teacher's 3.41) with the same crops, epochs, schedule and seed, through
the same Distiller loop (``scratch`` = no distillation loss, so the loop itself is not what
differs). The epoch is selected on val mIoU at 360x480 label resolution; the table reports test
mIoU at 360x480 for the selected epoch, the change against ``scratch`` and the share of the
teacher's test mIoU. Finished variants are skipped, killed ones resume.

    python recipes/train_camvid_teacher.py                  # first: the teacher (runs/camvid/teacher)
    python recipes/distill_camvid.py                        # scratch, each loss alone, best combination
    python recipes/distill_camvid.py --variants pixel_kd+cwd pixel_kd+csc    # chosen combinations
    python recipes/distill_camvid.py --variants pixel_kd:temperature=1,alpha=0.5 --combine 0   # loss options

A variant is ``scratch`` or losses of ``tfseg.distill.losses.LOSSES`` trained together, joined by
``+``, each optionally with ``:KEY=VALUE,...`` options (``tfseg.options.variant_specs``); its
run directory is the variant with ``:`` written as ``-``. After the listed variants,
``--combine K`` (default 2) also trains the combination of the K single losses with the best
**val** mIoU (test never chooses anything).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tfseg.options import size as parse_size
from tfseg.options import variant_specs

# PairwiseKD's default taps ("features") pair MobileNetV2's signed linear bottleneck with the
# student's ReLU features, which the Distiller refuses; both heads' "decoder" outputs are post-ReLU.
PAIRWISE = "pairwise_kd:teacher_endpoint=decoder,student_endpoint=decoder"
DEFAULT_VARIANTS = ["scratch", "pixel_kd", PAIRWISE, "csc", "ace", "cwd"]
EVAL_SIZE = (360, 480)


def variant_dir(variant: str) -> str:
    return variant.replace(":", "-")


def test_miou(run_dir: Path, camvid_root=None) -> float:
    """Test mIoU at 360x480 of a run's best model (scored once, cached in eval/test/scores.json)."""
    from tfseg import data as seg_data
    from tfseg.evaluate import evaluate
    from tfseg.runs import Run

    run = Run.open(run_dir)
    cached = run.scores("test")
    if cached is not None:
        return float(cached["miou"])
    model = run.model(size=EVAL_SIZE)
    test = seg_data.load("camvid", "test", **({"root": camvid_root} if camvid_root else {}))
    return float(evaluate(model, test, image_size=EVAL_SIZE, batch_size=4, out_dir=run_dir / "eval" / "test",
                          verbose=0)["miou"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="runs/camvid/teacher")
    parser.add_argument("--student", default="fastseg_tiny")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS,
                        help=f"variants to train (default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--out", default="runs/camvid/students")
    parser.add_argument("--camvid", help="CamVid folder (default $TFSEG_CAMVID_DIR or ../shared/data/camvid)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--crop", type=parse_size, default=(288, 384))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--combine", type=int, default=2,
                        help="also train the K single losses with the best val mIoU together (0: no)")
    args = parser.parse_args(argv)
    check_variants(args)
    teacher_miou = test_miou(Path(args.teacher), args.camvid)
    rows = []
    variants = [v.strip() for v in args.variants]
    for variant in variants:
        rows.append(train_variant(variant, args))
    combination = best_combination(rows, args.combine)
    if combination and combination not in variants:
        rows.append(train_variant(combination, args))
    print_table(rows, teacher_miou, args)


def check_variants(args) -> None:
    """Builds each variant's Distiller once, so that a misspelt loss or option, or taps the
    Distiller refuses, fail now rather than after hours of training."""
    from tfseg import models
    from tfseg.distill import Distiller
    from tfseg.distill.losses import make_distillation_loss
    from tfseg.runs import Run

    losses = {variant: [make_distillation_loss(spec) for spec in variant_specs(variant)] for variant in args.variants}
    teacher_run = Run.open(args.teacher)
    teacher = teacher_run.model(size=args.crop)
    student = models.build(args.student, (*args.crop, 3), teacher_run.num_classes)
    for variant_losses in losses.values():
        Distiller(teacher, student, variant_losses)


def best_combination(rows, k: int) -> str | None:
    """The K single losses with the best val mIoU joined by '+' (None when fewer than 2 ran)."""
    singles = [r for r in rows if r["variant"] != "scratch" and "+" not in r["variant"]]
    if k < 2 or len(singles) < 2:
        return None
    chosen = sorted(singles, key=lambda r: r["val_miou"], reverse=True)[:k]
    return "+".join(r["variant"] for r in chosen)


def train_variant(variant: str, args) -> dict:
    """Trains one variant (unless finished) and returns its val/test figures."""
    from tfseg.pipeline import distill
    from tfseg.pipeline.distill import DistillConfig
    from tfseg.runs import Run

    out = Path(args.out) / variant_dir(variant)
    finished = (out / "run.json").exists() and Run.open(out).finished
    if not finished:
        config = DistillConfig(
            out_dir=str(out), model=args.student, dataset="camvid",
            data_options={"root": args.camvid} if args.camvid else {},
            crop_size=args.crop, eval_size=EVAL_SIZE, batch_size=args.batch_size, epochs=args.epochs,
            loss="ce", class_weights=None,  # ACE has no class weights: keep every variant unweighted
            optimizer="adam", learning_rate=args.learning_rate, schedule="poly",
            augment={"scale": (0.75, 1.5), "rotate_degrees": 5.0, "colour_jitter": 0.1}, seed=args.seed,
            teacher_run=args.teacher, losses=variant_specs(variant),
        )
        start = time.time()
        distill.run(config)
        print(f"{variant}: {time.time() - start:.0f} s")
    record = Run.open(out).record
    log = (out / "log.csv").read_text().splitlines()
    header = log[0].split(",")
    val = max(float(line.split(",")[header.index("val_miou")]) for line in log[1:])
    return {"variant": variant, "val_miou": val, "test_miou": test_miou(out, args.camvid),
            "train_s": record.get("train_seconds")}


def print_table(rows, teacher_miou: float, args) -> None:
    scratch = next((r["test_miou"] for r in rows if r["variant"] == "scratch"), None)
    print(f"\nTeacher ({args.teacher}) test mIoU {100 * teacher_miou:.2f}; student {args.student}, "
          f"{args.epochs} epochs, crops {args.crop[0]}x{args.crop[1]}, seed {args.seed}\n")
    print("| variant | val mIoU | test mIoU | vs scratch | % of teacher | train time (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        delta = "" if scratch is None else f"{100 * (r['test_miou'] - scratch):+.2f}"
        print(f"| {r['variant']} | {100 * r['val_miou']:.2f} | {100 * r['test_miou']:.2f} | {delta} | "
              f"{100 * r['test_miou'] / teacher_miou:.1f} | {r['train_s']} |")


if __name__ == "__main__":
    main()
