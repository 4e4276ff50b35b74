"""Re-estimating batch-norm statistics ("precise BN", Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).

A BatchNormalization layer normalises at inference with moving averages of the batch statistics
it saw in training (momentum 0.99: ~100 steps of memory). They go stale whenever the weights
upstream change faster than that: early in training from random initialisation, and after filter
pruning, which removes input channels of the next layer at once. The model then scores far below
what its weights can do. ``reestimate_batch_norm`` replaces every moving mean and variance by the
plain average of the batch statistics over ``num_batches`` training batches, computed with the
current weights.
"""

from __future__ import annotations

import itertools

from tfseg._keras import keras, tf
from tfseg.errors import ConfigError


def batch_norm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, nested models included."""
    return [layer for layer in model.submodules if isinstance(layer, keras.layers.BatchNormalization)]


def reestimate_batch_norm(model, data, num_batches: int = 32) -> int:
    """Sets each BN layer's moving mean/variance to the average batch statistics over ``data``.

    The forward passes run in training mode (each BN normalises with its batch's statistics,
    as in training) with dropout disabled; nothing else of the model changes. Batch ``i`` gets
    averaging weight ``1/i`` (momentum ``(i-1)/i``), so the result is the exact mean over the
    batches, independent of the layers' momentum.

    Args:
      model: a float Keras model (BN folded into quantization wrappers is not reached).
      data: batches of images, or of ``(images, labels)`` (labels are ignored), e.g. the training
        pipeline.
      num_batches: batches to average (Wu & Johnson use ~100 x batch 32 images; a few hundred
        images already settle the statistics of a segmentation network).

    Returns:
      The number of batches used.

    Raises:
      ConfigError: the model has no BatchNormalization layer, or ``data`` gave no batch.
    """
    layers = batch_norm_layers(model)
    if not layers:
        raise ConfigError(f"model {model.name!r} has no BatchNormalization layer to re-estimate")
    dropouts = [layer for layer in model.submodules if isinstance(layer, keras.layers.Dropout)]
    saved = ([layer.momentum for layer in layers], [layer.rate for layer in dropouts])
    used = 0
    try:
        for layer in dropouts:
            layer.rate = 0.0
        for used, batch in enumerate(itertools.islice(iter(data), num_batches), start=1):
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            for layer in layers:
                layer.momentum = (used - 1) / used
            model(tf.convert_to_tensor(images), training=True)  # eager: reads the momentum set above
    finally:
        for layer, momentum in zip(layers, saved[0]):
            layer.momentum = momentum
        for layer, rate in zip(dropouts, saved[1]):
            layer.rate = rate
    if used == 0:
        raise ConfigError("no batch to re-estimate the batch-norm statistics from (empty data)")
    return used


class PreciseBatchNorm(keras.callbacks.Callback):
    """Re-estimates ``model``'s BN statistics on ``data`` once per epoch, before it is validated.

    Keras validation inside ``fit`` runs before ``on_epoch_end``, so the statistics are refreshed
    at whichever comes first: ``on_test_begin`` (validation data given to ``fit``) or
    ``on_epoch_end`` (validation by an epoch scorer placed after this callback). The refreshed
    statistics stay in the model (training mode normalises with batch statistics, so the training
    itself is unchanged) and are what the saved checkpoint holds.

    Args:
      model: the network whose BN layers are re-estimated (the student of a Distiller).
      data: training batches (e.g. ``Run.training_data()``).
      num_batches: batches averaged per epoch.
    """

    def __init__(self, model, data, num_batches: int = 16):
        super().__init__()
        if num_batches < 1:
            raise ConfigError(f"precise BN needs at least one batch, got {num_batches}")
        self.network, self.data, self.num_batches = model, data, num_batches
        self._done = False

    def on_epoch_begin(self, epoch, logs=None):
        self._done = False

    def _reestimate(self):
        if not self._done:
            reestimate_batch_norm(self.network, self.data, self.num_batches)
            self._done = True

    def on_test_begin(self, logs=None):
        self._reestimate()

    def on_epoch_end(self, epoch, logs=None):
        self._reestimate()
