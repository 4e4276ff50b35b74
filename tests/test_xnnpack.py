"""XNNPACK delegation reports: partitions, operators left outside, and every zoo student in one partition."""

import pytest

from tfseg import models
from tfseg._keras import keras
from tfseg.batchnorm import reestimate_batch_norm
from tfseg.tflite import interpreter, random_images, to_tflite_bytes
from tfseg.xnnpack import delegation, summary

layers = keras.layers

SHAPE = (16, 24, 3)
# The small segmentation models meant for devices (distillation students); the others are teachers.
STUDENTS = ("fastseg_tiny", "mobilenet_v2_lraspp", "mobilenet_v2_deeplabv3plus", "mobilenet_v2_fcn", "searched",
            "unet_small")
TEACHERS = ("unet", "fcn32s_vgg16", "fcn16s_vgg16", "fcn8s_vgg16", "googlenet_fcn8s", "fcn_resnet18", "fcn_resnet50",
            "fcn_resnet101", "deeplabv3_resnet18", "deeplabv3_resnet50", "deeplabv3_resnet101",
            "deeplabv3_mobilenet_v2")


def _tiny(pool):
    inputs = keras.Input(SHAPE, name="image")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = pool(x)
    x = layers.Conv2D(4, 3, padding="same", name="conv2")(x)
    x = layers.UpSampling2D(2, interpolation="bilinear", name="logits")(x)
    return keras.Model(inputs, x, name="tiny")


def test_float_and_int8_models_are_one_partition():
    model = _tiny(layers.MaxPooling2D(2, name="pool"))
    for quantization, io_dtype in ((None, "int8"), ("int8", "int8"), ("int8", "uint8")):
        flatbuffer = to_tflite_bytes(model, quantization, random_images(SHAPE, 2), input_shape=SHAPE, io_dtype=io_dtype)
        report = delegation(flatbuffer)
        assert report["single_partition"] and report["partitions"] == 1 and not report["outside"], report
        # uint8 I/O: the QUANTIZE ops converting the model's input and output are edges, the rest is delegated.
        assert [op["op"] for op in report["edges"]] == (["QUANTIZE"] * 2 if io_dtype == "uint8" else [])
        assert report["partition_nodes"] == [report["delegated"]] == [report["nodes"] - len(report["edges"])]
        assert summary(report) == "1"


def test_int8_average_pool_stays_outside_and_splits_the_graph():
    """ai-edge-litert 2.3.0's XNNPACK has no int8 AVERAGE_POOL_2D (its float one it takes)."""
    model = _tiny(layers.AveragePooling2D(2, name="pool"))
    assert delegation(to_tflite_bytes(model, input_shape=SHAPE))["single_partition"]
    flatbuffer = to_tflite_bytes(model, "int8", random_images(SHAPE, 2), input_shape=SHAPE)
    for report in (delegation(flatbuffer, model=model), delegation(interpreter(flatbuffer))):  # layers by model, by name
        assert report["partitions"] == 2 and not report["single_partition"]
        assert report["partition_nodes"] == [1, 2] and report["edges"] == []
        (outside,) = report["outside"]
        assert (outside["op"], outside["layer"], outside["layers"]) == ("AVERAGE_POOL_2D", "pool", ["pool"])
        assert "/pool/" in outside["outputs"][0]
        assert summary(report) == "2: AVERAGE_POOL_2D (pool)"


def test_students_and_teachers_cover_the_segmentation_zoo():
    assert sorted(STUDENTS + TEACHERS) == models.available("segmentation")


@pytest.mark.parametrize("name", STUDENTS)
def test_student_converts_to_int8_as_one_xnnpack_partition(name):
    """As ``tfseg export`` writes it: int8 with uint8 input and output.

    Batch-norm statistics are estimated first, as training leaves them: at random initialisation
    MobileNetV2's activations shrink block by block, and at 64x96 the LR-ASPP ``head_add`` then
    adds inputs whose int8 scales differ more than 1024-fold, which XNNPACK's int8 ADD refuses
    (input / output scale must lie in [1/1024, 256)): 2 partitions, from the random weights alone.
    """
    model = models.build(name, (64, 96, 3), 11)
    images = random_images((64, 96, 3), 4)
    reestimate_batch_norm(model, [images], num_batches=1)
    flatbuffer = to_tflite_bytes(model, "int8", images[:2], input_shape=(64, 96, 3), io_dtype="uint8")
    report = delegation(flatbuffer, model=model)
    assert report["single_partition"], summary(report, limit=10)
    assert [op["op"] for op in report["edges"]] == ["QUANTIZE", "QUANTIZE"]
