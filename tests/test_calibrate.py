"""Logit adjustment: the prior bias, folding it into the classifier, fitting it on val, a run's calibration."""

import json

import numpy as np
import pytest

from tfseg import data, models
from tfseg._keras import keras
from tfseg.calibrate import fit_logit_adjustment, fold_class_bias, folded_logit_offset, prior_bias
from tfseg.pipeline.calibrate import calibrate_run
from tfseg.errors import ConfigError
from tfseg.evaluate import evaluate


def test_prior_bias_is_minus_strength_log_weight_and_zero_for_absent_classes():
    bias = prior_bias([2.0, 0.5, 0.0], 0.5)
    assert np.allclose(bias, [-0.5 * np.log(2.0), -0.5 * np.log(0.5), 0.0])
    assert np.allclose(prior_bias([3.0, 1.0], 0.0), 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        prior_bias([1.0, -1.0], 1.0)


@pytest.mark.parametrize("name, options", [
    ("deeplabv3_mobilenet_v2", {"alpha": 0.35, "aspp_filters": 16}),
    ("unet_small", {}),
    ("fastseg_tiny", {}),
])
def test_folded_bias_shifts_every_logit_and_leaves_the_original_alone(name, options):
    model = models.build(name, (32, 48, 3), 5, **options)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    before = model(x).numpy()
    bias = np.array([0.5, -1.0, 0.0, 2.0, -0.25], dtype="float32")
    adjusted = fold_class_bias(model, bias)
    assert adjusted.count_params() == model.count_params()
    assert np.allclose(adjusted(x).numpy(), before + bias, atol=1e-4)
    assert np.array_equal(model(x).numpy(), before)


def test_fold_refuses_a_classifier_followed_by_a_non_linear_layer():
    inputs = keras.Input((8, 8, 3))
    logits = keras.layers.Conv2D(4, 1, name="classifier")(inputs)
    outputs = keras.layers.Activation("relu", name="squash")(logits)
    with pytest.raises(ValueError, match="classifier"):
        fold_class_bias(keras.Model(inputs, outputs), np.ones(4))
    with pytest.raises(ValueError, match="output classes"):
        fold_class_bias(keras.Model(inputs, outputs), np.ones(3))


def test_fitted_scores_match_evaluate_before_and_after_folding():
    split = data.scenes("val", num_images=6, image_size=(32, 32))
    model = models.build("unet_small", (None, None, 3), split.info.num_classes)
    weights = np.linspace(0.3, 3.0, split.info.num_classes)
    strength, bias, by_strength = fit_logit_adjustment(model, split, weights, image_size=(32, 32),
                                                       strengths=(0.0, 0.5, 1.0), verbose=0)
    assert by_strength[0.0] == pytest.approx(evaluate(model, split, image_size=(32, 32), verbose=0)["miou"])
    assert by_strength[strength] == max(by_strength.values())
    assert np.allclose(bias, prior_bias(weights, strength))
    folded = evaluate(fold_class_bias(model, bias), split, image_size=(32, 32), verbose=0)["miou"]
    assert folded == pytest.approx(by_strength[strength], abs=1e-6)


def test_calibrate_run_keeps_the_original_and_is_repeatable(tmp_path):
    from tfseg.pipeline.train import TrainConfig, run

    out = tmp_path / "run"
    config = TrainConfig(out_dir=str(out), model="unet_small", data_options={"num_images": 8, "image_size": (32, 32)},
                         crop_size=(32, 32), batch_size=8, epochs=1, augment=None, class_weights="median",
                         class_weight_power=0.5)
    run(config, verbose=0)
    record = json.loads((out / "run.json").read_text())
    assert record["class_weight_power"] == 0.5
    original = (out / "best.keras").read_bytes()
    first = calibrate_run(out, strengths=(0.0, 0.5, 1.0), verbose=0)
    assert (out / "best_uncalibrated.keras").read_bytes() == original
    assert first["miou_after"] == pytest.approx(first["miou_by_strength"][str(first["strength"])], abs=1e-4)
    from tfseg.cli import main

    assert main(["calibrate", str(out), "--strengths", "0.5,1"]) == 0  # 0 is always tried
    second = json.loads((out / "run.json").read_text())["logit_adjustment"]
    assert second["bias"] == first["bias"] and second["strength"] == first["strength"]

    assert folded_logit_offset(second) is None and folded_logit_offset(record) is None
    assert folded_logit_offset({"logit_adjustment": second}) == second["bias"]
    # A run derived from the calibrated one (pruned, QAT) carries the offset and cannot fold another.
    derived = tmp_path / "derived"
    derived.mkdir()
    (derived / "run.json").write_text((out / "run.json").read_text())
    (derived / "best.keras").write_bytes((out / "best.keras").read_bytes())
    with pytest.raises(ConfigError, match="inherits the logit adjustment"):
        calibrate_run(derived, verbose=0)

    unweighted = tmp_path / "plain"
    unweighted.mkdir()
    (unweighted / "run.json").write_text(json.dumps({**record, "class_weights": None, "class_weight_values": None}))
    with pytest.raises(ConfigError, match="without class weights"):
        calibrate_run(unweighted)


def test_fine_tuning_loss_is_the_runs_own_loss_minus_its_folded_adjustment():
    from tfseg.losses import CEDiceLoss, LogitOffsetLoss, SegmentationCrossEntropy
    from tfseg.runs import Run

    def fine_tuning_loss(record, num_classes):
        info = {"name": "toy", "class_names": [f"c{i}" for i in range(num_classes)], "palette": [[0, 0, 0]] * num_classes}
        return Run("toy", {"model": "unet", "dataset": "toy", "crop_size": [8, 8], "info": info, **record}).loss()

    weights, bias = [1.0, 2.0, 0.5], [0.1, -0.3, 0.2]
    plain = fine_tuning_loss({"loss": "ce+dice", "class_weight_values": weights}, 3)
    assert isinstance(plain, CEDiceLoss)
    adjusted = fine_tuning_loss({"loss": "ce", "class_weight_values": weights, "logit_adjustment": {"bias": bias}}, 3)
    assert isinstance(adjusted, LogitOffsetLoss) and isinstance(adjusted.loss, SegmentationCrossEntropy)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 4, 3)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 4, 4, 1))
    inner = SegmentationCrossEntropy(3, class_weights=weights)
    assert float(adjusted(labels, logits)) == pytest.approx(float(inner(labels, logits - np.float32(bias))), rel=1e-5)
    with pytest.raises(ConfigError, match="built loss"):
        from tfseg.train import compile_for_segmentation

        compile_for_segmentation(models.build("unet_small", num_classes=3, input_shape=(16, 16, 3)), 3,
                                 loss=adjusted, class_weights=weights)
