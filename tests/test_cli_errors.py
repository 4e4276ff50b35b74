"""Bad input through the ``tfseg`` command: exit status 2 and one line on stderr naming what is wrong.

Each case runs ``python -m tfseg.cli`` in a subprocess, as a user would meet it, so what is checked
is the whole path: argparse, the library, tf.data (a DataError raised inside a pipeline reaches
the command wrapped in a TensorFlow error) and ``tfseg.cli.main``'s error handling.

The contract, for every case: exit status 2, no traceback, and exactly one line of stderr that
starts with ``tfseg `` (``tfseg COMMAND: error: ...``), the last one, naming the file, value or
layer at fault. TensorFlow's C++ start-up log lines are ignored; argparse's usage lines
(``usage: tfseg ...`` and its continuation lines) may come before its error line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# TF/absl/LiteRT logging from C++, which no Python setting silences completely.
LOG_LINE = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} |INFO: Created TensorFlow Lite)")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
# Tiny runs: 4 synthetic 32x32 scenes, a 2-level U-Net of width 4, one epoch.
TINY_SCENES = ["--data-option", "num_images=4", "--data-option", "image_size=32x32"]
TINY_TRAIN = ["--model", "unet", "--width", "4", "--depth", "2", "--epochs", "1", "--crop-size", "32",
              "--batch-size", "2", "--no-augment"]


def tfseg(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tfseg.cli", *map(str, args)], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


def error_line(proc, command: str) -> str:
    """The one ``tfseg COMMAND: error: ...`` line of a failed command, after checking the contract."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert lines, proc.stderr
    assert [line for line in lines if line.startswith("tfseg ")] == [lines[-1]], lines
    assert lines[-1].startswith(f"tfseg {command}: error: "), lines
    return lines[-1]


def folder_options(image_dir: Path, mask_dir: Path) -> list[str]:
    return ["--dataset", "folder", "--data-option", f"image_dir={image_dir}",
            "--data-option", f"mask_dir={mask_dir}", "--data-option", "num_classes=3"]


