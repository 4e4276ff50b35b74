"""GoogLeNet (Inception v1, Szegedy et al., CVPR 2015) as a fully convolutional "GoogLeNet-8s".

The FCN paper (Long et al., 2015, Table 1) compares VGG16 with a GoogLeNet made fully
convolutional: the final average pooling and the auxiliary classifiers are dropped and the class
scores come from a 1x1 convolution on ``inception_5b``. Here that scoring is extended with the
FCN-16s/8s skips from the stride-16 (``inception_4e``) and stride-8 (``inception_3b``) outputs,
using the same head as ``fcn_vgg`` (zero-initialised skip scores, bilinear-initialised learnable
Conv2DTranspose upsampling).

Differences from the published network, and why:

- Batch normalisation after every convolution (conv without bias, BN, ReLU) instead of the two
  local response normalisation layers: BN trains from scratch reliably, folds into the
  convolutions for TFLite and is accepted by TF-MOT's quantization (conv + BN + ReLU); LRN is not.
- 'same' padding and max pools with 'same' padding (Caffe pools round up; same sizes for even
  inputs), with the input padded to a multiple of 32 and the logits cropped back, so the skips line
  up exactly (see ``fcn_vgg``).
- No auxiliary classifiers (an FCN trains with the final loss only, as in the FCN paper).

The inception modules keep the published filter counts (Szegedy et al., Table 1), including the
single 5x5 convolution of the 5x5 branch.
"""

from __future__ import annotations

import os

from tfseg._keras import keras
from tfseg.models.common import conv_bn_relu, crop_padding, image_input, normalize, pad_to_multiple
from tfseg.models.fcn_vgg import FCN_STRIDE, check_fcn_arguments, fcn_decoder

layers = keras.layers

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection), Szegedy et al. 2015, Table 1.
INCEPTION_V1_MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def inception_module(x, name: str, filters, output_name=None):
    """One Inception v1 module: 1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated.

    Layers are named ``inception_{name}_{branch}_conv|_bn|_relu`` and ``inception_{name}_output``
    (or ``output_name``) for the concatenation.
    """
    f1, f3r, f3, f5r, f5, fp = filters
    prefix = f"inception_{name}"
    b1 = conv_bn_relu(x, f1, f"{prefix}_1x1", kernel_size=1)
    b3 = conv_bn_relu(x, f3r, f"{prefix}_3x3_reduce", kernel_size=1)
    b3 = conv_bn_relu(b3, f3, f"{prefix}_3x3", kernel_size=3)
    b5 = conv_bn_relu(x, f5r, f"{prefix}_5x5_reduce", kernel_size=1)
    b5 = conv_bn_relu(b5, f5, f"{prefix}_5x5", kernel_size=5)
    bp = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{prefix}_pool")(x)
    bp = conv_bn_relu(bp, fp, f"{prefix}_pool_proj", kernel_size=1)
    return layers.Concatenate(name=output_name or f"{prefix}_output")([b1, b3, b5, bp])


def googlenet_features(x):
    """The GoogLeNet trunk up to ``inception_5b`` (stride 32).

    Returns:
      ``{"3b": stride 8, "4e": stride 16, "5b": stride 32}`` tensors. Endpoints: ``low_level``
      (conv2 3x3 after ReLU, stride 4, 192 channels) and ``features`` (the 5b concatenation).
    """
    x = conv_bn_relu(x, 64, "conv1_7x7_s2", kernel_size=7, strides=2)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1_3x3_s2")(x)
    x = conv_bn_relu(x, 64, "conv2_3x3_reduce", kernel_size=1)
    x = conv_bn_relu(x, 192, "conv2_3x3", kernel_size=3, output_name="low_level")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2_3x3_s2")(x)
    outputs = {}
    for name, filters in INCEPTION_V1_MODULES.items():
        if name in ("4a", "5a"):
            x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"pool{name[0]}_3x3_s2")(x)
        x = inception_module(x, name, filters, output_name="features" if name == "5b" else None)
        if name in ("3b", "4e", "5b"):
            outputs[name] = x
    return outputs


def build_googlenet_fcn(
    input_shape=(None, None, 3),
    num_classes: int = 21,
    variant: str = "8s",
    dropout: float = 0.4,
    weights=None,
):
    """Builds GoogLeNet-FCN (Inception v1 with BN, FCN-32s/16s/8s head).

    Args:
      input_shape: (height, width, 3). A fixed size need not divide by 32 (the input is padded
        and the logits cropped); with ``None`` height or width, feed sizes divisible by 32.
      num_classes: output channels (logits).
      variant: "32s", "16s" (skip from inception_4e) or "8s" (also inception_3b).
      dropout: rate of ``drop5`` before the class scores (0.4 as in GoogLeNet).
      weights: None, or weights written by ``save_weights`` (an ``.h5`` file, checked strictly,
        or a TF checkpoint prefix) from a model built with the same arguments: there are no
        ImageNet weights for this batch-normalised variant.

    Returns:
      A functional model from float32 [0, 255] RGB images to (H, W, num_classes) logits, with the
      endpoints ``low_level`` (stride 4), ``features`` (inception_5b, stride 32) and ``logits``.
      There is no ``decoder`` endpoint: the head has no feature layer between ``features`` and
      the class scores.

    Raises:
      ValueError: unknown variant, non-positive num_classes, a bad input shape, or a weights file
        that does not fit the model (the message names the file).
      FileNotFoundError: ``weights`` names no file.

    Example:
      >>> model = build_googlenet_fcn((360, 480, 3), num_classes=11)
      >>> model.output_shape
      (None, 360, 480, 11)
    """
    check_fcn_arguments("GoogLeNet-FCN", num_classes, variant)
    if weights is not None:
        weights = _check_weights_path(weights)  # before the (slow) build
    inputs = image_input(input_shape)
    x = normalize(inputs)
    x, crop = pad_to_multiple(x, FCN_STRIDE)
    trunk = googlenet_features(x)
    x = layers.Dropout(dropout, name="drop5")(trunk["5b"])
    score_fr = layers.Conv2D(num_classes, 1, kernel_initializer="zeros", name="score_fr")(x)
    x = fcn_decoder(score_fr, [("4e", trunk["4e"]), ("3b", trunk["3b"])], num_classes, variant)
    x = crop_padding(x, crop)
    logits = layers.Activation("linear", name="logits")(x)
    model = keras.Model(inputs, logits, name=f"googlenet_fcn{variant}")
    if weights is not None:
        _load_own_weights(model, weights)
    return model


def _check_weights_path(path) -> str:
    path = os.fspath(path)
    if not (os.path.isfile(path) or os.path.isfile(path + ".index")):  # .h5 file or TF checkpoint prefix
        raise FileNotFoundError(
            f"GoogLeNet-FCN weights {path!r}: no such file (no pretrained GoogLeNet weights ship with "
            "tfseg; pass a file written by model.save_weights for the same architecture, or None)"
        )
    return path


def _load_own_weights(model, path):
    try:
        model.load_weights(path)
    except Exception as error:  # h5py/TF raise many types for unreadable or mismatched files
        raise ValueError(
            f"GoogLeNet-FCN weights {path!r} cannot be loaded into {model.name} "
            f"({type(error).__name__}: {error})"
        ) from error
