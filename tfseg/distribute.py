"""Training on more than one device or machine with ``tf.distribute``: the one place that turns the
``distribute`` option into a strategy and answers "does this process write the results".

- ``"none"``: TensorFlow's default strategy (one device).
- ``"mirrored"``: ``MirroredStrategy`` over this machine's GPUs (or, without GPUs, its logical CPU
  devices: one unless the process configured more).
- ``"multi_worker"``: ``MultiWorkerMirroredStrategy``, configured by the ``TF_CONFIG`` environment
  variable as TensorFlow documents it (``{"cluster": {"worker": ["host:port", ...]}, "task":
  {"type": "worker", "index": i}}``); every worker runs the same command.

The batch size is global (TensorFlow's convention): each step splits one batch of ``batch_size``
examples over all replicas, so a run trains the same steps whatever the number of replicas.
BatchNormalization is synchronised across replicas while training (``synchronize_batch_norm``),
so that its batch statistics are the global batch's too.

Multi-worker saving follows TensorFlow's convention: every worker runs the same callbacks, because
reading a model's weights can need all workers (an all-reduce of the batch-norm statistics), but
only the chief writes to the run directory; the others write into ``workertemp_<index>`` inside it
and remove that folder when they are done (``write_dir``).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from tfseg._keras import tf
from tfseg.batchnorm import batch_norm_layers
from tfseg.errors import ConfigError
from tfseg.options import DISTRIBUTE_MODES
from tfseg.tf_config import read_tf_config


def check_mode(mode: str) -> str:
    """``mode`` if it is one of ``DISTRIBUTE_MODES``, else a ConfigError naming them."""
    if mode not in DISTRIBUTE_MODES:
        raise ConfigError(f"distribute must be one of {', '.join(DISTRIBUTE_MODES)}, got {mode!r}")
    return mode


def mirrored_devices() -> list[str]:
    """The devices ``mirrored`` replicates over: every GPU, else every logical CPU device."""
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return [device.name for device in devices]


def strategy(mode: str = "none"):
    """The ``tf.distribute`` strategy of ``mode`` (``DISTRIBUTE_MODES``), one per process and mode:
    a chain of stages shares it, because a multi-worker strategy can be set up only once.

    ``multi_worker`` must be asked for before TensorFlow runs anything else in the process.

    Raises:
      ConfigError: an unknown mode, a missing or malformed ``TF_CONFIG``, or a multi-worker
        strategy asked for after TensorFlow started without it.
    """
    check_mode(mode)
    return tf.distribute.get_strategy() if mode == "none" else _distributed(mode)


@functools.cache
def _distributed(mode: str):
    if mode == "mirrored":
        return tf.distribute.MirroredStrategy(mirrored_devices())
    read_tf_config()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:  # collective ops must be configured before TF initialises
        raise ConfigError("distribute multi_worker must be set up before TensorFlow runs anything else in the "
                          "process: give every stage of a chain distribute = \"multi_worker\" "
                          f"(TensorFlow: {str(error).splitlines()[0]})") from None


def is_chief(strategy=None) -> bool:
    """Whether this process writes the results: always, except on the non-chief workers of a
    multi-worker run (the chief is task ``chief``, or worker 0 when the cluster has no chief)."""
    strategy = strategy or tf.distribute.get_strategy()
    return bool(strategy.extended.should_checkpoint)


def write_dir(out_dir, strategy=None) -> Path:
    """Where this process writes the files meant for ``out_dir``: ``out_dir`` itself on the chief,
    ``out_dir/workertemp_<task index>`` (created; remove it with ``remove_write_dir``) on the others."""
    strategy = strategy or tf.distribute.get_strategy()
    out = Path(out_dir)
    if is_chief(strategy):
        return out
    temp = out / f"workertemp_{strategy.cluster_resolver.task_id}"
    temp.mkdir(parents=True, exist_ok=True)
    return temp


def remove_write_dir(out_dir, strategy=None):
    """Removes a non-chief worker's ``write_dir`` of ``out_dir`` (nothing on the chief)."""
    strategy = strategy or tf.distribute.get_strategy()
    if not is_chief(strategy):
        shutil.rmtree(write_dir(out_dir, strategy), ignore_errors=True)


def shard_by_example(dataset):
    """``dataset`` with the DATA auto-shard policy: every worker runs the whole (seeded) pipeline
    and keeps its replicas' share of each global batch.

    tfseg's pipelines read a list of files in a seeded, shuffled order; sharding by file would need
    at least as many files as workers and would change which examples meet in a batch, while
    sharding by example keeps the global batches of a one-process run.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def synchronize_batch_norm(model, strategy=None) -> int:
    """Makes ``model``'s BatchNormalization layers normalise with the statistics of the global batch
    (all replicas') in training, when ``strategy`` has more than one replica; returns how many.

    Per-replica statistics would make a distributed step differ from a one-process step of the
    same global batch, and segmentation batches are small. The setting is not part of the layers'
    saved configuration: saved models load with ordinary batch norm.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync < 2:
        return 0
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.synchronized = True
        layer.fused = False  # the fused kernel cannot all-reduce the moments
    return len(layers)


__all__ = [
    "check_mode",
    "is_chief",
    "mirrored_devices",
    "remove_write_dir",
    "shard_by_example",
    "strategy",
    "synchronize_batch_norm",
    "write_dir",
]
