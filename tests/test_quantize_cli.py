"""``tfseg quantize`` and ``tfseg export`` end to end on a tiny scenes run, and their errors."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_scenes_options, train_tiny_run
from tfseg.cli import main
from tfseg.tflite import read_metadata

TINY = tiny_scenes_options(16)


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("runs") / "float", 16)


def test_quantize_then_export_int8_and_saved_model(float_run, tmp_path, capsys):
    qat = tmp_path / "qat"
    assert main(["quantize", str(float_run), "--out", str(qat), "--epochs", "1", "--calibration-images", "8"]) == 0
    record = json.loads((qat / "run.json").read_text())
    assert record["qat"]["source_model"] == "unet_small" and record["qat"]["epochs"] == 1
    assert (qat / "best.h5").exists() and (qat / "last.h5").exists() and (qat / "eval" / "val" / "scores.json").exists()
    assert not (qat / "backup").exists()
    capsys.readouterr()

    model_path = tmp_path / "unet_int8.tflite"
    assert main(["export", str(qat), "--out", str(model_path), "--verify-split", "val"]) == 0
    out = capsys.readouterr().out
    assert "argmax agreement" in out and "scenes/val, 16 images" in out
    metadata = read_metadata(model_path.read_bytes())
    assert metadata == json.loads((tmp_path / "unet_int8.tflite.json").read_text())
    assert metadata["quantization"] == "int8" and metadata["model"] == "unet_small" and metadata["dataset"] == "scenes"
    assert metadata["input"]["dtype"] == "uint8" and metadata["classes"][0] == "sky"

    # The float run: PTQ calibrated on its own training split, and a SavedModel.
    assert main(["export", str(float_run), "--out", str(tmp_path / "ptq.tflite"), "--calibration-images", "8"]) == 0
    assert read_metadata((tmp_path / "ptq.tflite").read_bytes())["input"]["height"] == 32
    assert main(["export", str(float_run), "--format", "saved_model", "--out", str(tmp_path / "served")]) == 0
    assert (tmp_path / "served" / "saved_model.pb").exists() and (tmp_path / "served.json").exists()
    # A QAT run exports as int8 only.
    assert main(["export", str(qat), "--quantization", "float16", "--out", str(tmp_path / "f16.tflite")]) == 2
    assert "int8 only" in capsys.readouterr().err


def test_quantization_aware_distillation_from_the_command_line(float_run, tmp_path):
    qkd = tmp_path / "qkd"
    # The float run teaches its own quantization-aware copy (a real recipe uses a larger teacher).
    assert main(["quantize", str(float_run), "--teacher", str(float_run), "--out", str(qkd), "--epochs", "1",
                 "--kd", "pixel_kd:temperature=2", "--calibration-images", "8"]) == 0
    record = json.loads((qkd / "run.json").read_text())
    assert record["qat"]["teacher_run"] == str(float_run)
    assert record["qat"]["distillation_losses"][0]["class"] == "PixelKD"
    assert record["qat"]["distillation_losses"][0]["temperature"] == 2
    # Refused: quantizing a quantization-aware run again.
    assert main(["quantize", str(qkd), "--out", str(tmp_path / "again")]) == 2


def test_missing_runs_exit_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.tflite")]) == 2
    assert "run.json not found" in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "nothing"), "--out", str(tmp_path / "q")]) == 2
