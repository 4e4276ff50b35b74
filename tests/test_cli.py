import json

import pytest
from PIL import Image

from tfseg.cli import main

TINY = ["--data-option", "num_images=16", "--data-option", "image_size=32x32"]


def test_train_then_evaluate_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--model", "unet", "--depth", "2", "--width", "4", "--crop-size", "32", "--epochs", "2",
                 "--batch-size", "8", "--out", str(run), *TINY])
    assert code == 0
    record = json.loads((run / "run.json").read_text())
    assert record["model_options"] == {"width": 4, "depth": 2} and record["info"]["name"] == "scenes"
    assert (run / "best.keras").exists() and (run / "eval" / "val" / "scores.json").exists()

    assert main(["evaluate", str(run), "--split", "test", "--overlays", "2"]) == 0
    out = capsys.readouterr().out
    assert "scenes/test: mIoU" in out and "sky" in out  # summary line and per-class table
    scores = json.loads((run / "eval" / "test" / "scores.json").read_text())
    assert 0 <= scores["miou"] <= 1 and len(scores["per_class_iou"]) == 6
    assert len(list((run / "eval" / "test" / "overlays").glob("*.png"))) == 2


def test_bad_data_is_reported_with_the_file_and_exit_code_2(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a.png")
    Image.new("L", (8, 8), color=7).save(tmp_path / "ann" / "a.png")
    code = main(["check-data", "--dataset", "folder", "--splits", "train",
                 "--data-option", f"image_dir={tmp_path / 'img'}", "--data-option", f"mask_dir={tmp_path / 'ann'}",
                 "--data-option", "num_classes=3"])
    assert code == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "[7]" in err


def test_evaluate_names_a_missing_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "run.json not found" in capsys.readouterr().err


def test_sizes_are_parsed_or_refused():
    from tfseg.options import size as _size

    assert _size("360x480") == (360, 480) and _size("96") == (96, 96)
    with pytest.raises(Exception, match="HxW"):
        _size("12xx")


def test_model_options_and_backbone_weights_are_used_and_recorded(tmp_path):
    import numpy as np

    from tfseg._keras import keras
    from tfseg.runs import Run

    weights = tmp_path / "mobilenet_v2_0.35_no_top.h5"
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None)
    backbone.save_weights(str(weights))
    run_dir = tmp_path / "run"
    code = main(["train", "--model", "mobilenet_v2_deeplabv3plus", "--model-option", "alpha=0.35",
                 "--model-option", "aspp_rates=[1,2]", "--weights", str(weights), "--precise-bn", "1",
                 "--crop-size", "32", "--epochs", "1", "--batch-size", "8", "--lr", "0", "--out", str(run_dir), *TINY])
    assert code == 0
    run = Run.open(run_dir)
    assert run.model_options == {"alpha": 0.35, "aspp_rates": [1, 2], "weights": str(weights)}
    assert run.record["precise_bn"] == 1
    model = run.model()
    # Learning rate 0: the backbone still holds the file's arrays after training.
    np.testing.assert_array_equal(model.get_layer("block_16_project").kernel.numpy(),
                                  backbone.get_layer("block_16_project").kernel.numpy())
    # Precise BN replaced the file's moving statistics by ones measured on the training images.
    assert not np.allclose(model.get_layer("bn_Conv1").moving_mean.numpy(),
                           backbone.get_layer("bn_Conv1").moving_mean.numpy())
    assert len(model.get_layer("aspp_concat").input) == 3
