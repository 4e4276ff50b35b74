"""How fast does the input pipeline feed training? Images per second, CamVid train at full size.

Training a 2 M-parameter network on this 2-core CPU consumes about 6 images/s at 360x480, so the
pipeline (decode with Pillow in ``tf.numpy_function``, augment with TF ops, batch, prefetch) must
stay well above that. This recipe times a few hundred images after a warm-up, with the default
``Augment()`` and without augmentation (plain resize), and prints a small table.

Measured on the project's 2-core machine (TF 2.21), CamVid train, 360x480, batch 8, 320 images:
default Augment() 59 images/s, Augment(colour_jitter=0) 55, no augmentation 124, decoding alone 151.
The affine warp (ImageProjectiveTransformV3, ~7.5 ms per image bilinear + 2.5 ms for the mask)
is what augmentation costs; decoding (Pillow, lossless WebP + PNG) caps the pipeline at ~150/s.

    python recipes/bench_input_pipeline.py                       # CamVid from ../shared/data/camvid
    python recipes/bench_input_pipeline.py --root /data/camvid --images 400
    python recipes/bench_input_pipeline.py --dataset scenes
"""

from __future__ import annotations

import argparse
import os
import time


def measure(dataset, warmup_batches: int, batches: int) -> float:
    """Images per second over ``batches`` batches, after ``warmup_batches`` (tracing, buffers)."""
    iterator = iter(dataset)
    for _ in range(warmup_batches):
        next(iterator)
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        image, _ = next(iterator)
        images += int(image.shape[0])
    return images / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="camvid", choices=["camvid", "scenes"])
    parser.add_argument("--root", default=None, help="CamVid folder (default: $TFSEG_CAMVID_DIR, ../shared/data/camvid)")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="training crop (default: the images' own size, 360 480 for CamVid)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=320, help="images timed per configuration")
    parser.add_argument("--warmup", type=int, default=48, help="images read before timing starts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from tfseg import data  # after parsing, so that --help does not wait for TensorFlow

    split = data.camvid("train", root=args.root) if args.dataset == "camvid" else data.scenes("train")
    crop = tuple(args.crop) if args.crop else max(split.image_sizes())
    batches = max(1, args.images // args.batch_size)
    warmup = max(1, args.warmup // args.batch_size)

    def pipeline(augment):
        return data.train_pipeline(split, crop, args.batch_size, augment=augment, seed=args.seed, repeat=True)

    configs = [
        ("default Augment()", lambda: pipeline(data.Augment())),
        ("Augment(colour_jitter=0)", lambda: pipeline(data.Augment(colour_jitter=0))),
        ("no augmentation (resize)", lambda: pipeline(None)),
        # Reading alone: the ceiling that decoding sets.
        ("decode only", lambda: split.dataset(shuffle=True, seed=args.seed).repeat().batch(args.batch_size).prefetch(2)),
    ]

    print(f"{split.name}: {len(split)} images of {sorted(split.image_sizes())}, crop {crop}, batch "
          f"{args.batch_size}, {batches * args.batch_size} images timed after {warmup * args.batch_size}, "
          f"{os.cpu_count()} CPU cores")
    rows = [(label, measure(build(), warmup, batches)) for label, build in configs]

    width = max(len(label) for label, _ in rows)
    print(f"\n{'pipeline':<{width}} | images/s")
    print(f"{'-' * width}-|---------")
    for label, rate in rows:
        print(f"{label:<{width}} | {rate:8.1f}")


if __name__ == "__main__":
    main()
