import numpy as np

from tfseg._keras import keras
from tfseg.models.common import crop_padding, pad_to_multiple


def test_pad_to_stride_then_crop_gives_back_the_input_size_and_pixels():
    inputs = keras.Input((45, 60, 3))
    padded, crop = pad_to_multiple(inputs, 16)
    assert padded.shape[1:3] == (48, 64) and crop == ((0, 3), (0, 4))
    model = keras.Model(inputs, crop_padding(padded, crop))
    x = np.random.default_rng(0).normal(size=(1, 45, 60, 3)).astype("float32")
    np.testing.assert_array_equal(model(x).numpy(), x)  # padding is at the bottom/right only


def test_no_padding_layers_when_nothing_to_pad():
    inputs = keras.Input((64, 96, 3))
    padded, crop = pad_to_multiple(inputs, 32)
    assert padded is inputs and crop is None and crop_padding(padded, crop) is padded
    dynamic = keras.Input((None, None, 3))
    assert pad_to_multiple(dynamic, 32) == (dynamic, None)
