"""int8 diagnosis (tfseg.quantize.diagnose) and float fallback: the ranking names real layers, a
fallen-back layer computes in float in the file, the file runs in LiteRT with uint8 I/O and is
closer to float; `tfseg diagnose` and `tfseg export --float-fallback` end to end and their errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import train_tiny_run
from test_cli_errors import error_line, tfseg

from tfseg._keras import keras
from tfseg.cli import main
from tfseg.errors import ConfigError
from tfseg.quantize.diagnose import diagnose
from tfseg.tflite import interpreter, random_images, run_tflite, tflite_ops, to_tflite_bytes


def outlier_model():
    """normalize -> conv_a -> conv_b -> logits, where every output channel of conv_b has one weight
    80x its others: its per-channel int8 scale leaves the others a level or two, so conv_b is the
    layer int8 hurts, and the one float fallback should repair."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 127.5, -1, name="normalize")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.Conv2D(3, 1, name="logits")(x)
    model = keras.Model(inputs, x, name="outlier")
    kernel, bias = model.get_layer("conv_b").get_weights()
    kernel = np.random.default_rng(0).normal(0, 0.05, kernel.shape).astype(np.float32)
    kernel[1, 1, 0, :] = 4.0
    model.get_layer("conv_b").set_weights([kernel, bias])
    return model


@pytest.fixture(scope="module")
def diagnosed():
    model = outlier_model()
    calibration = random_images((16, 16, 3), 8, seed=1)
    return model, calibration, diagnose(model, calibration, random_images((16, 16, 3), 4, seed=2))


def _float_ops(flatbuffer) -> list[dict]:
    return [op for op in tflite_ops(flatbuffer) if op["op"] not in ("QUANTIZE", "DEQUANTIZE")
            and op["outputs"][0]["dtype"] == "float32"]


def _error_against(model, flatbuffer, images) -> float:
    """RMS difference of a TFLite model's outputs (dequantized) from the Keras model's."""
    runner = interpreter(flatbuffer)
    got = np.concatenate([run_tflite(runner, image[None]) for image in images])
    return float(np.sqrt(np.mean((got - model(images).numpy()) ** 2)))


def test_ranking_names_the_model_layers_worst_first(diagnosed):
    model, _, diagnosis = diagnosed
    names = {layer.name for layer in model.layers}
    assert diagnosis.layer_names[0] == "conv_b"
    assert set(diagnosis.layer_names) == {"normalize", "conv_a", "conv_b", "logits"} <= names
    values = [row.rmse_scale for row in diagnosis.rows]
    assert values == sorted(values, reverse=True) and diagnosis.images == 4
    worst = diagnosis.rows[0]
    assert worst.op == "CONV_2D" and worst.rmse_scale > 2 * 0.29 and worst.elements == 4 * 16 * 16 * 8
    report = diagnosis.as_dict()
    assert report["layers"][0]["layer"] == "conv_b" and report["layers"][0]["rank"] == 1
    assert "| 1 | conv_b | CONV_2D |" in diagnosis.markdown()


def test_worst_layer_in_float_runs_in_litert_and_is_closer_to_float(diagnosed):
    model, calibration, diagnosis = diagnosed
    full = diagnosis.quantize((), io_dtype="uint8")
    fallback = diagnosis.quantize(diagnosis.worst_layers(1), io_dtype="uint8")
    assert _float_ops(full) == []
    (float_op,) = _float_ops(fallback)
    assert float_op["op"] == "CONV_2D" and "conv_b" in float_op["outputs"][0]["name"]
    assert [t["dtype"] for t in float_op["inputs"]] == ["float32"] * 3  # input, float kernel, float bias
    others = [op for op in tflite_ops(fallback)
              if op["op"] == "CONV_2D" and op["outputs"][0]["name"] != float_op["outputs"][0]["name"]]
    assert len(others) == 2 and all(op["outputs"][0]["dtype"] == "int8" for op in others)
    runner = interpreter(fallback)  # LiteRT loads it; uint8 in and out, as the normal export
    assert runner.get_input_details()[0]["dtype"] == np.uint8 == runner.get_output_details()[0]["dtype"]
    # Closer to float on the calibration images: the error conv_b's weights made is gone.
    assert _error_against(model, fallback, calibration) < 0.75 * _error_against(model, full, calibration)
    # The least damaged layer buys nothing of the kind.
    assert _error_against(model, diagnosis.quantize(["conv_a"]), calibration) > 0.9 * _error_against(model, full, calibration)


def test_full_int8_is_the_export_converters_model(diagnosed):
    model, calibration, diagnosis = diagnosed
    exported = to_tflite_bytes(model, "int8", calibration, io_dtype="uint8")
    images = random_images((16, 16, 3), 3, seed=7)
    for image in images:
        np.testing.assert_array_equal(run_tflite(diagnosis.quantize(()), image[None]), run_tflite(exported, image[None]))
    fallback = to_tflite_bytes(model, "int8", calibration, io_dtype="uint8", float_layers=["conv_b"])
    assert [op["outputs"][0]["name"] for op in _float_ops(fallback)] == \
        [op["outputs"][0]["name"] for op in _float_ops(diagnosis.quantize(["conv_b"]))]


