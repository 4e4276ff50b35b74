"""DeepLabV3 (Chen et al., 2017): ASPP on a dilated ResNet or MobileNetV2, and rebuilding at another size.

DeepLabV3's image-pooling branch broadcasts a pooled vector back to the feature map with an
``UpSampling2D`` whose factor is the feature size, so the model is built for one input size
(``Resizing`` would be dynamic, but TF-MOT rejects it). To use trained weights at another size,
rebuild with the same builder options and copy the weights by layer name::

    train_model = build_deeplabv3((256, 256, 3), 11, backbone="resnet18")
    ...  # fit
    eval_model = with_input_shape(train_model, (360, 480, 3), build_deeplabv3, backbone="resnet18")

A rebuild from ``model.get_config()`` would not do: besides the input shape, the pooling factor,
the stride padding and the final crop all depend on the size. ``with_input_shape`` works for every
tfseg builder.
"""

from __future__ import annotations

from tfseg._keras import keras
from tfseg.models import heads
from tfseg.models.common import image_input, normalize, pad_to_multiple
from tfseg.models.fcn_resnet import load_resnet_weights, resnet_features
from tfseg.models.mobilenet_v2 import mobilenet_v2_backbone
from tfseg.models.pretrained import load_tfslim_mobilenet_v2

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2")


def _mobilenet_v2_features(input_shape, alpha, output_stride):
    inputs = image_input(input_shape)
    x = normalize(inputs)  # MobileNetV2 weights expect [-1, 1]
    x, crop = pad_to_multiple(x, output_stride)
    feats = mobilenet_v2_backbone(x, alpha=alpha, output_stride=output_stride, name_endpoints=True)
    return inputs, feats, crop


def build_deeplabv3(
    input_shape=(None, None, 3),
    num_classes: int = 21,
    backbone: str = "resnet50",
    output_stride: int = 16,
    alpha: float = 1.0,
    weights=None,
    aspp_filters: int = 256,
    aspp_rates=None,
    image_pooling: bool = True,
    dropout: float = 0.1,
):
    """Builds DeepLabV3: ASPP on a dilated backbone, a 1x1 classifier, bilinear upsampling.

    Layout: backbone (``preprocess`` + ResNet, or ``normalize`` + MobileNetV2 without its last
    1x1 conv), its ``features`` endpoint, ASPP (``aspp_*`` layers; its projection ReLU is the
    ``decoder`` endpoint), a 1x1 ``classifier`` and bilinear upsampling by ``output_stride`` to the
    input size (``logits``). This is the paper's DeepLabV3 head; torchvision's ``DeepLabHead`` adds
    a 3x3 conv-BN-ReLU between ASPP and classifier (about 0.6 M parameters more).

    Input size: with ``image_pooling`` (the default) the input size must be fixed (see the module
    docstring for rebuilding at another size). A fixed size that does not divide by
    ``output_stride`` (360x480 at 16) is padded after normalisation and the logits cropped back.

    Args:
      input_shape: (height, width, 3); float32 RGB in [0, 255].
      num_classes: output channels (logits).
      backbone: one of ``BACKBONES``.
      output_stride: 8, 16 or 32 (ASPP rates 12/24/36, 6/12/18, 3/6/9 unless ``aspp_rates``).
      alpha: MobileNetV2 width multiplier (must stay 1.0 for ResNets).
      weights: None, or pretrained backbone weights: for ResNet-50/101/152 the path of
        keras-applications' ``resnet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5``
        (``pretrained.load_keras_h5`` with ``conv1_conv``'s input channels flipped, BGR -> RGB;
        keras.applications has no ResNet-18/34, and any other file is read the same way);
        for MobileNetV2 (alpha 1.0) the directory of TF-Slim ``.npy`` arrays
        (``pretrained.load_tfslim_mobilenet_v2``).
      aspp_filters: channels of the ASPP branches and projection.
      aspp_rates: atrous rates overriding the output-stride default; ``()`` keeps only the 1x1
        and pooling branches (DeepLab's lighter MobileNetV2 setting).
      image_pooling: include ASPP's image-pooling branch; without it any input size builds
        (height and width fed must then divide by ``output_stride``).
      dropout: dropout rate after the ASPP projection.

    Returns:
      A flat functional model named ``deeplabv3_{backbone}_os{output_stride}`` (MobileNetV2:
      ``deeplabv3_mobilenet_v2_a{100 * alpha}_os{output_stride}``) from images to
      (H, W, num_classes) logits, with endpoints ``low_level``, ``features``, ``decoder``, ``logits``.

    Raises:
      ValueError: unknown backbone, bad output stride, alpha for a ResNet, image pooling with an
        unknown input size, bad input shape.

    Example:
      >>> model = build_deeplabv3((360, 480, 3), num_classes=11, backbone="mobilenet_v2", alpha=0.5)
      >>> model.output_shape  # (None, 360, 480, 11)
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown DeepLabV3 backbone {backbone!r}; available: {', '.join(BACKBONES)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    rates = heads.aspp_rates(output_stride) if aspp_rates is None else tuple(aspp_rates)
    if image_pooling and None in tuple(input_shape)[:2]:
        raise ValueError(
            f"DeepLabV3 with image pooling needs a fixed input size, got input_shape={tuple(input_shape)}: "
            "build at the training crop size and use tfseg.models.with_input_shape for other "
            "sizes, or pass image_pooling=False"
        )
    if backbone == "mobilenet_v2":
        inputs, feats, crop = _mobilenet_v2_features(input_shape, alpha, output_stride)
        name = f"deeplabv3_mobilenet_v2_a{round(alpha * 100)}_os{output_stride}"
    else:
        if alpha != 1.0:
            raise ValueError(f"alpha (width multiplier) applies to mobilenet_v2 only, got {alpha} for {backbone}")
        inputs, feats, crop = resnet_features(input_shape, int(backbone[len("resnet"):]), output_stride)
        name = f"deeplabv3_{backbone}_os{output_stride}"
    y = heads.aspp(
        feats["features"], aspp_filters, rates, name="aspp", image_pooling=image_pooling, dropout=dropout,
        output_name="decoder",
    )
    logits = heads.upsampled_logits(y, num_classes, output_stride, crop)
    model = keras.Model(inputs, logits, name=name)
    if weights is not None:
        if backbone == "mobilenet_v2":
            load_tfslim_mobilenet_v2(model, weights)
        else:
            load_resnet_weights(model, weights)
    return model


__all__ = ["BACKBONES", "build_deeplabv3"]