def write_folder(root: Path, fault: str | None = None) -> tuple[Path, Path]:
    """Four 32x32 PNG pairs with 3 classes; ``fault`` spoils the third: 'corrupt' image bytes, a mask
    of another 'size' (32 wide, 16 high), or a 'label' outside the classes (7)."""
    rng = np.random.default_rng(0)
    image_dir, mask_dir = root / "images", root / "masks"
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image_dir / f"pic{i}.png")
        Image.fromarray(rng.integers(0, 3, (32, 32)).astype(np.uint8)).save(mask_dir / f"pic{i}.png")
    if fault == "corrupt":
        (image_dir / "pic2.png").write_bytes(b"this is not a PNG file")
    elif fault == "size":
        Image.fromarray(np.zeros((16, 32), np.uint8)).save(mask_dir / "pic2.png")
    elif fault == "label":
        labels = np.zeros((32, 32), np.uint8)
        labels[5, 9] = 7
        Image.fromarray(labels).save(mask_dir / "pic2.png")
    return image_dir, mask_dir


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A trained tiny run (U-Net, width 8) on tiny scenes, for the distillation cases."""
    root = tmp_path_factory.mktemp("teacher")
    proc = tfseg("train", "--model", "unet", "--width", "8", "--depth", "2", "--epochs", "1", "--crop-size", "32",
                 "--batch-size", "2", "--no-augment", "--out", root / "run", *TINY_SCENES, cwd=root)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root / "run"


# --- run directories --------------------------------------------------------------------------


@pytest.mark.parametrize("command, args", [
    ("prune", ["{run}", "--out", "pruned"]),
    ("quantize", ["{run}", "--out", "qat"]),
    ("calibrate", ["{run}"]),
    ("distill", ["--teacher", "{run}", "--out", "student", *TINY_SCENES]),
    ("benchmark", ["{run}"]),
    ("profile", ["{run}"]),
], ids=["prune", "quantize", "calibrate", "distill", "benchmark", "profile"])
def test_missing_run_directory(tmp_path, command, args):
    run = tmp_path / "no_such_run"
    line = error_line(tfseg(command, *[a.format(run=run) for a in args], cwd=tmp_path), command)
    assert f"{run / 'run.json'} not found" in line


def test_export_of_a_folder_that_is_not_a_run(tmp_path):
    image_dir, _ = write_folder(tmp_path / "data")
    line = error_line(tfseg("export", image_dir, "--out", tmp_path / "model.tflite", cwd=tmp_path), "export")
    assert f"{image_dir / 'run.json'} not found" in line


def test_evaluate_of_a_run_without_run_json(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.keras").write_bytes(b"")  # a run directory that lost its record
    line = error_line(tfseg("evaluate", run, cwd=tmp_path), "evaluate")
    assert f"{run / 'run.json'} not found" in line


# --- names and values -------------------------------------------------------------------------


@pytest.mark.parametrize("args, words", [
    (["train", "--model", "typo", "--out", "r", *TINY_SCENES], ["unknown model 'typo'", "unet"]),
    (["train", "--model", "fastseg_tiny", "--width", "4", "--out", "r", *TINY_SCENES], ["'fastseg_tiny'", "width"]),
    (["check-data", "--dataset", "typo", "--splits", "train"], ["unknown dataset 'typo'", "folder"]),
    (["check-data", "--dataset", "scenes", "--data-option", "num_imgs=4", "--splits", "train"], ["num_imgs"]),
], ids=["unknown-model", "model-option", "unknown-dataset", "dataset-option"])
def test_unknown_names(tmp_path, args, words):
    line = error_line(tfseg(*args, cwd=tmp_path), args[0])
    for word in words:
        assert word in line
    assert not (tmp_path / "r" / "run.json").exists()


@pytest.mark.parametrize("args, words", [
    (["train", "--loss", "typo", "--out", "r"], ["--loss", "'typo'"]),
    (["train", "--crop-size", "12xx", "--out", "r"], ["--crop-size", "'12xx'"]),
    (["evaluate", "run", "--image-size", "0x32"], ["--image-size", "'0x32'"]),
    (["train", "--data-option", "num_images", "--out", "r"], ["--data-option", "'num_images'"]),
    (["train", "--model-option", "alpha", "--out", "r"], ["--model-option", "'alpha'"]),
    (["train", "--model", "mobilenet_v2_lraspp", "--model-option", "alpha=0.3", "--out", "r", *TINY_SCENES],
     ["'mobilenet_v2_lraspp'", "alpha", "0.3"]),
    (["train", "--model", "mobilenet_v2_lraspp", "--weights", "missing.h5", "--out", "r"], ["--weights", "missing.h5"]),
    (["train", "--init-from", "src", "--model-option", "alpha=0.35", "--out", "r"], ["--init-from", "--model-option"]),
    (["train", "--precise-bn", "-1", "--out", "r", *TINY_SCENES], ["precise_bn", "-1"]),
], ids=["unknown-loss", "bad-crop-size", "bad-image-size", "data-option-without-value", "model-option-without-value",
        "bad-model-option-value", "missing-weights", "init-from-with-model-options", "negative-precise-bn"])
def test_bad_values(tmp_path, args, words):
    """argparse's usage errors (status 2 too) and the option parsing after them."""
    line = error_line(tfseg(*args, cwd=tmp_path), args[0])
    for word in words:
        assert word in line


# --- bad data: through check-data, and through train where it surfaces inside tf.data ----------


