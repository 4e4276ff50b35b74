"""The CamVid teacher: DeepLabV3-MobileNetV2 (alpha 1.0, output stride 16) from ImageNet weights.

Trains on CamVid train (367 images) with random 288x384 crops of moderately rescaled images and
cross entropy weighted by the square root of the median-frequency weights, selects the epoch by
val mIoU measured at 360x480 against the full-resolution labels, takes back the rare-class bias the
weights leave in the logits with a per-class offset fitted on val (``tfseg.calibrate``, folded into
the classifier's bias), then scores the model on the test split (233 images) at 360x480 — the
number to report. ``--init random`` trains the same network from random initialisation, to show
what ImageNet brings.

The run directory keeps ``best.keras`` (the teacher that distillation, pruning and quantization
recipes reuse; default ``runs/camvid/teacher``), ``run.json`` (configuration and training time),
``log.csv``, ``curves.png`` and ``eval/{val,test}/`` reports. A killed run resumes where it
stopped when started again with the same arguments. Same seed, same data order and augmentations;
float results can still differ in the last bits between machines and thread counts.

    python recipes/train_camvid_teacher.py                              # ImageNet init (~1.5 h on 2 cores)
    python recipes/train_camvid_teacher.py --init random --out runs/camvid/teacher_random
    python recipes/train_camvid_teacher.py --evaluate-only              # re-score an existing run

Weights: the TF-Slim MobileNetV2 1.0/224 ImageNet arrays, from --weights, else
``$TFSEG_MOBILENET_V2_NPY``, else ``../shared/weights/mobilenet_v2_1.0_224_imagenet_tfslim_npy``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from tfseg.options import size as parse_size

WEIGHTS_ENV = "TFSEG_MOBILENET_V2_NPY"
WEIGHTS_FALLBACK = Path("..") / "shared" / "weights" / "mobilenet_v2_1.0_224_imagenet_tfslim_npy"
DEFAULT_OUT = "runs/camvid/teacher"
EVAL_SIZE = (360, 480)


def weights_dir(path: str | None) -> Path:
    """The MobileNetV2 arrays folder: --weights, else $TFSEG_MOBILENET_V2_NPY, else ../shared/weights/..."""
    chosen = Path(path or os.environ.get(WEIGHTS_ENV) or WEIGHTS_FALLBACK)
    if not chosen.is_dir():
        raise SystemExit(
            f"MobileNetV2 ImageNet arrays not found at {chosen.resolve()}: pass --weights DIR or set "
            f"{WEIGHTS_ENV} (the folder of TF-Slim .npy files), or use --init random"
        )
    return chosen


def teacher_config(args):
    from tfseg.pipeline.train import TrainConfig

    options = {"backbone": "mobilenet_v2", "alpha": 1.0, "output_stride": 16}
    if args.init == "imagenet":
        options["weights"] = str(weights_dir(args.weights))
    return TrainConfig(
        out_dir=args.out,
        model="deeplabv3_mobilenet_v2",
        model_options=options,
        dataset="camvid",
        data_options={"root": args.camvid} if args.camvid else {},
        crop_size=args.crop,
        eval_size=EVAL_SIZE,
        batch_size=args.batch_size,
        epochs=args.epochs,
        loss="ce",
        class_weights="median",  # CamVid's small classes (pole, sign, bicyclist) carry mIoU,
        class_weight_power=0.5,  # but full weights over-predict them (56.4 % test vs. 59.2 % corrected)
        optimizer="adam",
        learning_rate=args.learning_rate,
        schedule="poly",
        augment={"scale": (0.75, 1.5), "rotate_degrees": 5.0, "colour_jitter": 0.1},
        seed=args.seed,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", choices=["imagenet", "random"], default="imagenet")
    parser.add_argument("--weights", help="folder of the TF-Slim MobileNetV2 .npy arrays")
    parser.add_argument("--camvid", help="CamVid folder (default $TFSEG_CAMVID_DIR or ../shared/data/camvid)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"run directory (default {DEFAULT_OUT})")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--crop", type=parse_size, default=(288, 384), help="training crop HxW")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--evaluate-only", action="store_true", help="only score the run's best model on test")
    args = parser.parse_args(argv)

    from tfseg import data as seg_data
    from tfseg.evaluate import evaluate
    from tfseg.pipeline import train
    from tfseg.pipeline.calibrate import calibrate_run
    from tfseg.runs import Run

    if not args.evaluate_only:
        train.run(teacher_config(args))
    # Class-weighted training over-predicts rare classes; the offset that undoes it is fitted on val.
    calibration = calibrate_run(args.out, split="val")
    run = Run.open(args.out)
    model = run.model(size=EVAL_SIZE)
    test = seg_data.load("camvid", "test", **({"root": args.camvid} if args.camvid else {}))
    start = time.time()
    scores = evaluate(model, test, image_size=EVAL_SIZE, batch_size=4, out_dir=Path(args.out) / "eval" / "test")
    record = run.record
    summary = {
        "run": args.out,
        "init": "imagenet" if run.model_options.get("weights") else "random",
        "epochs": record["epochs"],
        "train_seconds": record.get("train_seconds"),
        "val_miou_as_trained": round(calibration["miou_before"], 4),
        "logit_adjustment_strength": calibration["strength"],
        "val_miou": round(calibration["miou_after"], 4),
        "test_miou": round(float(scores["miou"]), 4),
        "test_pixel_accuracy": round(float(scores["pixel_accuracy"]), 4),
        "test_seconds": round(time.time() - start, 1),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
