"""tfseg._tfmot: TF-MOT imported lazily and only there, its wrapper names, and tfseg's patch to it."""

import subprocess
import sys

import pytest

from tfseg import _tfmot


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_importing_tfseg_does_not_import_tfmot():
    code = ("import sys, tfseg.quantize, tfseg.prune, tfseg.models, tfseg.export, tfseg.distill; "
            "print('tensorflow_model_optimization' in sys.modules)")
    assert _run(code) == "False"


def test_load_picks_tf_keras_and_says_how_to_install_a_missing_tfmot():
    # Loaded first thing in a fresh interpreter, TF-MOT still sees tfseg's Keras (tf_keras).
    assert _run("from tfseg import _tfmot; _tfmot.load(); import os; print(os.environ['TF_USE_LEGACY_KERAS'])") == "1"
    code = ("import sys; sys.modules['tensorflow_model_optimization'] = None\n"
            "from tfseg import _tfmot\n"
            "try:\n    _tfmot.load()\nexcept ImportError as error:\n    print(error)")
    assert "pip install tensorflow-model-optimization==0.8.1" in _run(code)


def test_the_tested_version_is_installed():
    # The internals tfseg reaches into and the defects it works around are this release's:
    # after an upgrade, re-check them (the module docstring lists them) and move TESTED_VERSION.
    assert _tfmot.load().__version__ == _tfmot.TESTED_VERSION
    for module in (_tfmot.default_8bit_registry(), _tfmot.prune_preserve_registry(), _tfmot.model_transformer()):
        assert module.__name__.startswith("tensorflow_model_optimization.")


def test_wrapper_names_match_what_tfmot_builds():
    from tfseg._keras import keras

    tfmot = _tfmot.load()
    image = keras.Input((8, 8, 3))
    model = keras.Model(image, keras.layers.Conv2D(2, 1, name="logits")(image))
    pruned = tfmot.sparsity.keras.prune_low_magnitude(model)
    qat = tfmot.quantization.keras.quantize_model(model)
    assert [layer.name for layer in pruned.layers if _tfmot.is_pruning_wrapper(layer)] == ["prune_low_magnitude_logits"]
    assert [layer.name for layer in qat.layers if type(layer).__name__ in _tfmot.QUANTIZE_WRAPPERS] == ["quant_logits"]
    assert all(_tfmot.is_qat_layer(layer) for layer in qat.layers[1:])
    assert {_tfmot.unwrapped_name(layer.name) for layer in pruned.layers + qat.layers} >= {"logits"}
    assert _tfmot.unwrapped_name("quantized") == "quantized"  # a prefix needs its underscore


def test_the_input_order_patch_is_undone_even_on_error():
    transformer = _tfmot.model_transformer().ModelTransformer
    original = transformer._get_layers
    with pytest.raises(RuntimeError):
        with _tfmot.inputs_kept_in_order():
            assert transformer._get_layers is not original
            raise RuntimeError("quantize_apply failed")
    assert transformer._get_layers is original
