"""Compiling and fitting segmentation models with the callbacks a long CPU run needs.

``fit`` wraps ``model.fit`` with: a best-model checkpoint written atomically, BackupAndRestore so
that a killed run resumes from its last finished epoch, a CSV log (appended across resumes), a
TensorBoard log and a curves plot refreshed every epoch. Under a ``tf.distribute`` strategy (the
model built and compiled in its scope, ``tfseg.distribute``) only the chief writes the run's files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from tfseg import distribute
from tfseg import losses as seg_losses
from tfseg import metrics as seg_metrics
from tfseg._keras import keras, tf
from tfseg.checkpoint import BestModelCheckpoint, save_model, write_json
from tfseg.errors import ConfigError
from tfseg.options import GROUND_TRUTH_LOSSES, OPTIMIZERS, SCHEDULES
from tfseg.report import plot_curves


def progress_verbosity(verbose="auto"):
    """Keras verbosity: a live bar (1) on a terminal, one line per epoch (2) in logs and CI."""
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    return verbose


def make_loss(name: str, num_classes: int, class_weights: Sequence[float] | None = None,
              logit_offset: Sequence[float] | None = None):
    """Builds a segmentation loss by name: ``"ce"``, ``"dice"`` or ``"ce+dice"``.

    ``logit_offset``: the logit adjustment folded into a calibrated model's classifier
    (``tfseg.calibrate.folded_logit_offset``); the loss then scores the logits minus it, so that
    fine-tuning keeps the adjustment.
    """
    if name == "ce":
        loss = seg_losses.SegmentationCrossEntropy(num_classes=num_classes, class_weights=class_weights)
    elif name == "dice":
        if class_weights is not None:
            raise ConfigError("class weights apply to cross entropy; the Dice loss takes none")
        loss = seg_losses.DiceLoss(num_classes=num_classes)
    elif name == "ce+dice":
        loss = seg_losses.CEDiceLoss(num_classes=num_classes, class_weights=class_weights)
    else:
        raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(GROUND_TRUTH_LOSSES)}")
    return loss if logit_offset is None else seg_losses.LogitOffsetLoss(loss, logit_offset)


def make_schedule(learning_rate: float, schedule: str = "poly", total_steps: int | None = None):
    """A learning rate (``constant``) or a schedule decaying to 0 over ``total_steps``.

    ``poly`` is DeepLab's ``lr * (1 - step/total)^0.9``; ``cosine`` is half a cosine.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if schedule == "constant":
        return learning_rate
    if not total_steps:
        raise ConfigError(f"the {schedule!r} schedule needs total_steps (epochs x steps per epoch)")
    if schedule == "poly":
        return keras.optimizers.schedules.PolynomialDecay(learning_rate, total_steps, end_learning_rate=0.0, power=0.9)
    return keras.optimizers.schedules.CosineDecay(learning_rate, total_steps)


def make_optimizer(
    name: str = "adam",
    learning_rate: float = 1e-3,
    schedule: str = "poly",
    total_steps: int | None = None,
    weight_decay: float = 1e-4,
):
    """Builds ``adam``, ``adamw`` (with ``weight_decay``) or ``sgd`` (Nesterov momentum 0.9) with a schedule."""
    lr = make_schedule(learning_rate, schedule, total_steps)
    if name == "adam":
        return keras.optimizers.Adam(lr)
    if name == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def tracked_metrics(model) -> list:
    """The metrics of a model with its own ``train_step``: its ``_trackers`` (a dict of Keras metrics)
    and the compiled ones, listed so that Keras resets them at each epoch."""
    listed = list(getattr(model, "_trackers", {}).values())
    if getattr(model, "compiled_metrics", None) is not None:
        listed += model.compiled_metrics.metrics
    return listed


def per_sample_loss(loss_fn, labels, logits):
    """``loss_fn`` as one float32 value per sample (B,): a Keras ``Loss`` unreduced (its ``call``),
    element-wise losses averaged over the non-batch axes."""
    values = loss_fn.call(labels, logits) if isinstance(loss_fn, keras.losses.Loss) else loss_fn(labels, logits)
    values = tf.cast(values, tf.float32)
    if values.shape.rank and values.shape.rank > 1:
        values = tf.reduce_mean(values, axis=list(range(1, values.shape.rank)))
    return values


def segmentation_metrics(num_classes: int) -> list:
    """The metrics shown in the progress bar: mean IoU and pixel accuracy."""
    return [seg_metrics.MeanIoU(num_classes, name="miou"), seg_metrics.PixelAccuracy(num_classes, name="pixel_accuracy")]


def check_output_classes(model, num_classes: int):
    """Raises ConfigError when the model's output channels are not the dataset's class count."""
    channels = model.output_shape[-1]
    if channels != num_classes:
        raise ConfigError(
            f"model {model.name!r} outputs {channels} channels (classes) but the data has "
            f"{num_classes} classes; rebuild the model with num_classes={num_classes}"
        )


def compile_for_segmentation(
    model,
    num_classes: int,
    *,
    loss="ce",
    class_weights: Sequence[float] | None = None,
    optimizer=None,
):
    """Checks the class count, then compiles with a segmentation loss and mIoU/pixel-accuracy metrics.

    ``loss``: a name for ``make_loss`` (with ``class_weights``), or a built loss (a run's own:
    ``tfseg.runs.Run.loss``, which also keeps a calibrated model's logit adjustment).
    """
    check_output_classes(model, num_classes)
    if not isinstance(loss, str) and class_weights is not None:
        raise ConfigError("class_weights build a named loss; a built loss already has its own")
    model.compile(
        optimizer=optimizer or make_optimizer(schedule="constant"),
        loss=make_loss(loss, num_classes, class_weights) if isinstance(loss, str) else loss,
        metrics=segmentation_metrics(num_classes),
    )
    return model


