"""What do the per-pixel parts of a segmentation training step cost on full-resolution logits?

Times, interleaved over --rounds on the same random tensors (a slow spell hits all alike), the
median of:

- tfseg's ``sparse_cross_entropy`` and TF's fused ``sparse_softmax_cross_entropy_with_logits``,
  forward and backward, and forward only (the Distiller logs a zero-weighted student loss that way);
- pixel KD's soft-target KL (``soft_target_kl``), forward and backward;
- one update of the mIoU metric (argmax and confusion-matrix counts).

    python recipes/bench_step_parts.py                        # 8x288x384x11, as the CamVid recipes
    python recipes/bench_step_parts.py --shape 4x512x1024x19  # Cityscapes-like
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="8x288x384x11", help="logits shape BxHxWxC")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling recipe, also when imported by path
    from bench_distill_overhead import interleaved_times

    from tfseg._keras import tf
    from tfseg.distill.losses.base import soft_target_kl
    from tfseg.losses import sparse_cross_entropy
    from tfseg.metrics import MeanIoU

    shape = tuple(int(v) for v in args.shape.split("x"))
    rng = np.random.default_rng(0)
    student = tf.Variable(rng.normal(size=shape).astype("float32"))
    teacher = tf.constant(rng.normal(size=shape).astype("float32"))
    labels = tf.constant(rng.integers(0, shape[-1], shape[:-1]).astype("int32"))
    miou = MeanIoU(shape[-1])

    def forward_backward(loss):
        def step():
            with tf.GradientTape() as tape:
                value = tf.reduce_mean(loss())
            return tape.gradient(value, student)
        return tf.function(step, autograph=False)

    def forward(loss):
        return tf.function(lambda: tf.reduce_mean(loss()), autograph=False)

    def metric_update():
        miou.update_state(labels, student)
        return miou.total_cm.read_value()

    ours = lambda: sparse_cross_entropy(labels, student)  # noqa: E731
    fused = lambda: tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=student)  # noqa: E731
    parts = {
        "cross entropy, tfseg, forward+backward": forward_backward(ours),
        "cross entropy, TF fused op, forward+backward": forward_backward(fused),
        "cross entropy, tfseg, forward": forward(ours),
        "cross entropy, TF fused op, forward": forward(fused),
        "soft-target KL (T 4), forward+backward": forward_backward(lambda: soft_target_kl(teacher, student, 4.0)),
        "mIoU metric update": tf.function(metric_update, autograph=False),
    }
    steps = {name: (lambda _, part=part: part().numpy()) for name, part in parts.items()}
    times = interleaved_times(steps, [None] * (args.warmup + args.rounds), args.warmup)
    print(f"logits {args.shape}, median of {args.rounds} interleaved rounds:")
    for name, values in times.items():
        print(f"  {name:>46}: {1000 * statistics.median(values):6.1f} ms")


if __name__ == "__main__":
    main()
