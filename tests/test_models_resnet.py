"""ResNet backbones: exactness against keras.applications, parameter counts, output strides."""

import numpy as np
import pytest

from tfseg._keras import keras
from tfseg.models import resnet
from tfseg.models.common import image_input

SIZE = 64


def _randomize(model, seed=0):
    """Random weights everywhere, BN moving statistics included (variances positive), so that a
    mis-mapped layer changes the outputs (fresh BN layers are identities)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = []
        for weight in layer.weights:
            shape = tuple(weight.shape)
            if "moving_variance" in weight.name:
                values.append(rng.uniform(0.5, 2.0, shape))
            elif "gamma" in weight.name:
                values.append(rng.uniform(0.5, 1.5, shape))
            elif len(shape) == 4:  # He-scaled kernels keep activations in range through 50 layers
                values.append(rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:3])), shape))
            else:
                values.append(rng.normal(0.0, 0.1, shape))
        if values:
            layer.set_weights([v.astype("float32") for v in values])


@pytest.fixture(scope="module")
def keras_resnet50():
    """keras.applications' ResNet50 (no top) at 64x64 with random weights, BN statistics included."""
    model = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    _randomize(model)
    return model


def test_resnet50_is_keras_applications_layer_for_layer(keras_resnet50):
    ref = keras_resnet50
    inputs = keras.Input((SIZE, SIZE, 3))
    feats = resnet.resnet_backbone(inputs, depth=50, output_stride=32, name_endpoints=False)
    ours = keras.Model(inputs, feats["features"])

    def layer_table(model):
        return [(layer.name, type(layer).__name__, [tuple(w.shape) for w in layer.weights])
                for layer in model.layers[1:]]  # without the input layer

    assert layer_table(ours) == layer_table(ref)  # same names, types, order, weight shapes
    assert ours.count_params() == ref.count_params() == 23_587_712
    for layer in ours.layers:
        if layer.weights:
            layer.set_weights(ref.get_layer(layer.name).get_weights())
    x = np.random.default_rng(1).normal(0.0, 60.0, (2, SIZE, SIZE, 3)).astype("float32")
    expected = ref(x).numpy()
    assert np.abs(expected).mean() > 0.1  # a live signal, not all zeros after 50 layers
    np.testing.assert_allclose(ours(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_keras_h5_weights_load_with_rgb_inputs_and_flipped_conv1(keras_resnet50, tmp_path):
    """The documented contract: our model on raw RGB == keras.applications on caffe-preprocessed
    input, once the loader has flipped conv1's input channels."""
    from tfseg.models.fcn_resnet import build_fcn_resnet

    h5 = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    keras_resnet50.save_weights(str(h5))
    model = build_fcn_resnet((SIZE, SIZE, 3), num_classes=3, depth=50, output_stride=32, weights=str(h5))
    np.testing.assert_array_equal(
        model.get_layer("conv1_conv").get_weights()[0],
        keras_resnet50.get_layer("conv1_conv").get_weights()[0][:, :, ::-1, :],
    )
    features = keras.Model(model.input, model.get_layer("features").output)
    rgb = np.random.default_rng(2).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    expected = keras_resnet50(keras.applications.resnet.preprocess_input(rgb.copy())).numpy()
    # Random BN statistics let activations grow to ~1e4; the two graphs sum in different orders
    # (mean subtraction before vs after the channel swap), so compare relative to that scale.
    scale = np.abs(expected).max()
    np.testing.assert_allclose(features(rgb).numpy(), expected, rtol=0, atol=2e-5 * scale)
    # a wrong channel order would be far off: the same check fails without the flip
    unflipped = keras_resnet50(keras.applications.resnet.preprocess_input(rgb[..., ::-1].copy())).numpy()
    assert np.abs(features(rgb).numpy() - unflipped).max() > 1e-2 * scale


def test_preprocess_subtracts_the_rgb_mean_inside_the_graph():
    model = resnet.build_resnet((32, 32, 3), depth=18)
    pixel = np.array([[[[123.68, 116.779, 103.939]], [[0.0, 0.0, 255.0]]]], np.float32)
    out = model.get_layer("preprocess")(pixel).numpy().reshape(2, 3)
    np.testing.assert_allclose(out, [[0, 0, 0], [-123.68, -116.779, 151.061]], atol=1e-4)


def test_resnet18_parameter_count_matches_torchvision():
    model = resnet.build_resnet((SIZE, SIZE, 3), depth=18)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    # torchvision resnet18: 11,689,512 parameters, minus the 512x1000 fc and its 1000 biases.
    assert trainable == 11_689_512 - 513_000
    # BN channels: conv1 64; stages 2-5: two BNs per block, two blocks, plus the projection BNs.
    bn_channels = 64 + 2 * 2 * (64 + 128 + 256 + 512) + (128 + 256 + 512)
    assert model.count_params() - trainable == 2 * bn_channels  # moving mean and variance
    assert model.count_params() == 11_186_112
    assert not [layer.name for layer in model.layers if getattr(layer, "use_bias", False)]


@pytest.mark.parametrize(
    "output_stride, features_hw, conv5_rate, conv4_rate", [(32, (2, 3), 1, 1), (16, (4, 6), 2, 1), (8, (8, 12), 4, 2)]
)
def test_output_stride_dilates_the_last_stages(output_stride, features_hw, conv5_rate, conv4_rate):
    inputs = image_input((SIZE, 96, 3))
    feats = resnet.resnet_backbone(resnet.preprocess_caffe(inputs), depth=18, output_stride=output_stride)
    model = keras.Model(inputs, feats["features"])
    assert tuple(feats["low_level"].shape[1:3]) == (16, 24)
    assert tuple(feats["s8"].shape[1:3]) == (8, 12)
    assert tuple(feats["features"].shape[1:]) == (*features_hw, 512)
    # first block of a dilated stage keeps the previous rate, the next ones take the new rate
    assert model.get_layer("conv5_block2_2_conv").dilation_rate == (conv5_rate, conv5_rate)
    assert model.get_layer("conv4_block2_2_conv").dilation_rate == (conv4_rate, conv4_rate)
    assert model.get_layer("conv5_block1_0_conv").strides == ((2, 2) if output_stride == 32 else (1, 1))
    # weight shapes do not depend on the output stride, so one set of weights fits all
    assert model.count_params() == 11_186_112  # as at stride 32 (test_resnet18_parameter_count...)


def test_bottleneck_dilation_keeps_keras_shapes_and_strides():
    inputs = keras.Input((SIZE, SIZE, 3))
    feats = resnet.resnet_backbone(inputs, depth=50, output_stride=8)
    model = keras.Model(inputs, feats["features"])
    assert model.output_shape == (None, 8, 8, 2048)
    assert model.get_layer("conv4_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv4_block1_2_conv").dilation_rate == (1, 1)
    assert model.get_layer("conv4_block2_2_conv").dilation_rate == (2, 2)
    assert model.get_layer("conv5_block1_2_conv").dilation_rate == (2, 2)
    assert model.get_layer("conv5_block3_2_conv").dilation_rate == (4, 4)
    assert model.count_params() == 23_587_712


def test_strided_basic_block_samples_like_its_shortcut():
    """Explicit (1, 1) padding centres the strided 3x3 conv on the pixels the 1x1 stride-2
    shortcut reads (torchvision's padding=1), which padding="same" would shift by one."""
    inputs = keras.Input((8, 8, 64))
    out = resnet._basic_block(inputs, 128, stride=2, dilation=1, conv_shortcut=True, name="b")
    model = keras.Model(inputs, out)
    probe = keras.Model(inputs, [model.get_layer("b_1_conv").output, model.get_layer("b_0_conv").output])
    for name, tap in (("b_1_conv", (1, 1)), ("b_0_conv", (0, 0))):  # 3x3 centre tap, 1x1 tap
        layer = model.get_layer(name)
        kernel = np.zeros(layer.get_weights()[0].shape, np.float32)
        kernel[tap[0], tap[1], 0, 0] = 1.0  # output channel 0 copies input channel 0
        layer.set_weights([kernel])
    x = np.random.default_rng(3).normal(size=(1, 8, 8, 64)).astype("float32")
    main, skip = (t.numpy()[..., 0] for t in probe(x))
    np.testing.assert_allclose(main, skip, atol=1e-6)
    np.testing.assert_allclose(main[0], x[0, ::2, ::2, 0], atol=1e-6)


def test_bad_resnet_arguments_are_named():
    inputs = keras.Input((SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="depth must be one of .*18.*50"):
        resnet.resnet_backbone(inputs, depth=42)
    with pytest.raises(ValueError, match="output_stride must be one of"):
        resnet.resnet_backbone(inputs, depth=18, output_stride=4)
