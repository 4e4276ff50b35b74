"""Bad input through the ``tfseg-lite`` command: exit status 2 and one line on stderr naming what is wrong.

Each case runs ``python -m tfseg_lite.cli`` in a subprocess with only export/ on the path, as a
user on a Pi would meet it. The contract: exit status 2, no traceback, and exactly one line of
stderr that starts with ``tfseg-lite `` (``tfseg-lite COMMAND: error: ...``), the last one, naming
the file or value at fault. The runtime's own C++ log line ("INFO: Created TensorFlow Lite
XNNPACK delegate") is ignored; argparse's usage lines may come before its error line.

The one valid model is made here with tfseg (TensorFlow is fine in the test process, as in
test_tfseg_lite.py); the runner under test never imports it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXPORT_DIR = Path(__file__).resolve().parents[1]
LOG_LINE = re.compile(r"^(INFO: Created TensorFlow Lite|WARNING: All log messages before absl|[IWEF]\d{4} )")
SIZE = 32


def tfseg_lite(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(EXPORT_DIR)}
    env.pop("TFSEG_LITE_RUNTIME", None)
    return subprocess.run([sys.executable, "-m", "tfseg_lite.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def error_lines(proc) -> list[str]:
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    return [line for line in proc.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def error_line(proc, command: str) -> str:
    """The one ``tfseg-lite COMMAND: error: ...`` line of a failed command, after checking the contract."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    lines = error_lines(proc)
    assert lines, proc.stderr
    assert [line for line in lines if line.startswith("tfseg-lite ")] == [lines[-1]], lines
    assert lines[-1].startswith(f"tfseg-lite {command}: error: "), lines
    return lines[-1]


def description(num_classes=3):
    """A tfseg/1 description of the float model below, as tfseg's exporter writes it."""
    return {
        "format": "tfseg/1", "tfseg_version": "0.1.0", "model": "tiny_net", "task": "segmentation",
        "dataset": "synthetic", "classes": ["road", "sky", "car"][:num_classes],
        "palette": [[128, 64, 128], [70, 130, 180], [0, 0, 142]][:num_classes], "ignore_label": 255,
        "input": {"height": SIZE, "width": SIZE, "channels": 3, "layout": "NHWC", "dtype": "float32",
                  "pixel_range": [0, 255], "normalization": "inside the model"},
        "output": {"kind": "logits", "height": SIZE, "width": SIZE, "classes": num_classes, "dtype": "float32"},
        "quantization": "none",
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """{name: path}: a valid float model, one without description, a text file named .tflite, images."""
    from tfseg import tflite
    from tfseg._keras import keras

    keras.utils.set_random_seed(0)
    inputs = keras.layers.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    raw = tflite.to_tflite_bytes(keras.Model(inputs, keras.layers.Conv2D(3, 1)(x)))

    root = tmp_path_factory.mktemp("lite")
    paths = {name: root / name for name in ("model.tflite", "raw.tflite", "x.tflite", "street.png", "bad.png",
                                             "no_images", "photos", "notes.txt")}
    paths["model.tflite"].write_bytes(tflite.embed_metadata(raw, description()))
    paths["raw.tflite"].write_bytes(raw)  # a TFLite model with no tfseg description
    paths["x.tflite"].write_text("these are my notes, not a model\n")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(paths["street.png"])
    paths["bad.png"].write_text("not an image")
    paths["no_images"].mkdir()
    (paths["no_images"] / "readme.txt").write_text("no pictures here")
    paths["photos"].mkdir()
    Image.open(paths["street.png"]).save(paths["photos"] / "a.jpg")
    paths["notes.txt"].write_text("a file where a directory is expected")
    return paths


# --- the model file ---------------------------------------------------------------------------


@pytest.mark.parametrize("command, extra", [
    ("info", []),
    ("predict", ["{street.png}", "--out", "out"]),
    ("bench", ["--runs", "2", "--warmup", "1"]),
])
def test_not_a_tflite_file(files, tmp_path, command, extra):
    args = [a.replace("{street.png}", str(files["street.png"])) for a in extra]
    line = error_line(tfseg_lite(command, files["x.tflite"], *args, cwd=tmp_path), command)
    assert f"{files['x.tflite']} is not a TFLite model" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model, words", [
    ("missing.tflite", ["model file not found", "missing.tflite"]),
    ("no_images", ["no_images is a directory", "not a TFLite model"]),
    ("raw.tflite", ["raw.tflite has no tfseg description", "raw.tflite.json"]),
], ids=["missing", "directory", "no-description"])
def test_unusable_model_file(files, tmp_path, model, words):
    path = files.get(model, tmp_path / model)
    line = error_line(tfseg_lite("info", path, cwd=tmp_path), "info")
    for word in words:
        assert word in line


