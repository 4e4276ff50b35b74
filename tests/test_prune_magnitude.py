"""Magnitude pruning over TF-MOT on zoo models (whose Rescaling layer whole-model TF-MOT rejects):
short runs reach the target, strip restores the layers, gzip measures the gain, and it works in
the Distiller."""

import numpy as np
import pytest

from tfseg import models
from tfseg._keras import keras, tf
from tfseg.prune.magnitude import (
    compressed_sizes,
    format_sparsity,
    prune_magnitude,
    pruning_callbacks,
    sparsity_report,
    strip,
)

SIZE = (32, 32)


def data(num=16, batch=4, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (num, *SIZE, 3)).astype("float32")
    labels = (images[..., 0] // (256 / classes)).astype("int32")
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def kernel_sparsities(model):
    return {row["layer"]: row["sparsity"] for row in sparsity_report(model)}


def test_short_run_reaches_the_target_on_a_zoo_model_and_strip_restores_it():
    keras.utils.set_random_seed(0)
    model = models.build("fastseg_tiny", (*SIZE, 3), 3)
    # 2 epochs x 4 steps: with TF-MOT's default frequency (100) this would end at 0 % sparsity.
    pruned = prune_magnitude(model, 0.8, end_step=7, skip=("classifier",))
    from tfseg.train import compile_for_segmentation

    compile_for_segmentation(pruned, 3)
    pruned.fit(data(), epochs=2, callbacks=pruning_callbacks(), verbose=0)
    small = strip(pruned)
    assert all(value == 0 for value in kernel_sparsities(model).values())  # the input model stays dense
    assert [layer.name for layer in small.layers] == [layer.name for layer in model.layers]
    sparsity = kernel_sparsities(small)
    assert sparsity.pop("classifier") < 0.05  # skipped
    depthwise = {layer.name for layer in model.layers if isinstance(layer, keras.layers.DepthwiseConv2D)}
    assert depthwise and all(sparsity.pop(name) == 0 for name in depthwise)  # TF-MOT keeps them dense
    for name, value in sparsity.items():
        assert abs(value - 0.8) < 0.02, (name, value)
    assert "total" in format_sparsity(sparsity_report(small))

    sizes, dense = compressed_sizes(small), compressed_sizes(model)
    assert sizes["tflite_bytes"] == pytest.approx(dense["tflite_bytes"], rel=0.05)  # zeros still stored
    assert sizes["gzip_bytes"] < 0.6 * dense["gzip_bytes"]


def test_magnitude_pruned_student_inside_the_distiller():
    from tfseg.distill import Distiller, PixelKD

    keras.utils.set_random_seed(0)
    teacher = models.build("unet_small", (*SIZE, 3), 3)
    student = prune_magnitude(models.build("fastseg_tiny", (*SIZE, 3), 3), 0.5, end_step=3)
    distiller = Distiller(teacher, student, [PixelKD()])
    distiller.compile(keras.optimizers.Adam(1e-3))
    distiller.fit(data(), epochs=1, verbose=0)  # 4 steps, the Distiller drives the pruning step
    for name, value in kernel_sparsities(strip(distiller.student)).items():
        if not name.endswith("_dw"):  # fastseg_tiny's depthwise layers stay dense
            assert abs(value - 0.5) < 0.03, (name, value)


def test_bad_arguments():
    model = models.build("fastseg_tiny", (*SIZE, 3), 3)
    with pytest.raises(ValueError, match="target_sparsity"):
        prune_magnitude(model, 1.0, end_step=10)
    with pytest.raises(ValueError, match="end_step"):
        prune_magnitude(model, 0.5, end_step=0)
    with pytest.raises(ValueError, match="nope"):
        prune_magnitude(model, 0.5, end_step=10, skip=("nope",))
