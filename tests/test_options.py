"""Text options of the CLI and recipes (sizes, option values, loss specs, ablation variants), and the name
tables the CLI offers, each checked against what the library accepts."""

import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import load_recipe
from tfseg import options
from tfseg.errors import ConfigError
from tfseg.options import loss_spec, option_value, variant_specs


def test_option_values_are_typed():
    assert option_value("3") == 3 and option_value("-2") == -2
    assert option_value("0.5") == 0.5 and option_value("1e-3") == pytest.approx(1e-3)
    assert option_value("288x384") == (288, 384)
    assert option_value("logits") == "logits"


def test_loss_specs_carry_their_options():
    assert loss_spec("cwd") == {"loss": "cwd"}
    assert loss_spec("pixel_kd:temperature=1,alpha=0.5") == {"loss": "pixel_kd", "temperature": 1, "alpha": 0.5}
    with pytest.raises(ConfigError, match="KEY=VALUE.*'alpha'"):
        loss_spec("pixel_kd:alpha")


def test_variants_join_losses_with_plus_and_refuse_comma_lists():
    assert variant_specs("scratch") == []
    assert variant_specs("pixel_kd:alpha=0.5+cwd:pool_size=1") == [
        {"loss": "pixel_kd", "alpha": 0.5}, {"loss": "cwd", "pool_size": 1}]
    with pytest.raises(ConfigError, match="separate arguments"):
        variant_specs("pixel_kd,cwd")


def test_distillation_recipe_checks_every_variant_before_training(tmp_path):
    recipe = load_recipe("distill_camvid")
    assert recipe.variant_dir("pixel_kd:temperature=1,alpha=0.5") == "pixel_kd-temperature=1,alpha=0.5"
    common = ["--teacher", str(tmp_path / "no-teacher"), "--out", str(tmp_path / "students")]
    with pytest.raises(ConfigError, match="unknown distillation loss 'pixel_dk'"):
        recipe.main(["--variants", "scratch", "pixel_dk", *common])
    with pytest.raises(ConfigError, match="bad options for distillation loss 'pixel_kd'"):
        recipe.main(["--variants", "pixel_kd:temprature=1", *common])
    assert not (tmp_path / "students").exists()


# ------------------------------------------------------------------ the name tables


def test_options_imports_no_tensorflow():
    # The command reads the tables at start-up; TensorFlow takes seconds to import.
    code = "import sys, tfseg.options; print([m for m in ('tensorflow', 'tf_keras', 'keras') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_ground_truth_loss_optimizer_and_schedule_builds():
    from tfseg.train import make_loss, make_optimizer, make_schedule

    for name in options.GROUND_TRUTH_LOSSES:
        make_loss(name, num_classes=3)
    for name in options.OPTIMIZERS:
        for schedule in options.SCHEDULES:
            make_optimizer(name, 1e-3, schedule, total_steps=10)
    for schedule in options.SCHEDULES:
        make_schedule(1e-3, schedule, total_steps=10)
    with pytest.raises(ConfigError, match=re.escape("unknown loss 'focal'; choose one of ce, dice, ce+dice")):
        make_loss("focal", 3)
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'; choose one of adam, adamw, sgd"):
        make_optimizer("rmsprop", schedule="constant")
    with pytest.raises(ConfigError, match="unknown schedule 'step'; choose one of constant, poly, cosine"):
        make_schedule(1e-3, "step", 10)


def _tiny_segmenter():
    from tfseg._keras import keras

    layers = keras.layers
    image = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(image)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="features")(x)
    return keras.Model(image, layers.Conv2D(2, 1, name="logits")(x), name="tiny")


def test_every_quantization_and_io_dtype_exports(tmp_path):
    from tfseg import export
    from tfseg.quantize import ptq

    model = _tiny_segmenter()
    calibration = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32)
    runs = [(q, None) for q in options.QUANTIZATIONS] + [("int8", d) for d in options.IO_DTYPES]
    for quantization, io_dtype in runs:
        path = tmp_path / f"{quantization}-{io_dtype}.tflite"
        result = export.to_tflite(model, path, quantization, io_dtype=io_dtype, representative_data=calibration)
        assert result["metadata"]["quantization"] == quantization
        if io_dtype is not None:
            assert result["metadata"]["input"]["dtype"] == io_dtype
    for alias in options.FLOAT_QUANTIZATION_ALIASES:
        assert export.to_tflite(model, tmp_path / "alias.tflite", alias)["metadata"]["quantization"] == "none"
    with pytest.raises(ConfigError, match="quantization must be one of"):
        export.to_tflite(model, tmp_path / "bad.tflite", "int4")
    # Post-training quantization takes the same names, except the one that does not quantize.
    assert ptq.PTQ_MODES is options.PTQ_MODES and set(options.PTQ_MODES) == set(options.QUANTIZATIONS) - {"none"}
    with pytest.raises(ConfigError, match="mode must be one of"):
        export.post_training_quantize(model, tmp_path / "none.tflite", "none")


def test_every_pruning_criterion_and_scope_plans():
    from tfseg.prune.filters import plan_filter_pruning

    model = _tiny_segmenter()
    for criterion in options.PRUNING_CRITERIA:
        for scope in options.PRUNING_SCOPES:
            plan_filter_pruning(model, 0.5, criterion=criterion, scope=scope)
    with pytest.raises(ConfigError, match="unknown criterion 'l0'; choose one of l1, l2, bn_gamma"):
        plan_filter_pruning(model, 0.5, criterion="l0")
    with pytest.raises(ConfigError, match="unknown scope 'block'; choose one of layer, global"):
        plan_filter_pruning(model, 0.5, scope="block")


def test_distillation_loss_names_are_the_loss_table():
    from tfseg.distill.losses import LOSSES, make_distillation_loss

    assert options.DISTILLATION_LOSSES == tuple(LOSSES)
    for name in options.DISTILLATION_LOSSES:
        assert type(make_distillation_loss(name)) is LOSSES[name]


def test_option_values_read_lists_of_numbers_and_sizes():
    from tfseg.options import option_value

    assert option_value("[2,4]") == [2, 4]
    assert option_value("[0.5, 96x128]") == [0.5, (96, 128)]
    assert option_value("[]") == [] and option_value("0.35") == 0.35 and option_value("relu") == "relu"
