"""`tfseg benchmark`: a run's model in every TFLite format, each scored in LiteRT and timed."""

import json

from conftest import tiny_scenes_options
from tfseg.cli import main


def test_benchmark_scores_and_times_every_format(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "unet", "--width", "4", "--depth", "2", "--crop-size", "32", "--epochs", "1",
                 "--batch-size", "4", "--no-augment", "--out", str(run), *tiny_scenes_options(8)]) == 0
    assert main(["benchmark", str(run), "--threads", "1", "2", "--runs", "2", "--calibration-images", "4",
                 "--max-images", "6"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "benchmark" / "benchmark.json").read_text())
    rows = {row["format"]: row for row in result["rows"]}
    assert list(rows) == ["Keras (tf_keras)", "TFLite float32", "TFLite float16", "TFLite dynamic", "TFLite int8"]
    assert result["images"] == 6 and result["split"] == "test"
    # float32 in LiteRT computes what Keras computes; the quantized files are smaller.
    assert abs(rows["TFLite float32"]["miou"] - rows["Keras (tf_keras)"]["miou"]) < 0.01
    sizes = {name: row["file_kib"] for name, row in rows.items() if row["file_kib"]}
    assert sizes["TFLite float16"] < sizes["TFLite float32"] and sizes["TFLite int8"] < sizes["TFLite float32"]
    for name, row in rows.items():
        assert 0 <= row["miou"] <= 1
        if name.startswith("TFLite"):
            assert row["ms_1t"] > 0 and row["ms_2t"] > 0
    # XNNPACK takes the whole U-Net in every format (uint8 I/O quantization apart; this one's weights are
    # too small for dynamic range to quantize them, so that file is float too).
    for name in rows:
        if name.startswith("TFLite"):
            assert (rows[name]["xnnpack_partitions"], rows[name]["xnnpack_outside"], rows[name]["xnnpack"]) == (1, [], "1")
    assert "| XNNPACK partitions |" in printed
    assert rows["Keras (tf_keras)"]["ms_tf"] > 0
    assert (run / "benchmark" / "benchmark.png").stat().st_size > 0
    assert "| TFLite int8 |" in printed and (run / "benchmark" / "unet_int8.tflite").exists()


def test_benchmark_rows_for_each_output_and_profile(tmp_path, capsys):
    """Cut outputs: low-resolution logits upsampled by the runner score exactly what the full-resolution
    float file scores; a class map is its own row. Then the run's per-block profile."""
    run = tmp_path / "run"
    assert main(["train", "--model", "fastseg_tiny", "--crop-size", "32", "--epochs", "1", "--batch-size", "4",
                 "--no-augment", "--out", str(run), *tiny_scenes_options(8)]) == 0
    assert main(["benchmark", str(run), "--formats", "float32", "int8", "--outputs", "logits", "low_res_logits",
                 "class_map", "--threads", "1", "--runs", "2", "--calibration-images", "4", "--max-images", "4"]) == 0
    rows = {row["format"]: row for row in json.loads((run / "benchmark" / "benchmark.json").read_text())["rows"]}
    assert list(rows)[1:] == [f"TFLite {f}{o}" for f in ("float32", "int8")
                              for o in ("", " low_res_logits", " class_map")]
    assert abs(rows["TFLite float32 low_res_logits"]["miou"] - rows["TFLite float32"]["miou"]) < 1e-6
    assert all(row["ms_1t"] > 0 and row["xnnpack_partitions"] >= 1 for row in list(rows.values())[1:])
    assert (run / "benchmark" / "fastseg_tiny_int8_class_map.tflite").exists()
    assert "| TFLite int8 low_res_logits |" in capsys.readouterr().out

    # The same run through `tfseg profile`: LiteRT's operator times per block, float32 beside int8.
    assert main(["profile", str(run), "--output", "low_res_logits", "--runs", "2", "--calibration-images", "2"]) == 0
    printed = capsys.readouterr().out
    assert "output low_res_logits" in printed and "| float32 1t ms |" in printed and "| int8 1t ms |" in printed
    assert "| [input] |" in printed  # the uint8 -> int8 QUANTIZE XNNPACK leaves to TFLite's kernels