# --- the images -------------------------------------------------------------------------------


@pytest.mark.parametrize("image, words", [
    ("missing.png", ["image file not found", "missing.png"]),
    ("bad.png", ["cannot read image", "bad.png"]),
    ("no_images", ["no images", "no_images"]),
], ids=["missing", "corrupt", "empty-directory"])
def test_images_that_cannot_be_segmented(files, tmp_path, image, words):
    path = files.get(image, tmp_path / image)
    line = error_line(tfseg_lite("predict", files["model.tflite"], path, "--out", tmp_path / "out", cwd=tmp_path),
                      "predict")
    for word in words:
        assert word in line
    assert not list((tmp_path / "out").glob("*.png"))


def test_out_that_is_a_file(files, tmp_path):
    proc = tfseg_lite("predict", files["model.tflite"], files["street.png"], "--out", files["notes.txt"], cwd=tmp_path)
    line = error_line(proc, "predict")
    assert f"--out {files['notes.txt']} is a file" in line


def test_some_images_failing_is_status_1_and_names_each(files, tmp_path):
    """Not a usage error: the good images are done, each bad one is named, then a count."""
    proc = tfseg_lite("predict", files["model.tflite"], files["street.png"], files["bad.png"], files["photos"],
                      "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-4000:]
    lines = error_lines(proc)
    assert len(lines) == 2 and "bad.png" in lines[0] and lines[1].endswith("1 of 3 images failed"), lines
    assert (tmp_path / "out" / "street_classes.png").exists() and (tmp_path / "out" / "a_classes.png").exists()


# --- sizes, thread counts and other values (argparse usage errors, before the model is opened) -


@pytest.mark.parametrize("command, args, words", [
    ("bench", ["--threads", "0"], ["--threads", "'0'"]),
    ("bench", ["--threads", "1", "two"], ["--threads", "'two'"]),
    ("predict", ["{street.png}", "--out", "out", "--threads", "-1"], ["--threads", "'-1'"]),
    ("info", ["--threads", "0"], ["--threads", "'0'"]),
    ("bench", ["--runs", "0"], ["--runs", "'0'"]),
    ("bench", ["--warmup", "-1"], ["--warmup", "'-1'"]),
    ("predict", ["{street.png}", "--out", "out", "--alpha", "1.5"], ["--alpha", "'1.5'"]),
    ("camera", ["--source", "picamera2", "--size", "640", "0"], ["--size", "'0'"]),
    ("camera", ["--max-frames", "0"], ["--max-frames", "'0'"]),
], ids=["bench-threads-0", "bench-threads-text", "predict-threads-negative", "info-threads-0", "runs-0",
        "warmup-negative", "alpha", "camera-size", "camera-max-frames"])
def test_bad_values(files, tmp_path, command, args, words):
    args = [a.replace("{street.png}", str(files["street.png"])) for a in args]
    line = error_line(tfseg_lite(command, files["model.tflite"], *args, cwd=tmp_path), command)
    for word in words:
        assert word in line
    assert not (tmp_path / "out").exists()


def test_camera_source_that_cannot_be_opened(files, tmp_path):
    line = error_line(tfseg_lite("camera", files["model.tflite"], "--source", tmp_path / "missing.mp4",
                                 "--max-frames", "1", cwd=tmp_path), "camera")
    if importlib.util.find_spec("cv2") is None:
        assert "needs OpenCV" in line
    else:
        assert "missing.mp4" in line
