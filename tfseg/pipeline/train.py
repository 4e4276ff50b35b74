"""The train stage: a zoo model trained on a dataset, recorded as a run directory.

``run(TrainConfig(...))`` seeds, loads the data, builds the model (or starts from another run's
best weights with ``init_from``), fits it with resume (``tfseg.train.fit``), scores the best model
on the val split at full label resolution and returns the ``Run``. ``fit_and_score`` is the part
that the distill and quantize stages share. With ``distribute`` the model is built and compiled in
the strategy's scope (``tfseg.distribute``) and only the chief writes and scores the run.
"""

from __future__ import annotations

import dataclasses
import json

from tfseg import data as seg_data
from tfseg import distribute, models
from tfseg._keras import keras
from tfseg.batchnorm import PreciseBatchNorm, batch_norm_layers
from tfseg.checkpoint import save_model
from tfseg.data.info import DatasetInfo
from tfseg.errors import ConfigError
from tfseg.evaluate import LabelResolutionValidation, evaluate
from tfseg.losses import median_frequency_weights
from tfseg.options import augment_options
from tfseg.runs import Run, write_run
from tfseg.train import check_output_classes, compile_for_segmentation, fit, make_optimizer


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; defaults train the quick-start U-Net on synthetic scenes."""

    out_dir: str = "runs/unet_small-scenes"
    model: str = "unet_small"
    model_options: dict = dataclasses.field(default_factory=dict)
    dataset: str = "scenes"
    data_options: dict = dataclasses.field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    crop_size: tuple = (96, 96)
    # Model input size at evaluation. When set, validation after each epoch (model selection) also
    # runs at this size against the full-resolution labels instead of on resized crops.
    eval_size: tuple | None = None
    batch_size: int = 8
    epochs: int = 10
    loss: str = "ce"
    class_weights: str | None = None  # None or "median" (median-frequency from the train split)
    # Weights are raised to this power: full median-frequency weights (1.0) make a network
    # over-predict the rare classes (CamVid teacher: pedestrian recall 86 %, IoU 34 %); 0.5 softens them.
    class_weight_power: float = 1.0
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "poly"
    augment: dict | None = dataclasses.field(default_factory=dict)  # Augment options; None: no augmentation
    seed: int = 0
    # Precise BN: before each validation, the BN statistics are re-estimated on this many training
    # batches (0: off). None: on (PRECISE_BN_BATCHES) for models with BN trained from random
    # initialisation, whose moving averages trail the weights for epochs (fastseg_tiny on CamVid:
    # val mIoU 2.7 % for 7 epochs without it, 20-31 % with it); off for pretrained or init_from runs.
    precise_bn: int | None = None
    # Start from this run's best weights instead of a fresh model (fine-tuning, recovery of a
    # filter-pruned run); ``model``/``model_options`` must be the source run's.
    init_from: str | None = None
    # tf.distribute strategy: "none", "mirrored" (this machine's GPUs) or "multi_worker" (TF_CONFIG),
    # see tfseg.distribute. batch_size stays the global batch, split over the replicas.
    distribute: str = "none"

    def __post_init__(self):
        self.augment = augment_options(self.augment)
        for key in ("crop_size", "eval_size"):
            if getattr(self, key) is not None:
                setattr(self, key, tuple(getattr(self, key)))
        if self.precise_bn is not None and (not isinstance(self.precise_bn, int) or self.precise_bn < 0):
            raise ConfigError(f"precise_bn is a number of training batches (0: off), got {self.precise_bn!r}")
        distribute.check_mode(self.distribute)

    @classmethod
    def from_record(cls, record: dict, **overrides):
        """The configuration a run's ``run.json`` records (what ``to_dict`` wrote), with ``overrides``."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**({key: value for key, value in record.items() if key in names} | overrides))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["crop_size"] = list(self.crop_size)
        d["eval_size"] = list(self.eval_size) if self.eval_size else None
        return d


def class_weight_values(config: TrainConfig, train_split) -> list | None:
    """The per-class loss weights ``config.class_weights`` asks for, from the train split."""
    if config.class_weights is None:
        return None
    if config.class_weights != "median":
        raise ConfigError(f"class_weights must be None or 'median', got {config.class_weights!r}")
    info = train_split.info
    weights = median_frequency_weights(train_split.dataset(), info.num_classes, info.ignore_label)
    return (weights ** config.class_weight_power).tolist()


def _source_run(config: TrainConfig, info: DatasetInfo) -> Run | None:
    """The ``init_from`` run, checked against the config and the data."""
    if not config.init_from:
        return None
    source = Run.open(config.init_from)
    if (source.model_name, source.model_options) != (config.model, config.model_options):
        raise ConfigError(
            f"init_from {config.init_from} holds a {source.model_name!r} model with options "
            f"{source.model_options}, but this run is for {config.model!r} with {config.model_options}"
        )
    if source.info.class_names != info.class_names:
        raise ConfigError(f"init_from {config.init_from} was trained on {source.info.class_names}, "
                          f"this run's data has {info.class_names}")
    return source


