import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.models import endpoints
from tfseg.models.fcn_vgg import bilinear_upsampling_kernel
from tfseg.models.googlenet import INCEPTION_V1_MODULES, build_googlenet_fcn

# Output channels of the inception modules in Szegedy et al. (2015), Table 1.
PUBLISHED_OUTPUT_CHANNELS = {
    "3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832, "5a": 832, "5b": 1024,
}


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


@pytest.fixture(scope="module")
def googlenet_8s():
    # 40 rows: padded to 64 and cropped back
    model = build_googlenet_fcn((40, 64, 3), num_classes=3, variant="8s")
    rng = np.random.default_rng(0)
    for name in ("score_fr", "score_4e", "score_3b"):  # zero-initialised: give the logits something to say
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.get_weights()])
    return model


def test_googlenet_8s_outputs_logits_at_input_resolution_with_endpoints(googlenet_8s):
    model = googlenet_8s
    assert model.output_shape == (None, 40, 64, 3)
    out = model.predict(images((2, 40, 64, 3)), verbose=0)
    assert out.shape == (2, 40, 64, 3) and np.abs(out).max() > 0
    eps = endpoints(model)
    assert list(eps) == ["low_level", "features", "logits"]
    assert eps["low_level"].output_shape == (None, 16, 16, 192)
    assert eps["features"].output_shape == (None, 2, 2, 1024)
    assert model.get_layer("upscore_4e").output_shape == model.get_layer("score_3b").output_shape == (None, 8, 8, 3)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert kinds <= {
        "InputLayer", "Rescaling", "ZeroPadding2D", "Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D",
        "Concatenate", "Dropout", "Conv2DTranspose", "Add", "Cropping2D", "Activation",
    }
    for name, factor in (("upscore2", 2), ("upscore_4e", 2), ("upscore8", 8)):
        np.testing.assert_array_equal(model.get_layer(name).get_weights()[0], bilinear_upsampling_kernel(factor, 3))


def test_inception_modules_have_the_published_widths(googlenet_8s):
    model = googlenet_8s
    for name, channels in PUBLISHED_OUTPUT_CHANNELS.items():
        layer = model.get_layer("features" if name == "5b" else f"inception_{name}_output")
        assert layer.output_shape[-1] == channels, name
    # hand count of inception 3a (192 input channels), conv without bias + BN (4 per channel)
    conv_bn = lambda k, cin, cout: k * k * cin * cout + 4 * cout  # noqa: E731
    expected = conv_bn(1, 192, 64) + conv_bn(1, 192, 96) + conv_bn(3, 96, 128)
    expected += conv_bn(1, 192, 16) + conv_bn(5, 16, 32) + conv_bn(1, 192, 32)
    got = sum(layer.count_params() for layer in model.layers if layer.name.startswith("inception_3a_"))
    assert got == expected
    assert len(INCEPTION_V1_MODULES) == 9
    assert not any(layer.name.startswith(("loss1", "loss2", "aux")) for layer in model.layers)


@pytest.mark.parametrize(
    "variant, skips",
    [  # ~5 s per build; fcn_decoder's variants are covered in test_models_fcn_vgg
        pytest.param("32s", [], marks=pytest.mark.slow),
        pytest.param("16s", ["score_4e"], marks=pytest.mark.slow),
        ("8s", ["score_4e", "score_3b"]),
    ],
)
def test_googlenet_variants_build_for_camvid_size(variant, skips):
    model = build_googlenet_fcn((360, 480, 3), num_classes=11, variant=variant)
    assert model.output_shape == (None, 360, 480, 11)
    assert model.get_layer("pad_to_stride").output_shape == (None, 384, 480, 3)
    assert model.get_layer("features").output_shape == (None, 12, 15, 1024)
    assert model.get_layer("crop_to_input").cropping == ((0, 24), (0, 0))
    scores = [layer.name for layer in model.layers if layer.name.startswith("score_")]
    assert scores == ["score_fr"] + skips


def test_weights_round_trip_and_bad_files_are_named(googlenet_8s, tmp_path):
    path = tmp_path / "googlenet.weights.h5"
    googlenet_8s.save_weights(path)
    restored = build_googlenet_fcn((40, 64, 3), num_classes=3, variant="8s", weights=path)
    x = images((1, 40, 64, 3), seed=1)
    np.testing.assert_allclose(restored(x, training=False), googlenet_8s(x, training=False), rtol=1e-5, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="nope.h5.*no pretrained GoogLeNet weights ship"):
        build_googlenet_fcn((64, 64, 3), num_classes=3, weights=tmp_path / "nope.h5")
    with pytest.raises(ValueError, match="googlenet.weights.h5.*cannot be loaded into googlenet_fcn8s"):
        build_googlenet_fcn((64, 64, 3), num_classes=5, weights=path)  # saved with 3 classes


def test_bad_googlenet_arguments_are_named():
    with pytest.raises(ValueError, match="GoogLeNet-FCN: variant must be one of 32s, 16s, 8s"):
        build_googlenet_fcn((64, 64, 3), num_classes=3, variant="2s")


@pytest.mark.slow  # about 40 s of conversion here
def test_googlenet_converts_to_float_tflite_with_equal_outputs(googlenet_8s):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(googlenet_8s).convert())
    interpreter.allocate_tensors()
    x = images((1, 40, 64, 3), seed=2)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = googlenet_8s(x, training=False).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def _wrap_all_but_normalize(model, wrap):
    return keras.models.clone_model(
        model, clone_function=lambda layer: layer if layer.name == "normalize" else wrap(layer)
    )


def test_tfmot_prunes_googlenet_except_the_rescaling(googlenet_8s):
    """Whole-model pruning stops at ``normalize`` (Rescaling); every other layer is accepted."""
    import tensorflow_model_optimization as tfmot

    with pytest.raises(ValueError, match="Please initialize `Prune` with a supported layer.*Rescaling"):
        tfmot.sparsity.keras.prune_low_magnitude(googlenet_8s)
    others = [layer.name for layer in googlenet_8s.layers if layer.name not in ("image", "normalize")]
    pruned = _wrap_all_but_normalize(googlenet_8s, tfmot.sparsity.keras.prune_low_magnitude)
    assert [layer.name for layer in pruned.layers][2:] == [f"prune_low_magnitude_{name}" for name in others]
    x = images((1, 40, 64, 3), seed=3)
    np.testing.assert_allclose(pruned(x), googlenet_8s(x, training=False), rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # quantize_apply takes about 30 s on GoogLeNet's 200 layers
def test_tfmot_quantizes_googlenet_except_the_rescaling(googlenet_8s):
    """``quantize_model`` rejects ``normalize`` (Rescaling, see test_models_fcn_vgg); the rest quantizes."""
    import tensorflow_model_optimization as tfmot

    others = [layer.name for layer in googlenet_8s.layers if layer.name not in ("image", "normalize")]
    annotated = _wrap_all_but_normalize(googlenet_8s, tfmot.quantization.keras.quantize_annotate_layer)
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    assert [layer.name for layer in qat.layers] == ["image", "normalize"] + [f"quant_{name}" for name in others]
    out = qat(images((1, 40, 64, 3), seed=3)).numpy()
    assert out.shape == (1, 40, 64, 3) and np.isfinite(out).all()
