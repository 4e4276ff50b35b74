"""Which layers does each distillation loss pull on, and how hard against the ground-truth loss?

Builds the Distiller of an ablation variant (teacher run, fresh or trained student), runs
``Distiller.gradient_norms`` on a few training batches and prints, per term, the global gradient
norm and the layers where the term's gradient is largest relative to the student loss's. This is
how the CamVid pair-wise collapse was found (docs/benchmarks.md): with MobileNetV2's signed
``features`` as the teacher tap, the pair-wise gradient on the student's stride-16 batch-norm
offsets was 3-14x the cross entropy's.

    python recipes/distill_gradients.py --variant pairwise_kd:teacher_endpoint=decoder,student_endpoint=decoder
    python recipes/distill_gradients.py --variant pixel_kd --student-run runs/camvid/students/pixel_kd
"""

from __future__ import annotations

import argparse

import numpy as np

from tfseg.options import size as parse_size
from tfseg.options import variant_specs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="runs/camvid/teacher")
    parser.add_argument("--variant", required=True, help="losses joined by '+', as in recipes/distill_camvid.py")
    parser.add_argument("--student", default="fastseg_tiny", help="zoo model of a fresh student")
    parser.add_argument("--student-run", help="use this run's best student instead of a fresh one")
    parser.add_argument("--camvid", help="CamVid folder (default $TFSEG_CAMVID_DIR or ../shared/data/camvid)")
    parser.add_argument("--crop", type=parse_size, default=(288, 384))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--top", type=int, default=5, help="layers listed per term")
    args = parser.parse_args(argv)

    from tfseg import data as seg_data
    from tfseg import models
    from tfseg.distill import Distiller
    from tfseg.distill.losses import make_distillation_loss
    from tfseg.runs import Run

    losses = [make_distillation_loss(spec) for spec in variant_specs(args.variant)]
    teacher_run = Run.open(args.teacher)
    teacher = teacher_run.model(size=args.crop)
    if args.student_run:
        student = Run.open(args.student_run).model(size=args.crop)
    else:
        student = models.build(args.student, (*args.crop, 3), teacher_run.num_classes)
    distiller = Distiller(teacher, student, losses)
    distiller.compile()
    split = seg_data.load("camvid", "train", **({"root": args.camvid} if args.camvid else {}))
    batches = seg_data.train_pipeline(split, args.crop, args.batch_size, augment=None, seed=0).take(args.batches)
    runs = [distiller.gradient_norms(images, labels) for images, labels in batches]
    report(average(runs), args.top)


def average(runs: list[dict]) -> dict:
    """The mean over batches of each term's per-variable gradient norms."""
    return {term: {name: float(np.mean([run[term][name] for run in runs])) for name in runs[0][term]}
            for term in runs[0]}


def report(norms: dict, top: int) -> None:
    base = norms["student_loss"]
    for term, per_variable in norms.items():
        total = float(np.sqrt(sum(value ** 2 for value in per_variable.values())))
        print(f"{term}: gradient norm {total:.4f}")
        if term == "student_loss" or not any(base.values()):
            continue
        ratios = sorted(((value / base[name], name) for name, value in per_variable.items() if base[name] > 0),
                        reverse=True)[:top]
        for ratio, name in ratios:
            print(f"    {ratio:6.2f} x student loss   {name}")


if __name__ == "__main__":
    main()