def start(config: TrainConfig, stage: str, **fields):
    """Seeds and opens a new run for ``config`` (record not yet written) with its first model.

    A run started from ``init_from`` takes over what describes its model (the narrowed architecture
    of a filter-pruned source, the logit adjustment folded into its classifier).

    Returns:
      (Run, model at the crop size).
    """
    keras.utils.set_random_seed(config.seed)
    train_split = seg_data.load(config.dataset, config.train_split, **config.data_options)
    info = train_split.info
    source = _source_run(config, info)
    inherited = {} if source is None else {
        key: source.record[key] for key in ("filter_pruned", "logit_adjustment") if source.record.get(key)}
    record = {**config.to_dict(), **inherited, "stage": stage, "info": info.to_dict(),
              "class_weight_values": class_weight_values(config, train_split), **fields}
    run = Run(config.out_dir, record)
    if source is None:
        model = models.build(config.model, (*config.crop_size, 3), info.num_classes, **config.model_options)
    else:
        model = source.model(size=config.crop_size)
    check_output_classes(model, info.num_classes)
    run.record["precise_bn"] = precise_bn_batches(config, model)
    return run, model


PRECISE_BN_BATCHES = 16


def precise_bn_batches(config: TrainConfig, model) -> int:
    """``config.precise_bn``, or for ``None`` the default: on for a model with BN layers that starts
    from random initialisation (no ``weights`` option, no ``init_from``), off otherwise."""
    if config.precise_bn is not None:
        return config.precise_bn
    from_random = not config.init_from and not config.model_options.get("weights")
    return PRECISE_BN_BATCHES if from_random and batch_norm_layers(model) else 0


def total_steps(run: Run, epochs: int) -> int:
    """Optimizer steps of ``epochs`` over the run's train split (for decaying schedules)."""
    images = len(run.train_split)
    return -(-images // run.batch_size) * epochs


def validation(run: Run):
    """How a run validates after each epoch: ``(val_data, epoch_scorers)`` for ``tfseg.train.fit``.

    With an explicit ``eval_size`` the model is scored at that size against the full-resolution
    labels (rebuilt at that size when it has a fixed input); otherwise Keras validates on val
    batches at the training size (its metrics need equal shapes).
    """
    val_split = run.split(run.record.get("val_split", "val"))
    if run.record.get("eval_size"):
        size = run.eval_size
        return None, [LabelResolutionValidation(val_split, size, batch_size=run.batch_size,
                                                rebuild=lambda model: run.rebuild(model, size))]
    return seg_data.train_pipeline(val_split, run.crop_size, run.batch_size, augment=None, shuffle=False), []


def fit_and_score(run: Run, trainable, epochs: int, verbose="auto", model_suffix: str = ".keras",
                  save_last=save_model) -> Run:
    """Writes the run's record, fits ``trainable`` (a compiled model or Distiller) with resume into
    the run directory, and scores the best model on the val split at the run's evaluation size.

    The record gets the training time (summed over resumed sessions) and ``complete`` at the end.
    In a multi-worker run only the chief writes the record and scores the model; the other
    workers return after training with the record unwritten.
    """
    strategy = trainable.distribute_strategy
    chief = distribute.is_chief(strategy)
    record = {**run.record, "replicas": strategy.num_replicas_in_sync, "complete": False}
    run = write_run(run.path, record) if chief else Run(run.path, record)
    val_data, scorers = validation(run)
    train_data = run.training_data()
    if run.record.get("precise_bn"):  # its own pipeline, made after the training one: same training batches as without
        network = getattr(trainable, "student", trainable)
        scorers = [PreciseBatchNorm(network, run.training_data(), run.record["precise_bn"]), *scorers]
    fit(trainable, train_data, val_data, run.path, epochs, verbose=verbose, epoch_scorers=scorers,
        model_suffix=model_suffix, save_last=save_last)
    if not chief:
        return run
    seconds = json.loads((run.path / "train_time.json").read_text())["seconds"]
    val_split = run.record.get("val_split", "val")
    evaluate(run.model(size=run.eval_size), run.split(val_split), image_size=run.eval_size,
             batch_size=run.batch_size, out_dir=run.path / "eval" / val_split, verbose=verbose)
    return run.update(train_seconds=seconds, complete=True)


def run(config: TrainConfig, verbose="auto") -> Run:
    """Trains ``config.model`` on ``config.dataset``; resumes if ``config.out_dir`` holds a killed run.

    Returns:
      The finished ``Run`` (best model, val scores in ``eval/<val split>/``).
    """
    strategy = distribute.strategy(config.distribute)  # first: a multi-worker one must precede any TF op
    with strategy.scope():
        train_run, model = start(config, "train")
        distribute.synchronize_batch_norm(model, strategy)
        optimizer = make_optimizer(config.optimizer, config.learning_rate, config.schedule,
                                   total_steps=total_steps(train_run, config.epochs))
        compile_for_segmentation(model, train_run.num_classes, loss=train_run.loss(), optimizer=optimizer)
    train_run.record["num_params"] = model.count_params()
    return fit_and_score(train_run, model, config.epochs, verbose=verbose)


__all__ = ["TrainConfig", "fit_and_score", "run", "start", "validation"]
