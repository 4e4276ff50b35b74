"""FCN-ResNet and DeepLabV3: shapes, endpoints, parameter counts, rebuilding, TFLite and TF-MOT."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

from tfseg._keras import keras, tf
from tfseg.models import endpoints
from tfseg.models.common import copy_weights, with_input_shape
from tfseg.models.deeplab import build_deeplabv3
from tfseg.models.fcn_resnet import build_fcn_resnet

# shared/ beside the checkout (not in the repository; the loading check is skipped without it)
TFSLIM_NPY = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_1.0_224_imagenet_tfslim_npy"


def _images(n=2, size=(64, 64), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *size, 3)).astype("float32")


@pytest.fixture(scope="module")
def deeplab18():
    """A small DeepLabV3-ResNet18 (64x64, 3 classes, 16 ASPP filters) with non-default BN
    statistics, so that a weight that is not carried over changes the outputs. Do not modify."""
    model = build_deeplabv3((64, 64, 3), num_classes=3, **DEEPLAB18)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
    return model


DEEPLAB18 = {"backbone": "resnet18", "aspp_filters": 16}


def _endpoint_shapes(model):
    return {name: layer.output_shape for name, layer in endpoints(model).items()}


def test_fcn_resnet18_outputs_logits_at_input_resolution():
    model = build_fcn_resnet((64, 96, 3), num_classes=3, depth=18, output_stride=8)
    assert model.name == "fcn_resnet18_os8"
    assert _endpoint_shapes(model) == {
        "low_level": (None, 16, 24, 64),
        "features": (None, 8, 12, 512),
        "decoder": (None, 8, 12, 128),  # torchvision's FCNHead width: in_channels // 4
        "logits": (None, 64, 96, 3),
    }
    assert model.layers[-1].name == "logits" and isinstance(model.layers[-1], keras.layers.UpSampling2D)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)  # flat graph
    out = model(_images(size=(64, 96)), training=False).numpy()
    assert out.shape == (2, 64, 96, 3) and np.isfinite(out).all()


@pytest.mark.parametrize("output_stride, rates", [(16, (6, 12, 18)), (8, (12, 24, 36))])
def test_deeplabv3_resnet18_aspp_layout(output_stride, rates):
    model = build_deeplabv3(
        (64, 96, 3), num_classes=4, backbone="resnet18", output_stride=output_stride, aspp_filters=32
    )
    feature_hw = (64 // output_stride, 96 // output_stride)
    assert _endpoint_shapes(model) == {
        "low_level": (None, 16, 24, 64),
        "features": (None, *feature_hw, 512),
        "decoder": (None, *feature_hw, 32),
        "logits": (None, 64, 96, 4),
    }
    assert [model.get_layer(f"aspp_b{i}_conv").dilation_rate for i in (1, 2, 3)] == [(r, r) for r in rates]
    assert model.get_layer("aspp_b0_conv").kernel_size == (1, 1)
    assert model.get_layer("aspp_pool_gap").output_shape == (None, 1, 1, 512)
    assert model.get_layer("aspp_pool_up").output_shape == (None, *feature_hw, 32)
    assert model.get_layer("aspp_concat").output_shape == (None, *feature_hw, 5 * 32)
    out = model(_images(size=(64, 96)), training=False).numpy()
    assert out.shape == (2, 64, 96, 4) and np.isfinite(out).all()


def _trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# Keras' ResNet-50 convolutions have biases, torchvision's do not: one per output channel of
# conv1, of each block's three convolutions and of each stage's projection shortcut.
KERAS_RESNET50_BIASES = 64 + sum(
    blocks * (2 * width + 4 * width) + 4 * width
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3))
)


def test_resnet50_models_at_360x480_match_torchvision_parameter_counts():
    """360x480 builds (padded to the stride and cropped back), and with 21 classes the trainable
    parameters equal torchvision's published counts minus its auxiliary head plus Keras' biases."""
    assert KERAS_RESNET50_BIASES == 26_560
    aux_head = 9 * 1024 * 256 + 2 * 256 + 256 * 21 + 21  # torchvision FCNHead(1024, 21), train-time only

    fcn = build_fcn_resnet((360, 480, 3), num_classes=21, depth=50, output_stride=8)
    assert fcn.output_shape == (None, 360, 480, 21)
    assert fcn.get_layer("features").output_shape == (None, 45, 60, 2048)
    assert _trainable(fcn) == 35_322_218 - aux_head + KERAS_RESNET50_BIASES  # torchvision fcn_resnet50

    deeplab = build_deeplabv3((360, 480, 3), num_classes=21, backbone="resnet50", output_stride=16)
    assert deeplab.output_shape == (None, 360, 480, 21)
    assert deeplab.get_layer("pad_to_stride").output_shape == (None, 368, 480, 3)
    assert deeplab.get_layer("features").output_shape == (None, 23, 30, 2048)
    assert isinstance(deeplab.get_layer("logits"), keras.layers.Cropping2D)
    head_conv = 9 * 256 * 256 + 2 * 256  # torchvision DeepLabHead's extra 3x3 conv-BN
    assert _trainable(deeplab) == 42_004_074 - aux_head - head_conv + KERAS_RESNET50_BIASES


def test_padding_to_the_stride_is_cropped_away_exactly():
    """A fixed size that does not divide by the stride gives the same logits as the divisible
    size on the pixels both see, except near the padded border."""
    small = build_fcn_resnet((56, 64, 3), num_classes=2, depth=18, output_stride=16)  # 56 -> 64
    big = build_fcn_resnet((64, 64, 3), num_classes=2, depth=18, output_stride=16)
    copy_weights(small, big)
    x = _images(1)
    x[:, 56:] = np.array([123.68, 116.779, 103.939], np.float32)  # the mean pixel == zero padding
    assert small.output_shape == (None, 56, 64, 2)
    np.testing.assert_allclose(small(x[:, :56]).numpy(), big(x).numpy()[:, :56], rtol=1e-4, atol=1e-4)


def test_deeplabv3_needs_a_fixed_size_unless_image_pooling_is_off():
    with pytest.raises(ValueError, match="needs a fixed input size.*with_input_shape.*image_pooling=False"):
        build_deeplabv3((None, None, 3), num_classes=2, backbone="resnet18")
    model = build_deeplabv3((None, None, 3), num_classes=2, backbone="resnet18", image_pooling=False, aspp_filters=16)
    assert "aspp_pool_gap" not in {layer.name for layer in model.layers}
    assert model(_images(1, (64, 96))).shape == (1, 64, 96, 2)
    assert model(_images(1, (32, 32))).shape == (1, 32, 32, 2)


def test_with_input_shape_keeps_every_weight(deeplab18):
    same = with_input_shape(deeplab18, (64, 64, 3), build_deeplabv3, **DEEPLAB18)
    x = _images(1)
    np.testing.assert_allclose(same(x).numpy(), deeplab18(x).numpy(), rtol=1e-5, atol=1e-5)
    bigger = with_input_shape(deeplab18, (72, 96, 3), build_deeplabv3, **DEEPLAB18)
    assert bigger.output_shape == (None, 72, 96, 3)
    assert bigger.get_layer("aspp_pool_up").output_shape[1:3] == (5, 6)  # 72 padded to 80, /16
    np.testing.assert_array_equal(bigger.get_layer("aspp_proj_bn").moving_variance.numpy(), 2.0)


def test_copy_weights_refuses_models_that_do_not_match(deeplab18):
    inputs = keras.Input((8, 8, 16))
    other = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="classifier")(inputs))  # 16 -> 5, not 3
    before = other.get_layer("classifier").get_weights()
    expected = r"cannot copy.*missing in target \['conv1_conv'.*shapes differ \['classifier'\]"
    with pytest.raises(ValueError, match=expected):
        copy_weights(deeplab18, other)
    np.testing.assert_array_equal(other.get_layer("classifier").get_weights()[0], before[0])


def test_bad_deeplab_arguments_are_named():
    with pytest.raises(ValueError, match="unknown DeepLabV3 backbone 'vgg'.*mobilenet_v2"):
        build_deeplabv3((64, 64, 3), 2, backbone="vgg")
    with pytest.raises(ValueError, match="alpha .* mobilenet_v2 only"):
        build_deeplabv3((64, 64, 3), 2, backbone="resnet18", alpha=0.5)
    with pytest.raises(ValueError, match="ASPP has rates for output strides"):
        build_deeplabv3((64, 64, 3), 2, backbone="resnet18", output_stride=4)


def test_deeplabv3_mobilenet_v2_endpoints_and_tfslim_weights():
    weights = str(TFSLIM_NPY) if TFSLIM_NPY.is_dir() else None
    model = build_deeplabv3((64, 64, 3), num_classes=3, backbone="mobilenet_v2", weights=weights, aspp_filters=16)
    assert model.name == "deeplabv3_mobilenet_v2_a100_os16"
    assert _endpoint_shapes(model) == {
        "low_level": (None, 16, 16, 24),
        "features": (None, 4, 4, 320),  # block_16_project_BN, no Conv_1
        "decoder": (None, 4, 4, 16),
        "logits": (None, 64, 64, 3),
    }
    assert model.get_layer("normalize").get_config()["scale"] == pytest.approx(1 / 127.5)
    if weights is None:
        pytest.skip(f"MobileNetV2 arrays not found at {TFSLIM_NPY}: loading not checked")
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], np.load(TFSLIM_NPY / "Conv_weights.npy"))
    np.testing.assert_array_equal(
        model.get_layer("block_16_project_BN").moving_mean.numpy(),
        np.load(TFSLIM_NPY / "expanded_conv_16_project_BatchNorm_moving_mean.npy"),
    )


def test_preprocessing_and_aspp_layers_survive_keras_save_and_load(tmp_path):
    """The per-channel Rescaling offset and the (h, w) pooling factor are in the saved config
    (a small graph of the same layer types: loading a full ResNet only takes longer)."""
    from tfseg.models.heads import aspp
    from tfseg.models.resnet import preprocess_caffe

    inputs = keras.Input((16, 24, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", name="stem")(preprocess_caffe(inputs))
    model = keras.Model(inputs, aspp(x, filters=4, rates=(2,), dropout=0.0))
    x = _images(1, (16, 24))
    expected = model(x).numpy()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    assert loaded.get_layer("preprocess").get_config()["offset"] == [-123.68, -116.779, -103.939]
    assert loaded.get_layer("aspp_pool_up").size == (4, 6)
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_deeplabv3_converts_to_float_tflite_with_fused_dilated_convolutions(deeplab18):
    """With a fixed batch of 1 the converter turns every dilated conv (SpaceToBatch, conv,
    BatchToSpace in TF) into one CONV_2D and folds its BN. (Measured: ``from_keras_model`` with
    the dynamic batch leaves a SPACE_TO_BATCH_ND, BATCH_TO_SPACE_ND and MUL per dilated conv.)"""
    from ai_edge_litert.interpreter import Interpreter

    model = deeplab18
    x = _images(1)
    expected = model(x, training=False).numpy()
    spec = tf.TensorSpec((1, 64, 64, 3), tf.float32)
    function = tf.function(lambda images: model(images, training=False)).get_concrete_function(spec)
    flatbuffer = tf.lite.TFLiteConverter.from_concrete_functions([function], model).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert ops.count("CONV_2D") == len(convs)
    assert not {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND", "MUL"} & set(ops)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert out.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


# --- TF-MOT -------------------------------------------------------------------------------------


def test_tfmot_rejects_only_the_preprocessing_rescaling(deeplab18):
    """Whole-model ``prune_low_magnitude`` / ``quantize_model`` fail on the in-graph ``Rescaling``
    (not in TF-MOT's registries); this test notices when TF-MOT starts accepting it."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    unsupported = {layer.name for layer in deeplab18.layers[1:] if not PruneRegistry.supports(layer)}
    assert unsupported == {"preprocess"}
    # the same calls on a small graph with our preprocessing (a full model only takes longer to fail)
    from tfseg.models.resnet import preprocess_caffe

    inputs = keras.Input((8, 8, 3), name="image")
    tiny = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="conv")(preprocess_caffe(inputs)))
    with pytest.raises(ValueError, match="Please initialize `Prune` with a supported layer.*Rescaling"):
        tfmot.sparsity.keras.prune_low_magnitude(tiny)
    with pytest.raises(RuntimeError, match="Layer preprocess:.*Rescaling'> is not supported"):
        tfmot.quantization.keras.quantize_model(tiny)