def test_bad_fallback_choices_name_the_fault(diagnosed):
    model, calibration, diagnosis = diagnosed
    with pytest.raises(ConfigError, match=r"'outlier' has no layer 'conv_c'; did you mean 'conv_b', 'conv_a'\?"):
        diagnosis.quantize(["conv_c"])
    with pytest.raises(ConfigError, match=r"4 int8 layers diagnosed \(choose 1 to 4\)"):
        diagnosis.worst_layers(5)
    with pytest.raises(ValueError, match=f"layer '{model.layers[0].name}' of 'outlier' has no TFLite operator of its own"):
        to_tflite_bytes(model, "int8", calibration, float_layers=[model.layers[0].name])
    with pytest.raises(ValueError, match="float fallback applies to post-training int8.*converts to float16"):
        to_tflite_bytes(model, "float16", float_layers=["conv_b"])


# --- the commands ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("diagnose") / "run", 8)


@pytest.fixture(scope="module")
def qat_looking_run(tiny_run):
    """The tiny run's record marked quantization-aware (every check it meets comes before its model loads)."""
    fake = tiny_run.parent / "qat"
    shutil.copytree(tiny_run, fake)
    record = json.loads((fake / "run.json").read_text())
    (fake / "run.json").write_text(json.dumps({**record, "qat": {"epochs": 1}, "source": str(tiny_run)}))
    return fake


def test_diagnose_command_scores_every_choice(tiny_run, capsys):
    out = tiny_run.parent / "report"
    assert main(["diagnose", str(tiny_run), "--out", str(out), "--images", "2", "--calibration-images", "4",
                 "--fallback-worst", "1,2", "--score-splits", "val", "test", "--max-images", "4", "--runs", "2"]) == 0
    result = json.loads((out / "diagnose.json").read_text())
    rows = {row["model"]: row for row in result["rows"]}
    assert list(rows) == ["float32", "int8", "int8, 1 worst in float", "int8, 2 worst in float"]
    worst = result["worst_layers"]
    assert rows["int8, 2 worst in float"]["float_layers"] == worst[:2]
    assert result["diagnosis"]["layers"][0]["layer"] == worst[0] and result["scored_images"] == {"val": 4, "test": 4}
    for row in rows.values():
        assert set(row["miou"]) == {"val", "test"} and row["ms"] > 0
    assert rows["int8, 2 worst in float"]["file_kib"] > rows["int8"]["file_kib"]  # float weights are bigger
    assert (out / "layers.png").stat().st_size > 0
    assert f"| 1 | {worst[0]} |" in (out / "diagnose.md").read_text()
    assert "| int8, 1 worst in float |" in capsys.readouterr().out


def test_export_with_the_worst_layer_in_float(tiny_run, capsys):
    out = tiny_run.parent / "fallback.tflite"
    assert main(["export", str(tiny_run), "--out", str(out), "--float-fallback-worst", "1",
                 "--calibration-images", "4"]) == 0
    report = json.loads(out.with_name(out.name + ".report.json").read_text())
    (layer,) = report["float_fallback"]
    names = [op["outputs"][0]["name"] for op in _float_ops(out.read_bytes())]
    assert names and all(layer in name for name in names)
    runner = interpreter(out.read_bytes())
    assert runner.get_input_details()[0]["dtype"] == np.uint8 == runner.get_output_details()[0]["dtype"]
    assert f"left in float: {layer}" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["{run}", "--fallback-worst", "500", "--images", "1", "--calibration-images", "2"],
     ["cannot leave the 500 worst layers in float", "int8 layers diagnosed"]),
    (["{qat}"], ["is quantization-aware", "no post-training int8 to diagnose"]),
], ids=["too-many", "qat"])
def test_diagnose_bad_input_is_one_line(tiny_run, qat_looking_run, tmp_path, args, words):
    proc = tfseg("diagnose", *[a.format(run=tiny_run, qat=qat_looking_run) for a in args], cwd=tmp_path)
    line = error_line(proc, "diagnose")
    for word in words:
        assert word in line, line


@pytest.mark.parametrize("command, args, words", [
    ("diagnose", ["{run}", "--fallback-layers", "enc1_conv_typo"], ["no layer 'enc1_conv_typo'", "did you mean"]),
    ("export", ["{run}", "--out", "{tmp}/x.tflite", "--float-fallback", "enc1_conv_typo"], ["no layer 'enc1_conv_typo'"]),
    ("export", ["{qat}", "--out", "{tmp}/x.tflite", "--float-fallback-worst", "1"], ["is quantization-aware"]),
    ("export", ["{run}", "--out", "{tmp}/x.tflite", "--quantization", "float16", "--float-fallback", "logits"],
     ["float fallback applies to post-training int8", "not float16 TFLite"]),
    ("export", ["{run}", "--out", "{tmp}/x.tflite", "--float-fallback-worst", "0"], ["float_fallback_worst must be at least 1"]),
], ids=["diagnose-unknown-layer", "export-unknown-layer", "export-qat", "export-float16", "export-zero"])
def test_fallback_that_cannot_apply_fails_before_calibrating(tiny_run, qat_looking_run, tmp_path, capsys,
                                                            command, args, words):
    # In-process (the subprocess contract is checked above): the same exit status and one line.
    assert main([command, *[a.format(run=tiny_run, qat=qat_looking_run, tmp=tmp_path) for a in args]]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"tfseg {command}: error: ") and all(word in line for word in words), line
    assert not (tmp_path / "x.tflite").exists()


def test_fallback_worst_must_be_counts(tmp_path):
    proc = tfseg("diagnose", tmp_path, "--fallback-worst", "1,x", cwd=tmp_path)
    assert proc.returncode == 2 and "comma-separated counts of at least 1" in proc.stderr