class CurvesPlot(keras.callbacks.Callback):
    """Redraws ``curves.png`` from the CSV log after every epoch, so a run can be watched."""

    def __init__(self, log_csv, path):
        super().__init__()
        self.log_csv, self.path = log_csv, path

    def on_epoch_end(self, epoch, logs=None):
        if os.path.exists(self.log_csv):
            plot_curves(self.log_csv, self.path)


class TrainingClock(keras.callbacks.Callback):
    """Keeps the training time of a run in ``path`` (JSON), summed over resumed sessions.

    Written after every epoch, so a killed run keeps the time of its finished epochs; the
    interrupted epoch's time is lost with its weights.
    """

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_train_begin(self, logs=None):
        self.before = json.loads(self.path.read_text())["seconds"] if self.path.exists() else 0.0
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        write_json(self.path, {"seconds": round(self.before + time.time() - self.start, 1), "epochs": epoch + 1})


def training_callbacks(out_dir: str | os.PathLike, monitor: str = "val_miou", tensorboard: bool = True,
                       model_suffix: str = ".keras", write_dir: str | os.PathLike | None = None) -> list:
    """The callbacks of ``fit``, in an order where the log is written before it is plotted.

    ``write_dir``: where this process writes its model files when it is not ``out_dir`` (a
    non-chief worker, ``tfseg.distribute.write_dir``); then only the callbacks every worker must
    run are returned (the backup, which handles workers itself, and the best-model checkpoint).
    """
    out = Path(out_dir)
    write = out if write_dir is None else Path(write_dir)
    callbacks = [
        keras.callbacks.BackupAndRestore(str(out / "backup")),
        BestModelCheckpoint(out / f"best{model_suffix}", monitor=monitor, mode="min" if "loss" in monitor else "max",
                            write_path=write / f"best{model_suffix}"),
    ]
    if write != out:
        return callbacks
    callbacks += [
        keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
        CurvesPlot(out / "log.csv", out / "curves.png"),
        TrainingClock(out / "train_time.json"),
    ]
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False, profile_batch=0))
    return callbacks


def fit(
    model,
    train_data,
    val_data,
    out_dir: str | os.PathLike,
    epochs: int,
    *,
    monitor: str | None = None,
    callbacks: Sequence = (),
    epoch_scorers: Sequence = (),
    steps_per_epoch: int | None = None,
    verbose="auto",
    tensorboard: bool = True,
    model_suffix: str = ".keras",
    save_last: Callable = save_model,
):
    """Fits a compiled model, writing ``best.keras``, ``last.keras``, ``log.csv`` and ``curves.png`` to out_dir.

    If out_dir holds the backup of a killed run, training resumes after its last finished epoch.

    Under a distribution strategy, ``batch_size`` of the data is the global batch, split over the
    replicas; datasets are sharded by example (``tfseg.distribute.shard_by_example``). Every worker
    of a multi-worker run calls ``fit`` alike; the non-chief ones write their model files into a
    temporary folder that is removed at the end, the others (log, curves, TensorBoard, time) only
    on the chief. ``out_dir`` must then be the same shared folder for every worker (the backup
    is restored from the chief's).

    Args:
      model: a compiled model (see ``compile_for_segmentation``), built in its strategy's scope.
      train_data, val_data: batched datasets of (images, masks).
      out_dir: run directory.
      epochs: total epochs (a resumed run continues up to this number).
      monitor: the log key that picks the best model; default ``val_miou``, or ``miou`` without
        validation data or epoch scorers.
      callbacks: extra callbacks, run after the standard ones.
      epoch_scorers: callbacks that add scores to the epoch logs (e.g.
        ``tfseg.evaluate.LabelResolutionValidation``); they run before the checkpoint and log.
      model_suffix: the model files' format, ``.keras`` or ``.h5`` (quantization-aware models).
      save_last: ``save_last(model, path)`` writes ``last<suffix>`` (``tfseg.quantize.save_qat`` for QAT).

    Returns:
      The Keras History of this (possibly resumed) fit.
    """
    if monitor is None:
        monitor = "val_miou" if val_data is not None or epoch_scorers else "miou"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    strategy = model.distribute_strategy
    write_dir = distribute.write_dir(out, strategy)
    train_data, val_data = (distribute.shard_by_example(data) if isinstance(data, tf.data.Dataset) else data
                            for data in (train_data, val_data))
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=list(epoch_scorers) + training_callbacks(out, monitor, tensorboard, model_suffix, write_dir)
        + list(callbacks),
        verbose=progress_verbosity(verbose),
    )
    # Every worker saves (reading the weights may all-reduce), only the chief into out_dir.
    save_last(model, write_dir / f"last{model_suffix}")
    distribute.remove_write_dir(out, strategy)
    # BackupAndRestore deletes its checkpoint when fit() ends but leaves the folder behind.
    backup = out / "backup"
    if distribute.is_chief(strategy) and backup.is_dir() and not any(backup.iterdir()):
        backup.rmdir()
    return history
