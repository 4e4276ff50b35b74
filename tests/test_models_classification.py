import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.models import endpoints
from tfseg.models.classification import build_cnn5, build_resnet18_cifar


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype(np.float32)


def test_resnet18_cifar_has_the_published_shape_and_parameter_count():
    model = build_resnet18_cifar()
    assert model.output_shape == (None, 10)

    def conv_bn(k, cin, cout):  # trainable: kernel without bias + BN gamma, beta
        return k * k * cin * cout + 2 * cout

    expected = conv_bn(3, 3, 64)  # stem
    cin = 64
    for cout in (64, 128, 256, 512):
        expected += conv_bn(3, cin, cout) + conv_bn(3, cout, cout) + conv_bn(3, cout, cout) * 2
        expected += conv_bn(1, cin, cout) if cin != cout else 0  # projection shortcut
        cin = cout
    expected += 512 * 10 + 10
    assert trainable_params(model) == expected == 11_173_962  # the usual CIFAR ResNet-18 figure
    eps = endpoints(model)
    assert list(eps) == ["features", "logits"]
    assert eps["features"].output_shape == (None, 4, 4, 512)
    assert not any(layer.name.endswith("pool") and "Max" in type(layer).__name__ for layer in model.layers)
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 8  # 4 stages x 2 blocks


def test_cnn5_has_five_weighted_layers_and_the_hand_counted_parameters():
    w, c = 8, 10
    model = build_cnn5(num_classes=c, width=w)
    weighted = [type(layer).__name__ for layer in model.layers if layer.weights and "Normalization" not in type(layer).__name__]
    assert weighted == ["Conv2D"] * 4 + ["Dense"]
    expected = sum(9 * cin * cout + 4 * cout for cin, cout in [(3, w), (w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)])
    expected += 8 * w * c + c
    assert model.count_params() == expected
    eps = endpoints(model)
    assert list(eps) == ["features", "logits"] and eps["features"].output_shape == (None, 4, 4, 8 * w)
    assert model.predict(images((3, 32, 32, 3)), verbose=0).shape == (3, 10)


@pytest.mark.parametrize("builder", [build_cnn5, build_resnet18_cifar])
def test_classifiers_normalize_pixels_inside_the_graph(builder):
    model = builder(num_classes=4)
    out = model.get_layer("normalize")(np.array([[[[0.0, 127.5, 255.0]]]], np.float32)).numpy()
    np.testing.assert_allclose(out.ravel(), [-1.0, 0.0, 1.0], atol=1e-6)
    assert model.output_shape == (None, 4)


def test_cnn5_learns_a_tiny_batch():
    keras.utils.set_random_seed(0)
    model = build_cnn5(num_classes=2, width=8)
    x = np.concatenate([np.full((8, 32, 32, 3), 40.0), np.full((8, 32, 32, 3), 220.0)]).astype(np.float32)
    x += images(x.shape) * 0.1
    y = np.array([0] * 8 + [1] * 8)
    model.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.evaluate(x, y, verbose=0)
    model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert model.evaluate(x, y, verbose=0) < 0.5 * before


def test_bad_classifier_arguments_are_named():
    with pytest.raises(ValueError, match="CNN-5: num_classes and width must be positive, got 10, 0"):
        build_cnn5(width=0)
    with pytest.raises(ValueError, match=r"input_shape must be \(height, width, 3\)"):
        build_resnet18_cifar(input_shape=(32, 32, 1))


def test_cnn5_converts_to_float_tflite_with_equal_outputs():
    from ai_edge_litert.interpreter import Interpreter

    model = build_cnn5(width=8)
    interpreter = Interpreter(model_content=tf.lite.TFLiteConverter.from_keras_model(model).convert())
    interpreter.allocate_tensors()
    x = images((1, 32, 32, 3), seed=2)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(got, model(x, training=False).numpy(), rtol=1e-4, atol=1e-5)


def test_tfmot_rejects_only_the_rescaling_normalisation_of_cnn5():
    """As for the segmentation nets: TF-MOT refuses ``normalize`` (Rescaling) and accepts the rest."""
    import tensorflow_model_optimization as tfmot

    model = build_cnn5(width=8)
    with pytest.raises(ValueError, match="Please initialize `Prune` with a supported layer.*Rescaling"):
        tfmot.sparsity.keras.prune_low_magnitude(model)
    with pytest.raises(RuntimeError, match="Layer normalize:.*Rescaling'> is not supported"):
        tfmot.quantization.keras.quantize_model(model)
    others = [layer.name for layer in model.layers if layer.name not in ("image", "normalize")]

    def all_but_normalize(wrap):
        return keras.models.clone_model(
            model, clone_function=lambda layer: layer if layer.name == "normalize" else wrap(layer)
        )

    pruned = all_but_normalize(tfmot.sparsity.keras.prune_low_magnitude)
    assert [layer.name for layer in pruned.layers][2:] == [f"prune_low_magnitude_{name}" for name in others]
    with tfmot.quantization.keras.quantize_scope():
        annotated = all_but_normalize(tfmot.quantization.keras.quantize_annotate_layer)
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    assert [layer.name for layer in qat.layers] == ["image", "normalize"] + [f"quant_{name}" for name in others]
    x = images((2, 32, 32, 3), seed=3)
    np.testing.assert_allclose(pruned(x), model(x, training=False), rtol=1e-4, atol=1e-4)
    assert qat(x).shape == (2, 10)
