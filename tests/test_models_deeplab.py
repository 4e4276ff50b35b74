"""FCN-ResNet and DeepLabV3: shapes, endpoints, parameter counts, rebuilding, TFLite and TF-MOT."""

import os

import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.models import endpoints
from tfseg.models.deeplab import build_deeplabv3, copy_weights, with_input_shape
from tfseg.models.fcn_resnet import build_fcn_resnet

TFSLIM_NPY = os.environ.get(
    "TFSEG_MOBILENET_V2_NPY",
    os.path.join(os.path.dirname(__file__), "..", "..", "shared", "weights", "mobilenet_v2_1.0_224_imagenet_tfslim_npy"),
)


def _images(n=2, size=(64, 64), seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, *size, 3)).astype("float32")


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
    model = build_deeplabv3((64, 96, 3), num_classes=4, backbone="resnet18", output_stride=output_stride, aspp_filters=32)
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


# Keras' ResNet-50 convolutions have biases, torchvision's do not: 26,560 bias values more.
KERAS_RESNET50_BIASES = 64 + 3 * (64 + 64 + 256) + 256 + 4 * (128 + 128 + 512) + 512 + 6 * (256 + 256 + 1024) + 1024 + 3 * (512 + 512 + 2048) + 2048


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


def test_with_input_shape_keeps_every_weight():
    options = {"backbone": "resnet18", "aspp_filters": 16}
    model = build_deeplabv3((64, 64, 3), num_classes=3, **options)
    for layer in model.layers:  # non-default BN statistics too, so that a missed copy shows
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.full(layer.moving_variance.shape, 2.0, np.float32))
    same = with_input_shape(model, (64, 64, 3), build_deeplabv3, **options)
    x = _images(1)
    np.testing.assert_allclose(same(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    bigger = with_input_shape(model, (72, 96, 3), build_deeplabv3, **options)
    assert bigger.output_shape == (None, 72, 96, 3)
    assert bigger.get_layer("aspp_pool_up").output_shape[1:3] == (5, 6)  # 72 padded to 80, /16
    np.testing.assert_array_equal(bigger.get_layer("aspp_proj_bn").moving_variance.numpy(), 2.0)
    with pytest.raises(ValueError, match="cannot copy.*shapes differ.*aspp"):
        with_input_shape(model, (64, 64, 3), build_deeplabv3, backbone="resnet18", aspp_filters=8)


def test_bad_deeplab_arguments_are_named():
    with pytest.raises(ValueError, match="unknown DeepLabV3 backbone 'vgg'.*mobilenet_v2"):
        build_deeplabv3((64, 64, 3), 2, backbone="vgg")
    with pytest.raises(ValueError, match="alpha .* mobilenet_v2 only"):
        build_deeplabv3((64, 64, 3), 2, backbone="resnet18", alpha=0.5)
    with pytest.raises(ValueError, match="ASPP has rates for output strides"):
        build_deeplabv3((64, 64, 3), 2, backbone="resnet18", output_stride=4)


def test_deeplabv3_mobilenet_v2():
    model = build_deeplabv3((64, 64, 3), num_classes=3, backbone="mobilenet_v2", alpha=0.35, aspp_filters=16)
    assert model.name == "deeplabv3_mobilenet_v2_a35_os16"
    assert _endpoint_shapes(model) == {
        "low_level": (None, 16, 16, 8),
        "features": (None, 4, 4, 112),  # block_16_project_BN, no Conv_1
        "decoder": (None, 4, 4, 16),
        "logits": (None, 64, 64, 3),
    }
    assert model.get_layer("normalize").get_config()["scale"] == pytest.approx(1 / 127.5)


@pytest.mark.skipif(not os.path.isdir(TFSLIM_NPY), reason=f"MobileNetV2 arrays not found at {TFSLIM_NPY}")
def test_deeplabv3_mobilenet_v2_loads_the_tfslim_arrays():
    model = build_deeplabv3((64, 64, 3), num_classes=3, backbone="mobilenet_v2", weights=TFSLIM_NPY, aspp_filters=16)
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], np.load(os.path.join(TFSLIM_NPY, "Conv_weights.npy")))
    np.testing.assert_array_equal(
        model.get_layer("block_16_project_BN").moving_mean.numpy(),
        np.load(os.path.join(TFSLIM_NPY, "expanded_conv_16_project_BatchNorm_moving_mean.npy")),
    )


