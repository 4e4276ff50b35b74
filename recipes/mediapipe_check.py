"""Does MediaPipe Tasks' ImageSegmenter load a tfseg export and give LiteRT's class map?

For each ``.tflite`` file: images at the model's input size (so no resize method can differ) go
through LiteRT here (argmax of the output, pixels quantized with the input tensor's own scale and
zero point as tfseg-lite does) and through MediaPipe's ImageSegmenter in a subprocess
(``recipes/mediapipe_segment.py``, run by an interpreter that has ``mediapipe``). Printed per
file: the share of pixels where MediaPipe's category mask equals LiteRT's argmax, the worst image,
and whether MediaPipe's category names equal the export's classes.

mediapipe is not a tfseg dependency (it is large and pins its own protobuf and NumPy); keep it in
a venv of its own and name its interpreter:

    python3 -m venv ~/venv-mp && ~/venv-mp/bin/pip install mediapipe
    export TFSEG_MEDIAPIPE_PYTHON=~/venv-mp/bin/python
    tfseg export runs/camvid/teacher --out /tmp/teacher_int8.tflite --quantization int8 --data-dir DATA
    python recipes/mediapipe_check.py /tmp/teacher_*.tflite --dataset camvid --split test --count 20 \\
        --data-option root=DATA
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tfseg import data
from tfseg.tflite import interpreter, io_tensors, read_metadata, run_tflite

SEGMENT_SCRIPT = Path(__file__).resolve().with_name("mediapipe_segment.py")
PYTHON_VARIABLE = "TFSEG_MEDIAPIPE_PYTHON"


def mediapipe_python() -> str:
    """The interpreter that runs MediaPipe: ``$TFSEG_MEDIAPIPE_PYTHON``, else this one if it has mediapipe.

    Raises:
      RuntimeError: neither has mediapipe (the message says how to set one up).
    """
    named = os.environ.get(PYTHON_VARIABLE)
    if named:
        if not Path(named).is_file():
            raise RuntimeError(f"{PYTHON_VARIABLE}={named}: no such interpreter")
        return named
    if importlib.util.find_spec("mediapipe") is not None:
        return sys.executable
    raise RuntimeError(
        f"mediapipe is not importable here ({sys.executable}) and {PYTHON_VARIABLE} is not set. Install it in a "
        f"venv of its own (python3 -m venv ~/venv-mp && ~/venv-mp/bin/pip install mediapipe) and set "
        f"{PYTHON_VARIABLE}=~/venv-mp/bin/python"
    )


def run_mediapipe(model_path, image_paths, python: str | None = None, timeout: float = 600) -> dict:
    """MediaPipe's category masks (N, H, W), confidence sums, labels and metadata for the images."""
    python = python or mediapipe_python()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "masks.npz"
        result = subprocess.run([python, str(SEGMENT_SCRIPT), str(model_path), str(out), *map(str, image_paths)],
                                capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"MediaPipe failed on {model_path} (exit {result.returncode}):\n{result.stderr[-3000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        with np.load(out) as arrays:
            report.update(category_masks=arrays["category_masks"], confidence_sums=arrays["confidence_sums"])
    return report


def litert_class_maps(model_path, images) -> np.ndarray:
    """LiteRT's argmax class maps (N, H, W) for uint8 images at the model's input size."""
    runner = interpreter(Path(model_path).read_bytes())
    return np.stack([np.argmax(run_tflite(runner, image[None].astype(np.float32))[0], axis=-1) for image in images])


def input_size(model_path) -> tuple[int, int]:
    _, height, width, _ = io_tensors(Path(model_path).read_bytes())["inputs"][0]["shape"]
    return height, width


def at_size(images, size) -> list[np.ndarray]:
    """uint8 RGB images resized (bilinear, Pillow) to (height, width) unless they have that size."""
    height, width = size
    out = []
    for image in images:
        picture = Image.fromarray(np.asarray(image, np.uint8))
        if picture.size != (width, height):
            picture = picture.resize((width, height), Image.BILINEAR)
        out.append(np.asarray(picture))
    return out


def compare(model_path, images, python: str | None = None) -> dict:
    """MediaPipe against LiteRT on ``images`` (uint8 RGB, any size: resized to the model's first).

    Returns:
      ``{"model", "images", "pixels", "agreement", "min_image_agreement", "labels_match",
      "labels", "classes", "mediapipe", "metadata", "confidence_sum_range"}``.
    """
    model_path = Path(model_path)
    images = at_size(images, input_size(model_path))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for index, image in enumerate(images):
            paths.append(Path(tmp) / f"{index:04d}.png")  # lossless: both sides see the same pixels
            Image.fromarray(image).save(paths[-1])
        mediapipe = run_mediapipe(model_path, paths, python)
    litert = litert_class_maps(model_path, images)
    masks = mediapipe["category_masks"]
    if masks.shape != litert.shape:
        raise RuntimeError(f"{model_path}: MediaPipe's masks have shape {masks.shape}, LiteRT's {litert.shape}")
    same = masks == litert
    classes = (read_metadata(model_path.read_bytes()) or {}).get("classes")
    return {
        "model": str(model_path),
        "images": len(images),
        "pixels": int(same.size),
        "agreement": float(same.mean()),
        "min_image_agreement": float(same.reshape(len(images), -1).mean(axis=1).min()),
        "labels_match": mediapipe["labels"] == classes,
        "labels": mediapipe["labels"],
        "classes": classes,
        "mediapipe": mediapipe["mediapipe"],
        "metadata": mediapipe["metadata"],
        "confidence_sum_range": [float(mediapipe["confidence_sums"].min()), float(mediapipe["confidence_sums"].max())],
    }


def dataset_images(name, split, count, options) -> list[np.ndarray]:
    images = []
    for image, _ in data.load(name, split, **options).dataset().take(count).as_numpy_iterator():
        images.append(np.clip(np.rint(image), 0, 255).astype(np.uint8))
    return images


def _option(text):
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help=".tflite files exported by tfseg")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files")
    source.add_argument("--dataset", help="a tfseg dataset name (camvid, scenes, ...)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--data-option", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset loader option, e.g. root=/data/camvid")
    parser.add_argument("--python", help=f"interpreter with mediapipe (default ${PYTHON_VARIABLE})")
    parser.add_argument("--json", help="also write the reports here")
    args = parser.parse_args(argv)
    if args.images:
        images = [np.asarray(Image.open(path).convert("RGB")) for path in args.images]
    else:
        images = dataset_images(args.dataset, args.split, args.count, dict(map(_option, args.data_option)))
    python = args.python or mediapipe_python()
    reports = []
    for model in args.models:
        report = compare(model, images, python)
        reports.append(report)
        print(f"{Path(model).name}: MediaPipe {report['mediapipe']} category mask = LiteRT argmax on "
              f"{report['agreement']:.4%} of {report['pixels']} pixels ({report['images']} images, worst image "
              f"{report['min_image_agreement']:.4%}); category names {'match' if report['labels_match'] else 'DIFFER'}: "
              f"{report['labels']}")
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + "\n")
    return 0 if all(r["labels_match"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
