"""The lightweight students: shapes, endpoints, parameter counts, TF-MOT and TFLite compatibility."""

from pathlib import Path

import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.models import common
from tfseg.models.lite import build_fastseg_tiny, build_mobilenet_v2_deeplabv3plus, build_mobilenet_v2_lraspp
from tfseg.models.mobilenet_v2 import mobilenet_v2_backbone

NPY_DIR = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_1.0_224_imagenet_tfslim_npy"
SHAPE = (64, 96, 3)
CLASSES = 3
VARIANTS = {
    "lraspp": lambda shape, classes: build_mobilenet_v2_lraspp(shape, classes, alpha=0.35),
    "fcn": lambda shape, classes: build_mobilenet_v2_lraspp(shape, classes, alpha=0.35, head="fcn"),
    "tiny": build_fastseg_tiny,
    "deeplabv3plus": lambda shape, classes: build_mobilenet_v2_deeplabv3plus(shape, classes, alpha=0.35),
}


@pytest.fixture(scope="module")
def students():
    """One small model per variant, shared (the tests only clone or call them)."""
    return {name: build(SHAPE, CLASSES) for name, build in VARIANTS.items()}


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (1,) + SHAPE).astype(np.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_students_give_logits_at_input_resolution_with_endpoints(students, images, variant):
    model = students[variant]
    assert model.output_shape == (None,) + SHAPE[:2] + (CLASSES,)
    assert model(images).shape == (1,) + SHAPE[:2] + (CLASSES,)
    eps = {name: layer.output_shape for name, layer in common.endpoints(model).items()}
    assert list(eps) == ["low_level", "features", "decoder", "logits"]
    assert eps["low_level"][1:3] == (16, 24)  # stride 4
    assert eps["features"][1:3] == (4, 6)  # stride 16
    assert eps["logits"] == model.output_shape
    assert model.layers[-1].name == "logits"
    kinds = {type(layer).__name__ for layer in model.layers}
    assert not kinds & {"Functional", "Model", "Lambda", "Resizing", "TFOpLambda"}  # flat, TF-MOT-safe
    assert ("Multiply" in kinds) == (variant == "lraspp")


def test_students_build_for_camvid_360x480_and_stay_small():
    counts = {}
    for name in ("lraspp", "tiny"):
        model = VARIANTS[name]((360, 480, 3), 11)
        assert model.output_shape == (None, 360, 480, 11), name
        # 360 does not divide by 16: padded to 368 at the start, cropped back at the end
        assert model.get_layer("pad_to_stride").output_shape[1:3] == (368, 480)
        assert model.get_layer("logits").cropping == ((0, 8), (0, 0))
        counts[name] = model.count_params()
    assert counts == {"lraspp": 292_646, "tiny": 193_291}
    assert counts["tiny"] < 1_000_000


def test_deeplabv3plus_skip_reads_stride_4_features_and_costs_under_a_tenth_of_the_teacher():
    from tfseg import models

    model = build_mobilenet_v2_deeplabv3plus((360, 480, 3), 11)
    # The decoder concatenates the ASPP output, upsampled 4x, with the projected stride-4 features.
    concat = model.get_layer("decoder_concat")
    assert [tuple(t.shape[1:]) for t in concat.input] == [(92, 120, 48), (92, 120, 16)]
    assert model.get_layer("decoder_low_conv").input.name.startswith("block_2_depthwise_relu")
    teacher = models.build("deeplabv3_mobilenet_v2", (360, 480, 3), 11)
    ratio = models.profile(model, tflite=False)["macs"] / models.profile(teacher, tflite=False)["macs"]
    assert 0.05 < ratio < 0.1
    with pytest.raises(ValueError, match="aspp_rates"):
        build_mobilenet_v2_deeplabv3plus((32, 32, 3), 2, aspp_rates=(0,))
    single_branch = build_mobilenet_v2_deeplabv3plus((32, 32, 3), 2, aspp_rates=())
    assert "aspp_concat" not in [layer.name for layer in single_branch.layers]


def test_lraspp_head_parameters_match_a_hand_count(students):
    c, h = CLASSES, 128
    inputs = keras.Input(SHAPE)
    backbone = keras.Model(inputs, mobilenet_v2_backbone(inputs, alpha=0.35, output_stride=16)["features"])
    f, low = 112, 16  # block_16 (320 * 0.35 -> 112) and block_5 (32 * 0.35 -> 16) channels
    fcn = f * h + 4 * h  # 1x1 conv without bias + BN
    fcn += h * c + c + low * c + c  # the two 1x1 classifiers
    gate = f * h + h  # 1x1 conv with bias after global pooling
    assert students["fcn"].count_params() == backbone.count_params() + fcn
    assert students["lraspp"].count_params() == backbone.count_params() + fcn + gate


def test_lraspp_weights_option(tmp_path):
    with pytest.raises(ValueError, match="arrays are for alpha 1.0, got alpha=0.35"):
        build_mobilenet_v2_lraspp((32, 32, 3), 2, alpha=0.35, weights=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_mobilenet_v2_lraspp((32, 32, 3), 2, weights=str(tmp_path / "missing.h5"))
    if not NPY_DIR.is_dir():
        pytest.skip(f"no TF-Slim arrays at {NPY_DIR}")
    model = build_mobilenet_v2_lraspp((32, 32, 3), 2, alpha=1.0, weights=str(NPY_DIR))
    np.testing.assert_array_equal(
        model.get_layer("block_16_project").kernel.numpy(), np.load(NPY_DIR / "expanded_conv_16_project_weights.npy")
    )


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="alpha must be one of"):
        build_mobilenet_v2_lraspp((32, 32, 3), 2, alpha=0.4)
    with pytest.raises(ValueError, match="head must be one of"):
        build_mobilenet_v2_lraspp((32, 32, 3), 2, head="aspp")
    with pytest.raises(ValueError, match="output_stride must be one of"):
        build_mobilenet_v2_lraspp((32, 32, 3), 2, output_stride=4)
    with pytest.raises(ValueError, match="low_level_stride must be 4 or 8"):
        build_mobilenet_v2_lraspp((32, 32, 3), 2, low_level_stride=2)
    with pytest.raises(ValueError, match="widths must be 4 positive"):
        build_fastseg_tiny((32, 32, 3), 2, widths=(8, 16, 32))
    with pytest.raises(ValueError, match="dilations"):
        build_fastseg_tiny((32, 32, 3), 2, dilations=())


def to_tflite_float(model, shape):
    # TFLiteConverter.from_keras_model gives the same ops but first writes a tf_keras SavedModel,
    # which traces every layer (20-60 s per model here); a concrete function converts in ~2 s.
    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec((1,) + shape, tf.float32))
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete]).convert()