def test_tfmot_prunes_every_convolution_when_rescaling_is_skipped(deeplab18):
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    sparsity = tfmot.sparsity.keras

    def wrap(layer):
        copy = layer.__class__.from_config(layer.get_config())
        return sparsity.prune_low_magnitude(copy) if PruneRegistry.supports(layer) else copy

    fcn = build_fcn_resnet((64, 64, 3), num_classes=3, depth=18, output_stride=16)
    for model in (fcn, deeplab18):
        pruned = keras.models.clone_model(model, clone_function=wrap)
        wrapped = {layer.layer.name for layer in pruned.layers if isinstance(layer, PruneLowMagnitude)}
        convs = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
        assert len(convs) > 20 and convs <= wrapped, model.name
        assert pruned(_images(1)).shape == (1, 64, 64, 3)
        stripped = sparsity.strip_pruning(pruned)
        assert [layer.name for layer in stripped.layers] == [layer.name for layer in model.layers], model.name


def test_deeplabv3_becomes_quantization_aware(deeplab18):
    from tfseg.quantize import quantize_aware

    qat = quantize_aware(deeplab18)
    names = {layer.name for layer in qat.layers}
    # conv-BN pairs are folded into one quantized conv; the ASPP pooling and upsampling are wrapped
    assert {"quant_aspp_b1_conv", "quant_aspp_pool_gap", "quant_aspp_pool_up", "quant_logits"} <= names
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in qat.layers)
    assert qat(_images(1)).shape == (1, 64, 64, 3)