def test_deeplabv3_saves_loads_and_converts_to_float_tflite(tmp_path):
    model = build_deeplabv3((64, 64, 3), num_classes=3, backbone="resnet18", aspp_filters=16)
    x = _images(1)
    expected = model(x, training=False).numpy()
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(loaded(x).numpy(), expected, rtol=1e-5, atol=1e-5)

    from ai_edge_litert.interpreter import Interpreter

    flatbuffer = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert out.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-3 * np.abs(expected).max())


# --- TF-MOT -------------------------------------------------------------------------------------

tfmot = pytest.importorskip("tensorflow_model_optimization")


def _small_models():
    return {
        "fcn_resnet18": build_fcn_resnet((64, 64, 3), num_classes=3, depth=18, output_stride=16),
        "deeplabv3_resnet18": build_deeplabv3((64, 64, 3), num_classes=3, backbone="resnet18", aspp_filters=16),
    }


def test_tfmot_rejects_only_the_preprocessing_rescaling():
    """Whole-model ``prune_low_magnitude`` / ``quantize_model`` fail on the in-graph ``Rescaling``
    (not in TF-MOT's registries); this test notices when TF-MOT starts accepting it."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    model = build_deeplabv3((64, 64, 3), num_classes=3, backbone="resnet18", aspp_filters=16)
    with pytest.raises(ValueError, match="Please initialize `Prune` with a supported layer.*Rescaling"):
        tfmot.sparsity.keras.prune_low_magnitude(model)
    with pytest.raises(RuntimeError, match="Layer preprocess:.*Rescaling'> is not supported"):
        tfmot.quantization.keras.quantize_model(model)
    unsupported = {layer.name for layer in model.layers[1:] if not PruneRegistry.supports(layer)}
    assert unsupported == {"preprocess"}


def test_tfmot_prunes_every_convolution_when_rescaling_is_skipped():
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    sparsity = tfmot.sparsity.keras

    def wrap(layer):
        copy = layer.__class__.from_config(layer.get_config())
        return sparsity.prune_low_magnitude(copy) if PruneRegistry.supports(layer) else copy

    for name, model in _small_models().items():
        pruned = keras.models.clone_model(model, clone_function=wrap)
        wrapped = {layer.layer.name for layer in pruned.layers if isinstance(layer, sparsity.pruning_wrapper.PruneLowMagnitude)}
        convs = {layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)}
        assert convs and convs <= wrapped, name
        assert pruned(_images(1)).shape == (1, 64, 64, 3)
        stripped = sparsity.strip_pruning(pruned)
        assert [layer.name for layer in stripped.layers] == [layer.name for layer in model.layers], name


def test_tfmot_quantizes_deeplabv3_with_a_config_for_rescaling():
    qk = tfmot.quantization.keras

    class OutputOnly(qk.QuantizeConfig):
        """Quantize only the layer's output (what the int8 converter does with an input scaling)."""

        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [qk.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    model = build_deeplabv3((64, 64, 3), num_classes=3, backbone="resnet18", aspp_filters=16)

    def annotate(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.InputLayer):
            return copy
        config = OutputOnly() if isinstance(layer, keras.layers.Rescaling) else None
        return qk.quantize_annotate_layer(copy, config)

    annotated = keras.models.clone_model(model, clone_function=annotate)
    with qk.quantize_scope({"OutputOnly": OutputOnly}):
        qat = qk.quantize_apply(annotated)
    names = {layer.name for layer in qat.layers}
    # conv-BN pairs are folded into one quantized conv; the ASPP pooling and upsampling are wrapped
    assert {"quant_aspp_b1_conv", "quant_aspp_pool_gap", "quant_aspp_pool_up", "quant_logits"} <= names
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in qat.layers)
    assert qat(_images(1)).shape == (1, 64, 64, 3)