FAULTS = {
    "corrupt": ["cannot decode image", "pic2.png"],
    "size": ["pic2.png", "32x16", "32x32"],
    "label": ["pic2.png", "[7]", "outside [0, 3)"],
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("command", ["check-data", "train"])
def test_bad_data_names_the_file_and_value(tmp_path, command, fault):
    image_dir, mask_dir = write_folder(tmp_path / "data", fault)
    args = ["--splits", "train"] if command == "check-data" else [*TINY_TRAIN, "--out", tmp_path / "run"]
    line = error_line(tfseg(command, *folder_options(image_dir, mask_dir), *args, cwd=tmp_path), command)
    for word in FAULTS[fault]:
        assert word in line
    assert str(image_dir if fault == "corrupt" else mask_dir) in line


# --- distillation: a teacher run exists, the student or the losses do not fit it ---------------


DISTILL_CASES = [
    pytest.param(["--kd", "typo"], ["unknown distillation loss 'typo'", "pixel_kd"], id="unknown-kd-loss"),
    pytest.param(["--kd", "cwd:student_endpoint=nope"], ["'nope'", "student"], id="missing-layer"),
    pytest.param(["--model", "unet", "--width", "16"], ["larger than the teacher", "swapped"], id="student-larger"),
]


@pytest.mark.parametrize("args, words", DISTILL_CASES)
def test_distill_mistakes(tmp_path, teacher_run, args, words):
    student = ["--model", "unet", "--width", "4", "--depth", "2", "--epochs", "1", "--crop-size", "32",
               "--batch-size", "2", "--no-augment"]
    proc = tfseg("distill", "--teacher", teacher_run, *student, *args, "--out", tmp_path / "student", *TINY_SCENES,
                 cwd=tmp_path)
    line = error_line(proc, "distill")
    for word in words:
        assert word in line


def test_distill_from_a_teacher_of_other_classes(tmp_path, teacher_run):
    image_dir, mask_dir = write_folder(tmp_path / "data")
    proc = tfseg("distill", "--teacher", teacher_run, *TINY_TRAIN, *folder_options(image_dir, mask_dir),
                 "--out", tmp_path / "student", cwd=tmp_path)
    line = error_line(proc, "distill")
    assert str(teacher_run) in line and "classes" in line


def test_low_res_export_of_a_model_without_an_upsampling_tail(tmp_path, teacher_run):
    # A U-Net's classifier works at full resolution: there is no final upsampling to end before.
    proc = tfseg("export", teacher_run, "--out", tmp_path / "unet.tflite", "--quantization", "none",
                 "--output", "class_map", cwd=tmp_path)
    line = error_line(proc, "export")
    for words in ("model 'unet_d2_w8'", "layer 'classifier' (Conv2D)", "output 'logits'"):
        assert words in line
    assert not (tmp_path / "unet.tflite").exists()


# --- chains: a chain file's mistakes are named before any stage runs -------------------------


CHAIN_CASES = [
    pytest.param('[teacher]\nstage = "trian"\n', [], ["[teacher]", "'trian'"], id="unknown-stage-kind"),
    pytest.param('[teacher]\nstage = "train"\nepoch = 2\n', [], ["[teacher]", "'epoch'"], id="unknown-option"),
    pytest.param('[teacher]\nstage = "train"\n', ["--set", "student.epochs=2"], ["'student'", "teacher"],
                 id="override-of-a-missing-stage"),
    pytest.param('[teacher\nstage = "train"\n', [], ["chain.toml", "not valid TOML"], id="not-toml"),
]


@pytest.mark.parametrize("text, args, words", CHAIN_CASES)
def test_chain_mistakes(tmp_path, text, args, words):
    chain = tmp_path / "chain.toml"
    chain.write_text(f'out = "{tmp_path / "out"}"\n' + text)
    line = error_line(tfseg("run", chain, *args, cwd=tmp_path), "run")
    for word in words:
        assert word in line
    assert not (tmp_path / "out").exists()  # nothing ran


def test_missing_chain_file_and_bad_quickstart_override(tmp_path):
    assert "nowhere.toml" in error_line(tfseg("run", tmp_path / "nowhere.toml", cwd=tmp_path), "run")
    line = error_line(tfseg("quickstart", "--out", tmp_path / "qs", "--set", "teacher.epoch=1", cwd=tmp_path),
                      "quickstart")
    assert "[teacher]" in line and "'epoch'" in line
