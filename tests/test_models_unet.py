import numpy as np
import pytest

from tfseg import models
from tfseg._keras import keras


def test_unet_outputs_logits_at_input_resolution_with_named_layers():
    model = models.build("unet", (64, 96, 3), num_classes=4, depth=3, width=4)
    assert model.output_shape == (None, 64, 96, 4)
    names = {layer.name for layer in model.layers}
    assert {"normalize", "enc1_a_conv", "bottleneck_b_bn", "dec1_concat", "logits"} <= names
    eps = models.endpoints(model)
    assert list(eps) == ["features", "decoder", "logits"]
    assert eps["features"].output_shape == (None, 8, 12, 32) and eps["decoder"].output_shape == (None, 64, 96, 4)
    # flat functional graph: no nested models (TF-MOT and filter surgery need that)
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)


def test_unet_parameter_count_matches_hand_count():
    d, w, c = 2, 4, 3
    model = models.build_unet((32, 32, 3), num_classes=c, depth=d, width=w)

    def conv_bn(cin, cout):  # conv without bias + BN (gamma, beta, mean, var)
        return 9 * cin * cout + 4 * cout

    expected = conv_bn(3, 4) + conv_bn(4, 4) + conv_bn(4, 8) + conv_bn(8, 8)  # encoder
    expected += conv_bn(8, 16) + conv_bn(16, 16)  # bottleneck
    expected += (4 * 16 * 8 + 8) + conv_bn(16, 8) + conv_bn(8, 8)  # level 2 up: transpose 2x2 + convs
    expected += (4 * 8 * 4 + 4) + conv_bn(8, 4) + conv_bn(4, 4)  # level 1
    expected += 4 * c + c  # 1x1 logits
    assert model.count_params() == expected


def test_unet_takes_sizes_not_divisible_by_its_stride():
    model = models.build_unet((360, 480, 3), num_classes=11, depth=4, width=4)
    assert model.output_shape == (None, 360, 480, 11)
    assert model.get_layer("pad_to_stride").output_shape == (None, 368, 480, 3)


def test_unet_normalizes_pixels_inside_the_graph():
    model = models.build_unet((16, 16, 3), num_classes=2, depth=1, width=2)
    out = model.get_layer("normalize")(np.array([[[[0.0, 127.5, 255.0]]]], dtype=np.float32)).numpy()
    np.testing.assert_allclose(out.ravel(), [-1.0, 0.0, 1.0], atol=1e-6)


def test_bad_model_arguments_are_named():
    with pytest.raises(ValueError, match="unknown model 'nope'.*unet"):
        models.build("nope", (32, 32, 3), 2)
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, 3\)"):
        models.build_unet((32, 32), num_classes=2)
