"""What does distillation cost per step beyond running the teacher and training the student?

In one process, on the same batches, it times (median over --steps, after warm-up):

- the teacher's forward pass alone (inference mode, as the Distiller runs it);
- a plain student training step (the student compiled and fitted on its own);
- a Distiller step with the given losses;

and prints ``distill / (teacher + student)``. The issue's goal is at most 1.15. Random weights
(cost does not depend on them); CamVid-like crops of random pixels.

    python recipes/bench_distill_overhead.py                        # DeepLabV3-MNv2 -> fastseg_tiny, 288x384
    python recipes/bench_distill_overhead.py --losses pixel_kd pixel_kd+cwd cwd:pool_size=1 --steps 20

Each --losses item is one Distiller: losses joined by '+', each with optional ``:KEY=VALUE,...``
options (``tfseg.options.variant_specs``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def timed_steps(step, batches, warmup: int) -> float:
    """Median seconds of ``step(batch)`` over ``batches`` after ``warmup`` calls."""
    for batch in batches[:warmup]:
        step(batch)
    times = []
    for batch in batches[warmup:]:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="deeplabv3_mobilenet_v2")
    parser.add_argument("--student", default="fastseg_tiny")
    pairwise = "pairwise_kd:teacher_endpoint=decoder,student_endpoint=decoder"  # features: signs differ
    parser.add_argument("--losses", nargs="+", default=["pixel_kd", pairwise, "csc", "ace", "cwd"],
                        help="Distillers to time, each losses of tfseg.distill.run.LOSSES joined by '+'")
    parser.add_argument("--size", default="288x384")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    import numpy as np

    from tfseg import models
    from tfseg._keras import keras, tf
    from tfseg.distill import Distiller
    from tfseg.distill.run import make_distillation_loss
    from tfseg.options import variant_specs
    from tfseg.train import compile_for_segmentation

    height, width = (int(v) for v in args.size.split("x"))
    shape = (height, width, 3)
    rng = np.random.default_rng(0)
    batches = [
        (tf.constant(rng.uniform(0, 255, (args.batch_size, *shape)).astype("float32")),
         tf.constant(rng.integers(0, args.classes, (args.batch_size, height, width)).astype("int32")))
        for _ in range(args.warmup + args.steps)
    ]
    teacher = models.build(args.teacher, shape, args.classes)
    student = models.build(args.student, shape, args.classes)

    teacher_forward = tf.function(lambda x: teacher(x, training=False))
    t_teacher = timed_steps(lambda b: teacher_forward(b[0]).numpy(), batches, args.warmup)

    def train_step(model):
        # What fit() runs per batch (one device), without its data-iterator machinery.
        step = tf.function(model.train_step)
        return lambda batch: {key: value.numpy() for key, value in step(batch).items()}

    compile_for_segmentation(student, args.classes)
    t_student = timed_steps(train_step(student), batches, args.warmup)

    results = {"teacher_forward_s": t_teacher, "student_train_step_s": t_student}
    for spec in args.losses:
        distiller = Distiller(teacher, models.build(args.student, shape, args.classes),
                              [make_distillation_loss(loss) for loss in variant_specs(spec)])
        distiller.compile(keras.optimizers.Adam(1e-3))
        t = timed_steps(train_step(distiller), batches, args.warmup)
        results[f"distill_step_s[{spec}]"] = t
        results[f"ratio[{spec}]"] = t / (t_teacher + t_student)

    print(json.dumps({k: round(v, 4) for k, v in results.items()}, indent=1))
    print(f"{args.teacher} -> {args.student}, {args.size}, batch {args.batch_size}: teacher forward "
          f"{1000 * t_teacher:.0f} ms + student step {1000 * t_student:.0f} ms")
    for spec in args.losses:
        print(f"  {spec:>28}: distill step {1000 * results[f'distill_step_s[{spec}]']:.0f} ms, "
              f"ratio {results[f'ratio[{spec}]']:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
