import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.models import endpoints
from tfseg.models.fcn_vgg import (
    CAFFE_RGB_MEAN,
    bilinear_upsample,
    bilinear_upsampling_kernel,
    build_fcn_vgg16,
)

VGG16_PARAMS = 14_714_688  # keras.applications.VGG16(include_top=False): 13 convs with bias


def conv_params(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def randomize_scores(model, seed=0):
    """The score layers are zero-initialised (the logits are 0); give them weights so outputs say something."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.startswith("score_"):
            layer.set_weights([rng.normal(0, 0.05, w.shape).astype(np.float32) for w in layer.get_weights()])


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


@pytest.mark.parametrize(
    "variant, upsampling, skips",
    [("32s", ["upscore32"], []), ("16s", ["upscore2", "upscore16"], ["score_pool4"]),
     ("8s", ["upscore2", "upscore_pool4", "upscore8"], ["score_pool4", "score_pool3"])],
)
def test_fcn_variants_output_logits_at_input_resolution(variant, upsampling, skips):
    model = build_fcn_vgg16((64, 96, 3), num_classes=3, variant=variant, fc_width=16)
    assert model.output_shape == (None, 64, 96, 3)
    assert model.predict(images((2, 64, 96, 3)), verbose=0).shape == (2, 64, 96, 3)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert "Model" not in kinds and "Functional" not in kinds and "Lambda" not in kinds
    names = [layer.name for layer in model.layers]
    assert [n for n in names if n.startswith("upscore")] == upsampling
    assert [n for n in names if n.startswith("score_") and n != "score_fr"] == skips
    eps = endpoints(model)
    assert list(eps) == ["low_level", "features", "decoder", "logits"]
    shapes = {name: layer.output_shape for name, layer in eps.items()}
    assert shapes == {
        "low_level": (None, 16, 24, 256), "features": (None, 2, 3, 512),
        "decoder": (None, 2, 3, 16), "logits": (None, 64, 96, 3),
    }


def test_fcn_with_unknown_input_size_runs_on_multiples_of_32():
    model = build_fcn_vgg16(num_classes=2, variant="8s", fc_width=8)
    assert model.output_shape == (None, None, None, 2)
    assert "pad_to_stride" not in [layer.name for layer in model.layers]
    assert model.predict(images((1, 64, 96, 3)), verbose=0).shape == (1, 64, 96, 2)
    assert model.predict(images((1, 32, 160, 3)), verbose=0).shape == (1, 32, 160, 2)


@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
def test_fcn_builds_for_camvid_size_by_padding_to_32_and_cropping(variant):
    model = build_fcn_vgg16((360, 480, 3), num_classes=11, variant=variant, fc_width=8)
    assert model.output_shape == (None, 360, 480, 11)
    assert model.get_layer("pad_to_stride").output_shape == (None, 384, 480, 3)
    assert model.get_layer("features").output_shape == (None, 12, 15, 512)
    assert model.get_layer("crop_to_input").cropping == ((0, 24), (0, 0))
    if variant != "32s":  # the upsampled scores line up with the skips without any offset
        assert model.get_layer("upscore2").output_shape == model.get_layer("score_pool4").output_shape
    if variant == "8s":
        assert model.get_layer("upscore_pool4").output_shape == (None, 48, 60, 11)
        assert model.get_layer("score_pool3").output_shape == (None, 48, 60, 11)


def test_padding_is_the_mean_pixel_at_the_bottom_and_is_cropped_away():
    padded_model = build_fcn_vgg16((40, 64, 3), num_classes=2, variant="8s", fc_width=8)
    randomize_scores(padded_model)
    assert "pad_to_stride" in [layer.name for layer in padded_model.layers]
    exact_model = build_fcn_vgg16((64, 64, 3), num_classes=2, variant="8s", fc_width=8)
    exact_model.set_weights(padded_model.get_weights())
    x = images((1, 40, 64, 3))
    mean_rows = np.broadcast_to(np.float32(CAFFE_RGB_MEAN), (1, 24, 64, 3))
    expected = exact_model(np.concatenate([x, mean_rows], axis=1), training=False).numpy()[:, :40]
    got = padded_model(x, training=False).numpy()
    assert np.abs(got).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_parameter_counts_match_hand_counts():
    c, fc = 3, 8
    vgg = 0
    for cin, cout in [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                      (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]:
        vgg += conv_params(3, cin, cout)
    assert vgg == VGG16_PARAMS
    head = conv_params(7, 512, fc) + conv_params(1, fc, fc) + conv_params(1, fc, c)  # fc6, fc7, score_fr
    up = {f: conv_params(2 * f, c, c, bias=False) for f in (2, 8, 16, 32)}
    expected = {
        "32s": vgg + head + up[32],
        "16s": vgg + head + up[2] + conv_params(1, 512, c) + up[16],
        "8s": vgg + head + up[2] + conv_params(1, 512, c) + up[2] + conv_params(1, 256, c) + up[8],
    }
    for variant, count in expected.items():
        model = build_fcn_vgg16((64, 64, 3), num_classes=c, variant=variant, fc_width=fc)
        assert model.count_params() == count, variant


@pytest.fixture(scope="module")
def vgg_pair():
    """keras.applications' VGG16 and our FCN with its weights copied by name (block1_conv1 flipped to RGB)."""
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
    model = build_fcn_vgg16((64, 64, 3), num_classes=2, variant="32s", fc_width=8)
    return reference, model


def test_vgg16_layers_match_keras_applications(vgg_pair):
    reference, model = vgg_pair
    ref_layers = {layer.name: layer for layer in reference.layers if layer.weights}
    ours = {layer.name: layer for layer in model.layers if layer.name.startswith("block") and layer.weights}
    assert sorted(ours) == sorted(ref_layers) and len(ours) == 13
    assert sum(layer.count_params() for layer in ours.values()) == reference.count_params() == VGG16_PARAMS
    for name, layer in ours.items():
        assert [w.shape for w in layer.weights] == [w.shape for w in ref_layers[name].weights], name
    pools = [layer.name for layer in reference.layers if layer.name.endswith("_pool")]
    assert all(model.get_layer(name).pool_size == (2, 2) for name in pools)


def test_vgg16_features_equal_keras_applications_with_caffe_preprocessing(vgg_pair):
    reference, model = vgg_pair
    for layer in reference.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            if layer.name == "block1_conv1":  # caffe weights read BGR; our graph feeds RGB
                kernel = kernel[:, :, ::-1, :]
            model.get_layer(layer.name).set_weights([kernel, bias])
    x = images((2, 64, 64, 3), seed=1)
    expected = reference(keras.applications.vgg16.preprocess_input(x.copy()), training=False).numpy()
    got = model.get_layer("features").output
    got = keras.Model(model.input, got)(x, training=False).numpy()
    assert expected.shape == got.shape == (2, 2, 2, 512) and np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    # without the flip the features differ: the check above can fail
    kernel, bias = model.get_layer("block1_conv1").get_weights()
    model.get_layer("block1_conv1").set_weights([kernel[:, :, ::-1, :], bias])
    unflipped = keras.Model(model.input, model.get_layer("features").output)(x, training=False).numpy()
    assert not np.allclose(unflipped, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_keras_applications_h5_loads_by_name(vgg_pair, tmp_path):
    reference, _ = vgg_pair
    path = tmp_path / "vgg16_notop.h5"  # the layout of keras-applications' notop file
    reference.save_weights(path)
    model = build_fcn_vgg16((64, 64, 3), num_classes=2, variant="8s", fc_width=8)
    model.load_weights(path, by_name=True)
    for layer in reference.layers[1:]:  # after the input layer
        assert len(layer.get_weights()) == (2 if "conv" in layer.name else 0)
        for ours, theirs in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
            np.testing.assert_array_equal(ours, theirs)


def test_weights_argument_uses_the_pretrained_loader_with_the_channel_flip(vgg_pair, tmp_path):
    pytest.importorskip("tfseg.models.pretrained", reason="the keras-h5 loader is not in the tree yet")
    reference, _ = vgg_pair
    path = tmp_path / "vgg16_notop.h5"
    reference.save_weights(path)
    model = build_fcn_vgg16((64, 64, 3), num_classes=2, variant="32s", fc_width=8, weights=str(path))
    kernel = reference.get_layer("block1_conv1").get_weights()[0]
    np.testing.assert_array_equal(model.get_layer("block1_conv1").get_weights()[0], kernel[:, :, ::-1, :])
    np.testing.assert_array_equal(
        model.get_layer("block5_conv3").get_weights()[0], reference.get_layer("block5_conv3").get_weights()[0]
    )


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_initialisation_upsamples_bilinearly(factor):
    h, w = 3, 4
    inputs = keras.Input((h, w, 2))
    model = keras.Model(inputs, bilinear_upsample(inputs, factor, name="up"))
    ramp = np.arange(h * w, dtype=np.float32).reshape(1, h, w) * 10.0
    x = np.stack([ramp, np.full_like(ramp, 7.0)], axis=-1)  # a ramp and a constant channel
    got = model(x).numpy()
    expected = tf.image.resize(x, (h * factor, w * factor), "bilinear").numpy()  # half-pixel centres
    inner = slice(factor // 2, -(factor // 2))  # within factor/2 of the border the zero padding enters
    assert got.shape == (1, h * factor, w * factor, 2)
    np.testing.assert_allclose(got[:, inner, inner], expected[:, inner, inner], atol=1e-4)
    np.testing.assert_allclose(got[:, inner, inner, 1], 7.0, atol=1e-5)  # channels do not mix
    assert model.get_layer("up").trainable and not model.get_layer("up").use_bias


def test_bilinear_kernel_rejects_odd_factors():
    with pytest.raises(ValueError, match="even factor, got 3"):
        bilinear_upsampling_kernel(3, 1)


def test_fcn_starts_at_once_style_zero_scores_and_bilinear_upsampling():
    model = build_fcn_vgg16((64, 64, 3), num_classes=3, variant="8s", fc_width=8)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert not any(np.any(w) for w in model.get_layer(name).get_weights()), name
    for name, factor in (("upscore2", 2), ("upscore_pool4", 2), ("upscore8", 8)):
        np.testing.assert_array_equal(model.get_layer(name).get_weights()[0], bilinear_upsampling_kernel(factor, 3))
    assert not np.any(model.predict(images((1, 64, 64, 3)), verbose=0))


def test_bad_fcn_arguments_are_named():
    with pytest.raises(ValueError, match="variant must be one of 32s, 16s, 8s, got '4s'"):
        build_fcn_vgg16((64, 64, 3), num_classes=2, variant="4s")
    with pytest.raises(ValueError, match="fc_width must be positive"):
        build_fcn_vgg16((64, 64, 3), num_classes=2, fc_width=0)
    with pytest.raises(ValueError, match="num_classes must be positive"):
        build_fcn_vgg16((64, 64, 3), num_classes=0)


@pytest.fixture(scope="module")
def small_fcn8s():
    # 40 rows: padded to 64 and cropped back, so ZeroPadding2D and Cropping2D go through TF-MOT too
    model = build_fcn_vgg16((40, 64, 3), num_classes=3, variant="8s", fc_width=64)
    randomize_scores(model)
    return model


def test_fcn8s_converts_to_float_tflite_with_equal_outputs(small_fcn8s):
    from ai_edge_litert.interpreter import Interpreter

    converter = tf.lite.TFLiteConverter.from_keras_model(small_fcn8s)
    interpreter = Interpreter(model_content=converter.convert())
    interpreter.allocate_tensors()
    x = images((1, 40, 64, 3), seed=2)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    expected = small_fcn8s(x, training=False).numpy()
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


def test_tfmot_rejects_only_the_rescaling_normalisation(small_fcn8s):
    """TF-MOT refuses the in-graph normalisation (Rescaling) and accepts every other layer.

    Pruning and QAT of the whole model need ``normalize`` left out (or a QuantizeConfig for it).
    """
    import tensorflow_model_optimization as tfmot

    with pytest.raises(ValueError, match="Please initialize `Prune` with a supported layer.*Rescaling"):
        tfmot.sparsity.keras.prune_low_magnitude(small_fcn8s)
    with pytest.raises(RuntimeError, match="Layer normalize:.*Rescaling'> is not supported"):
        tfmot.quantization.keras.quantize_model(small_fcn8s)

    def all_but_normalize(wrap):
        return keras.models.clone_model(
            small_fcn8s, clone_function=lambda layer: layer if layer.name == "normalize" else wrap(layer)
        )

    pruned = all_but_normalize(tfmot.sparsity.keras.prune_low_magnitude)
    wrapped = [layer.name for layer in pruned.layers if type(layer).__name__ == "PruneLowMagnitude"]
    others = [layer.name for layer in small_fcn8s.layers if layer.name not in ("image", "normalize")]
    assert {"pad_to_stride", "crop_to_input", "upscore8", "fuse_pool3", "logits"} <= set(others)
    assert wrapped == [f"prune_low_magnitude_{name}" for name in others]
    x = images((1, 40, 64, 3), seed=3)
    np.testing.assert_allclose(pruned(x), small_fcn8s(x, training=False), rtol=1e-4, atol=1e-4)

    with tfmot.quantization.keras.quantize_scope():
        annotated = all_but_normalize(tfmot.quantization.keras.quantize_annotate_layer)
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    assert [layer.name for layer in qat.layers] == ["image", "normalize"] + [f"quant_{name}" for name in others]
    out = qat(x).numpy()
    assert out.shape == (1, 40, 64, 3) and np.isfinite(out).all()