def run_tflite(flatbuffer, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float_tflite_conversion_agrees_with_keras(students, images, variant):
    pytest.importorskip("ai_edge_litert")
    model = students[variant]
    expected = model(images).numpy()
    got = run_tflite(to_tflite_float(model, SHAPE), images)
    assert got.shape == expected.shape and np.abs(expected).max() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["lraspp", "tiny"])
def test_from_keras_model_converts(students, variant):
    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(students[variant]).convert()
    assert len(flatbuffer) > 100_000


# TF-MOT rejects the Rescaling layer of ``common.normalize`` ("Please initialize `Prune` with a
# supported layer"; quantize: "Layer normalize ... is not supported"; its prune registry lists
# ``Rescaling.__class__``, i.e. ``type``, by mistake). That layer belongs to every tfseg model and is
# for the pruning/quantization modules to handle; here every *other* layer is wrapped, so each
# layer type these builders use must be accepted.
def wrap_all_but_normalize(model, wrap, fresh=False):
    def clone(layer):
        if fresh:  # quantize_apply clones the model again; unbuilt copies avoid sharing weights
            layer = layer.__class__.from_config(layer.get_config())
        return layer if layer.name == "normalize" else wrap(layer)

    return keras.models.clone_model(model, clone_function=clone)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_prune_low_magnitude_accepts_every_layer(students, images, variant):
    import tensorflow_model_optimization as tfmot

    model = students[variant]
    pruned = wrap_all_but_normalize(model, tfmot.sparsity.keras.prune_low_magnitude)
    wrapped = [layer for layer in pruned.layers if type(layer).__name__ == "PruneLowMagnitude"]
    assert len(wrapped) == len(model.layers) - 2  # all but the input and normalize
    masks = [w for w in pruned.weights if "mask" in w.name]
    # one mask per Conv2D kernel; TF-MOT accepts DepthwiseConv2D but never prunes it (no prunable weights)
    convs = [layer for layer in model.layers if type(layer) is keras.layers.Conv2D]
    assert len(masks) == len(convs) > 0
    # the wrappers hold the original layers: same function before any pruning step
    np.testing.assert_allclose(pruned(images).numpy(), model(images).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["fcn", "tiny"])
def test_quantization_aware_training_accepts_every_layer(students, images, variant):
    import tensorflow_model_optimization as tfmot

    qk = tfmot.quantization.keras
    model = students[variant]
    with qk.quantize_scope():
        qat = qk.quantize_apply(wrap_all_but_normalize(model, qk.quantize_annotate_layer, fresh=True))
    quantized = [layer for layer in qat.layers if isinstance(layer, qk.QuantizeWrapper)]
    assert len(quantized) >= len(model.layers) // 2  # BN and ReLU fold into their conv, the rest is wrapped
    assert qat(images).shape == (1,) + SHAPE[:2] + (CLASSES,)
