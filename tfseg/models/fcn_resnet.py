"""FCN on a dilated ResNet, as torchvision's ``fcn_resnet50`` / ``fcn_resnet101`` (without aux head)."""

from __future__ import annotations

from tfseg._keras import keras
from tfseg.models.common import image_input, pad_to_multiple
from tfseg.models.heads import fcn_head, upsampled_logits
from tfseg.models.pretrained import load_keras_h5
from tfseg.models.resnet import preprocess_caffe, resnet_backbone, resnet_out_channels


def resnet_features(input_shape, depth: int, output_stride: int):
    """Input, preprocessing, padding and ResNet backbone shared by the ResNet segmentation models.

    Returns ``(inputs, backbone endpoints, crop)``; ``crop`` undoes the padding of fixed-size
    inputs to a multiple of ``output_stride`` (``common.crop_padding``). The padding follows the
    preprocessing, so padded pixels are the mean colour (zero), not black.
    """
    inputs = image_input(input_shape)
    x = preprocess_caffe(inputs)
    x, crop = pad_to_multiple(x, output_stride)
    return inputs, resnet_backbone(x, depth=depth, output_stride=output_stride), crop


def load_resnet_weights(model, weights):
    """Loads keras-applications ResNet weights (a ``*_notop.h5`` path) into ``model``'s backbone.

    The RGB->BGR swap of "caffe" preprocessing is folded into ``conv1_conv`` by the loader.
    """
    if weights is None:
        return model
    load_keras_h5(model, weights, input_channel_flip="conv1_conv")
    return model


def build_fcn_resnet(
    input_shape=(None, None, 3),
    num_classes: int = 21,
    depth: int = 50,
    output_stride: int = 8,
    weights=None,
    head_filters=None,
    dropout: float = 0.1,
):
    """Builds an FCN (Long et al., 2015) head on a dilated ResNet, like torchvision's ``fcn_resnet50``.

    Layout: ``preprocess`` (ImageNet mean subtraction), ResNet ``conv1`` ... ``conv5`` with the
    last stages dilated to reach ``output_stride``, identity endpoints ``low_level`` and
    ``features``, the FCN head (3x3 conv-BN-ReLU ``head`` -> endpoint ``decoder``, dropout), a 1x1
    ``classifier`` and bilinear upsampling to the input size (``logits``). torchvision's auxiliary
    head is left out (train-time only).

    A fixed input size that does not divide by ``output_stride`` (360x480 at stride 16) is padded
    at the bottom/right after preprocessing and the logits are cropped back. With unknown sizes
    (None) any size builds, but height and width fed must divide by ``output_stride``, otherwise
    the output is larger than the input (rounded up to the multiple).

    Args:
      input_shape: (height, width, 3); float32 RGB in [0, 255].
      num_classes: output channels (logits).
      depth: ResNet depth: 18, 34, 50, 101 or 152.
      output_stride: 8 (torchvision's choice), 16 or 32.
      weights: None, or the path of keras-applications'
        ``resnet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5`` (depth 50/101/152), loaded by
        layer name into the backbone with ``conv1_conv``'s input channels flipped (BGR -> RGB).
      head_filters: channels of the head's 3x3 convolution; default: backbone channels // 4
        (512 for ResNet-50/101, 128 for ResNet-18/34), as torchvision.
      dropout: dropout rate in the head.

    Returns:
      A flat functional model named ``fcn_resnet{depth}_os{output_stride}`` from images to
      (H, W, num_classes) logits, with endpoints ``low_level``, ``features``, ``decoder``, ``logits``.

    Raises:
      ValueError: bad input shape, depth, output stride or class count.

    Example:
      >>> model = build_fcn_resnet((360, 480, 3), num_classes=11, depth=18, output_stride=8)
      >>> model.output_shape  # (None, 360, 480, 11)
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    inputs, feats, crop = resnet_features(input_shape, depth, output_stride)
    filters = head_filters or resnet_out_channels(depth) // 4
    y = fcn_head(feats["features"], filters, name="head", dropout=dropout, output_name="decoder")
    logits = upsampled_logits(y, num_classes, output_stride, crop)
    model = keras.Model(inputs, logits, name=f"fcn_resnet{depth}_os{output_stride}")
    return load_resnet_weights(model, weights)
