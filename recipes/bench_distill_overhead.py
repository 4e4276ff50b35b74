"""What does distillation cost per step beyond running the teacher and training the student?

In one process, on the same batches, it times:

- the teacher's forward pass alone (inference mode, as the Distiller runs it);
- a plain student training step (the student compiled and fitted on its own);
- a Distiller step with the given losses;

interleaved: each of --steps rounds runs every one of them once on the same batch, so a slow
spell of the machine (other jobs, frequency changes) hits all of them alike. Per Distiller it
prints the median over rounds of ``distill / (teacher + student)`` of the same round, with the
spread of those ratios (the issue's goal is at most 1.15), and the median times. Random weights
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


def interleaved_times(steps: dict, batches, warmup: int) -> dict:
    """``{name: [seconds per round]}``: each round calls every ``steps[name](batch)`` once on the
    same batch; the first ``warmup`` rounds (tracing, allocation) are not timed."""
    times = {name: [] for name in steps}
    for round_index, batch in enumerate(batches):
        for name, step in steps.items():
            start = time.perf_counter()
            step(batch)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="deeplabv3_mobilenet_v2")
    parser.add_argument("--student", default="fastseg_tiny")
    pairwise = "pairwise_kd:teacher_endpoint=decoder,student_endpoint=decoder"  # features: signs differ
    parser.add_argument("--losses", nargs="+", default=["pixel_kd", pairwise, "csc", "ace", "cwd"],
                        help="Distillers to time, each losses of tfseg.distill.losses.LOSSES joined by '+'")
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
    from tfseg.distill.losses import make_distillation_loss
    from tfseg.options import variant_specs
    from tfseg.train import compile_for_segmentation

    height, width = (int(v) for v in args.size.split("x"))
    shape = (height, width, 3)
    rng = np.random.default_rng(0)
    batches = [
        (tf.constant(rng.uniform(0, 255, (args.batch_size, *shape)).astype("float32")),
         tf.constant(rng.integers(0, args.classes, (args.batch_size, height, width)).astype("int32")))
        for _ in range(args.warmup + args.steps)
    ]  # one per round
    teacher = models.build(args.teacher, shape, args.classes)
    student = models.build(args.student, shape, args.classes)

    teacher_forward = tf.function(lambda x: teacher(x, training=False))

    def train_step(model):
        # What fit() runs per batch (one device), without its data-iterator machinery.
        step = tf.function(model.train_step)
        return lambda batch: {key: value.numpy() for key, value in step(batch).items()}

    compile_for_segmentation(student, args.classes)
    steps = {"teacher": lambda b: teacher_forward(b[0]).numpy(), "student": train_step(student)}
    for spec in args.losses:
        distiller = Distiller(teacher, models.build(args.student, shape, args.classes),
                              [make_distillation_loss(loss) for loss in variant_specs(spec)])
        distiller.compile(keras.optimizers.Adam(1e-3))
        steps[spec] = train_step(distiller)
    times = interleaved_times(steps, batches, args.warmup)

    baseline = [t + s for t, s in zip(times["teacher"], times["student"])]
    results = {"teacher_forward_s": statistics.median(times["teacher"]),
               "student_train_step_s": statistics.median(times["student"])}
    for spec in args.losses:
        ratios = [d / b for d, b in zip(times[spec], baseline)]
        results[f"distill_step_s[{spec}]"] = statistics.median(times[spec])
        results[f"ratio[{spec}]"] = statistics.median(ratios)
        results[f"ratio_iqr[{spec}]"] = _quartiles(ratios)

    print(json.dumps(results, indent=1, default=lambda v: round(v, 4)))
    print(f"{args.teacher} -> {args.student}, {args.size}, batch {args.batch_size}, {args.steps} interleaved rounds: "
          f"teacher forward {1000 * results['teacher_forward_s']:.0f} ms + student step "
          f"{1000 * results['student_train_step_s']:.0f} ms (medians)")
    for spec in args.losses:
        low, high = results[f"ratio_iqr[{spec}]"]
        print(f"  {spec:>28}: distill step {1000 * results[f'distill_step_s[{spec}]']:.0f} ms, "
              f"ratio {results[f'ratio[{spec}]']:.3f} (quartiles {low:.3f}-{high:.3f}; goal <= 1.15)")


def _quartiles(values) -> list:
    """First and third quartile of ``values`` (a list of two floats)."""
    if len(values) < 2:
        return [values[0], values[0]]
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return [quartiles[0], quartiles[2]]


if __name__ == "__main__":
    main()
