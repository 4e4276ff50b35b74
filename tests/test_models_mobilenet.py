import numpy as np
import pytest

from tfseg._keras import keras
from tfseg.models import common
from tfseg.models.mobilenet_v2 import block_filters, make_divisible, mobilenet_v2_backbone


def backbone_model(input_shape, **options):
    inputs = keras.Input(input_shape)
    feats = mobilenet_v2_backbone(inputs, **options)
    return keras.Model(inputs, feats["features"]), feats


def weight_layout(model):
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers if layer.weights]


# alpha 1.0 is compared with keras.applications in test_models_pretrained (real weights, 180x240)
@pytest.mark.parametrize("alpha", [0.35])
def test_backbone_is_keras_applications_mobilenet_v2_layer_for_layer(alpha):
    ours, _ = backbone_model((224, 224, 3), alpha=alpha, output_stride=32, include_last_conv=True)
    ref = keras.applications.MobileNetV2(alpha=alpha, include_top=False, weights=None, input_shape=(224, 224, 3))
    # the same layers (pads, relus and adds included) in the same order, the same weights and shapes
    assert [layer.name for layer in ours.layers[1:]] == [layer.name for layer in ref.layers[1:]]
    assert weight_layout(ours) == weight_layout(ref)
    assert ours.count_params() == ref.count_params()
    for layer in ref.layers:
        if layer.weights:
            ours.get_layer(layer.name).set_weights(layer.get_weights())
    x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    expected = ref(x).numpy()
    assert expected.shape == (1, 7, 7, 1280) and expected.std() > 0
    np.testing.assert_allclose(ours(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_output_stride_uses_dilation_and_keeps_the_weights_layout():
    models = {}
    for os_ in (8, 16, 32):
        model, feats = backbone_model((64, 96, 3), alpha=0.35, output_stride=os_)
        models[os_] = model
        assert feats["features"].shape[1:] == (64 // os_, 96 // os_, 112)
        assert feats["low_level"].shape[1:] == (16, 24, 8)
        assert feats["s8"].shape[1:] == (8, 12, 16)
        assert feats["s16"].shape[1:] == (64 // min(16, os_), 96 // min(16, os_), 32)
    # pretrained weights fit every output stride
    assert weight_layout(models[8]) == weight_layout(models[16]) == weight_layout(models[32])

    def conv(model, name):
        layer = model.get_layer(name)
        return layer.strides[0], layer.dilation_rate[0]

    assert conv(models[32], "block_13_depthwise") == (2, 1)
    assert conv(models[16], "block_13_depthwise") == (1, 1)  # TF-Slim: the block reaching the stride keeps rate 1
    assert [conv(models[16], f"block_{i}_depthwise") for i in (14, 15, 16)] == [(1, 2)] * 3
    assert conv(models[8], "block_6_depthwise") == (1, 1)
    assert conv(models[8], "block_12_depthwise") == (1, 2)
    assert conv(models[8], "block_13_depthwise") == (1, 2)
    assert conv(models[8], "block_16_depthwise") == (1, 4)
    names16 = {layer.name for layer in models[16].layers}
    assert "block_6_pad" in names16 and "block_13_pad" not in names16


def test_fixed_odd_sizes_pad_like_unknown_sizes_ie_tfslim_same():
    # A fixed size uses keras.applications' correct_pad + "valid"; an unknown size uses "same".
    # Equal outputs at an odd size (45 -> 23 -> 12 ...) show that both are TF-Slim's SAME padding.
    fixed, feats = backbone_model((45, 61, 3), alpha=0.35, output_stride=32)
    free, _ = backbone_model((None, None, 3), alpha=0.35, output_stride=32)
    assert fixed.get_layer("block_1_pad").padding == ((1, 1), (1, 1))  # 23x31 input: odd
    assert "block_1_pad" not in {layer.name for layer in free.layers}
    assert feats["features"].shape[1:3] == (2, 2)
    free.set_weights(fixed.get_weights())
    x = np.random.default_rng(1).uniform(-1, 1, (1, 45, 61, 3)).astype(np.float32)
    np.testing.assert_allclose(free(x).numpy(), fixed(x).numpy(), rtol=1e-5, atol=1e-5)


def test_named_endpoints_are_identities_inside_the_graph():
    inputs = keras.Input((32, 32, 3))
    feats = mobilenet_v2_backbone(inputs, alpha=0.35, output_stride=16, name_endpoints=True)
    model = keras.Model(inputs, feats["features"])
    eps = common.endpoints(model)
    assert list(eps) == ["low_level", "features"]
    # block_3 reads the endpoint, so it is on the path and survives in a functional model
    assert model.get_layer("block_3_expand").input is eps["low_level"].output
    assert eps["features"].input is model.get_layer("block_16_project_BN").output


def test_channel_counts_and_bad_arguments():
    assert block_filters(1.0) == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    assert block_filters(0.35)[-1] == 112 and make_divisible(32 * 0.35) == 16
    inputs = keras.Input((32, 32, 3))
    with pytest.raises(ValueError, match="output_stride must be one of"):
        mobilenet_v2_backbone(inputs, output_stride=4)
    with pytest.raises(ValueError, match="alpha must be positive"):
        mobilenet_v2_backbone(inputs, alpha=0)
    with pytest.raises(ValueError, match="3 input channels"):
        mobilenet_v2_backbone(keras.Input((32, 32, 1)))
