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


@pytest.mark.parametrize("with_validation_data", [True, False])
def test_precise_bn_callback_refreshes_once_per_epoch_before_validation(with_validation_data):
    from tfseg.batchnorm import PreciseBatchNorm

    model = bn_model()
    model.compile(keras.optimizers.SGD(0.0), "mse")
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, (8, 4, 4, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros((8, 4, 4, 2), "float32"))).batch(4)
    seen = []

    class Recorder(keras.callbacks.Callback):  # what validation would read at each point
        def on_test_begin(self, logs=None):
            seen.append(("test", model.get_layer("bn_in").moving_mean.numpy().copy()))

        def on_epoch_end(self, epoch, logs=None):
            seen.append(("epoch_end", model.get_layer("bn_in").moving_mean.numpy().copy()))

    precise = PreciseBatchNorm(model, data, num_batches=2)
    calls = []
    original = precise._reestimate
    precise._reestimate = lambda: (calls.append(precise._done), original())
    model.fit(data, validation_data=data if with_validation_data else None, epochs=2, verbose=0,
              callbacks=[precise, Recorder()])
    assert calls.count(False) == 2  # one re-estimation per epoch
    expected = x.mean(axis=(0, 1, 2))
    assert seen and all(np.allclose(mean, expected, atol=1e-4) for _, mean in seen)
    assert {kind for kind, _ in seen} == ({"test", "epoch_end"} if with_validation_data else {"epoch_end"})
    with pytest.raises(ConfigError, match="at least one batch"):
        PreciseBatchNorm(model, data, num_batches=0)


def test_precise_bn_is_on_by_default_only_for_models_with_bn_from_random_initialisation():
    from tfseg.pipeline.train import PRECISE_BN_BATCHES, TrainConfig, precise_bn_batches

    with_bn, without_bn = bn_model(), keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1)])
    assert precise_bn_batches(TrainConfig(), with_bn) == PRECISE_BN_BATCHES
    assert precise_bn_batches(TrainConfig(), without_bn) == 0
    assert precise_bn_batches(TrainConfig(model_options={"weights": "imagenet.h5"}), with_bn) == 0
    assert precise_bn_batches(TrainConfig(init_from="runs/teacher"), with_bn) == 0
    assert precise_bn_batches(TrainConfig(precise_bn=4, init_from="runs/teacher"), with_bn) == 4
    assert precise_bn_batches(TrainConfig(precise_bn=0), with_bn) == 0
    with pytest.raises(ConfigError, match="precise_bn"):
        TrainConfig(precise_bn=-1)
