"""Is ``mixed_bfloat16`` worth it on this CPU? float32 against bfloat16 compute, interleaved.

Times (1) the CamVid teacher's forward pass (DeepLabV3-MobileNetV2, what distillation pays per
step) and (2) a student's training step (LR-ASPP MobileNetV2-0.35), batch 8 at 288x384, each in
float32 and under the ``mixed_bfloat16`` policy (variables float32, compute bfloat16). The two
precisions alternate round by round, so a drift of the machine hits both; the figure is the ratio
of medians. Run on a quiet machine:

    python recipes/bench_bfloat16.py [--rounds 5 --steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from tfseg import models
from tfseg._keras import keras, tf
from tfseg.train import compile_for_segmentation


def _build(name, options, shape, policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = models.build(name, shape, 11, **options)
        # bfloat16 logits into a float32 loss: cast at the end as the mixed-precision guide says.
        if policy != "float32":
            outputs = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(model.output)
            model = keras.Model(model.input, outputs)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model


def _forward(model):
    step = tf.function(lambda x: model(x, training=False))
    return lambda x, y: step(x)


def _train_step(model):
    compile_for_segmentation(model, 11)
    return lambda x, y: model.train_on_batch(x, y)


def _time(step, x, y, steps):
    step(x, y)  # trace / warm up
    start = time.perf_counter()
    for _ in range(steps):
        out = step(x, y)
    np.asarray(out if not isinstance(out, (list, tuple)) else out[0])
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    shape = (288, 384, 3)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (args.batch_size, *shape)).astype("float32"))
    y = tf.constant(rng.integers(0, 11, (args.batch_size, *shape[:2], 1)).astype("int32"))
    cases = {
        "teacher forward (DeepLabV3-MobileNetV2 1.0)": ("deeplabv3_mobilenet_v2", {"backbone": "mobilenet_v2"}, _forward),
        "student train step (LR-ASPP MobileNetV2-0.35)": ("mobilenet_v2_lraspp", {"alpha": 0.35}, _train_step),
    }
    print(f"tf {tf.__version__}, batch {args.batch_size} at {shape[0]}x{shape[1]}, {args.rounds} interleaved rounds x {args.steps} steps")
    for what, (name, options, make_step) in cases.items():
        steps = {policy: make_step(_build(name, options, shape, policy)) for policy in ("float32", "mixed_bfloat16")}
        times = {policy: [] for policy in steps}
        for _ in range(args.rounds):
            for policy, step in steps.items():
                times[policy].append(_time(step, x, y, args.steps))
        f32, bf16 = (statistics.median(times[p]) for p in ("float32", "mixed_bfloat16"))
        print(f"{what}: float32 {1000 * f32:.0f} ms, mixed_bfloat16 {1000 * bf16:.0f} ms per batch, "
              f"speed-up {f32 / bf16:.2f}x (rounds f32 {[round(1000 * t) for t in times['float32']]}, "
              f"bf16 {[round(1000 * t) for t in times['mixed_bfloat16']]})")


if __name__ == "__main__":
    main()
