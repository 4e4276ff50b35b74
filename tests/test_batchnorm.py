"""Precise batch norm: moving statistics replaced by the exact average of batch statistics."""

import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.batchnorm import batch_norm_layers, reestimate_batch_norm
from tfseg.errors import ConfigError


def bn_model():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.BatchNormalization(momentum=0.9, name="bn_in")(inputs)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Conv2D(2, 1, use_bias=False, name="conv")(x)
    outputs = keras.layers.BatchNormalization(name="bn_out")(x)
    return keras.Model(inputs, outputs)


def test_moving_statistics_become_the_mean_of_the_batch_statistics():
    model = bn_model()
    rng = np.random.default_rng(0)
    batches = [(rng.normal(3.0 * i, 1.0 + i, (5, 4, 4, 3)).astype("float32"), np.zeros((5, 4, 4, 1))) for i in range(3)]
    assert reestimate_batch_norm(model, tf.data.Dataset.from_tensor_slices(
        (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))).batch(5), 10) == 3
    bn_in = model.get_layer("bn_in")
    means = [b[0].mean(axis=(0, 1, 2)) for b in batches]
    variances = [b[0].var(axis=(0, 1, 2)) for b in batches]
    np.testing.assert_allclose(bn_in.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-5, atol=1e-5)
    # Moving variances are kept unbiased (n / (n - 1)), as Keras does in training.
    unbiased = [b[0].reshape(-1, 3).var(axis=0, ddof=1) for b in batches]
    np.testing.assert_allclose(bn_in.moving_variance.numpy(), np.mean(unbiased, axis=0), rtol=1e-4)
    # The second BN sees the first one's batch-normalised output (dropout off): conv of it.
    kernel = model.get_layer("conv").kernel.numpy()[0, 0]
    gamma, beta = bn_in.gamma.numpy(), bn_in.beta.numpy()
    conv_means = [(((b[0] - m) / np.sqrt(v + bn_in.epsilon)) * gamma + beta).reshape(-1, 3) @ kernel
                  for b, m, v in zip(batches, means, variances)]
    np.testing.assert_allclose(model.get_layer("bn_out").moving_mean.numpy(),
                               np.mean([c.mean(axis=0) for c in conv_means], axis=0), rtol=1e-4, atol=1e-5)
    # Only the statistics changed: momentum and dropout are as they were.
    assert bn_in.momentum == 0.9 and model.get_layer("bn_out").momentum == 0.99
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.5]


def test_only_num_batches_are_used_and_bad_input_is_named():
    model = bn_model()
    assert sorted(layer.name for layer in batch_norm_layers(model)) == ["bn_in", "bn_out"]
    images = np.ones((8, 4, 4, 3), "float32")
    assert reestimate_batch_norm(model, [images[:2], images[2:4], images[4:]], num_batches=2) == 2
    with pytest.raises(ConfigError, match="empty data"):
        reestimate_batch_norm(model, [], num_batches=2)
    plain = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1)], name="plain")
    with pytest.raises(ConfigError, match="'plain' has no BatchNormalization"):
        reestimate_batch_norm(plain, [images])
