"""Text options of the CLI and recipes: sizes, option values, loss specs, ablation variants."""

import pytest

from conftest import load_recipe
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
