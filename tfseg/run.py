"""A training run end to end: data, model, fit, evaluation, and the run directory that records it.

A run directory holds ``run.json`` (what was trained on what, with the dataset's classes and
palette), ``best.keras``/``last.keras``, logs, curves and evaluation reports. ``load_run`` gives
back the model and its dataset info, so later stages (evaluate, distill, prune, export) start
from a directory rather than from remembered arguments.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tfseg import data as seg_data
from tfseg import models
from tfseg._keras import keras
from tfseg.calibrate import folded_logit_offset
from tfseg.checkpoint import write_json
from tfseg.data.info import DatasetInfo
from tfseg.errors import ConfigError
from tfseg.evaluate import LabelResolutionValidation, evaluate
from tfseg.losses import median_frequency_weights
from tfseg.train import compile_for_segmentation, fit, make_loss, make_optimizer

RUN_FILE = "run.json"


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
    # Start from this run's best weights instead of a fresh model (fine-tuning, recovery of a
    # filter-pruned run); ``model``/``model_options`` must be the source run's.
    init_from: str | None = None

    @classmethod
    def from_record(cls, record: dict, **overrides):
        """The configuration a run's ``run.json`` records (what ``to_dict`` wrote), with ``overrides``."""
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in record.items() if key in names} | overrides
        for key in ("crop_size", "eval_size"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["crop_size"] = list(self.crop_size)
        d["eval_size"] = list(self.eval_size) if self.eval_size else None
        return d


@dataclasses.dataclass
class RunData:
    """What every run (plain training, distillation) prepares from its config."""

    train_split: object
    val_split: object
    info: DatasetInfo
    class_weights: list | None
    train_data: object
    val_data: object  # in-fit validation batches, or None when scorers validate at eval_size
    scorers: list  # epoch scorers (LabelResolutionValidation) for fit()
    eval_size: tuple
    total_steps: int


def prepare_run(config: TrainConfig) -> RunData:
    """Seeds, loads the splits and builds the input pipelines and validation of a run."""
    keras.utils.set_random_seed(config.seed)
    train_split = seg_data.load(config.dataset, config.train_split, **config.data_options)
    val_split = seg_data.load(config.dataset, config.val_split, **config.data_options)
    info = train_split.info
    weights = None
    if config.class_weights == "median":
        weights = median_frequency_weights(train_split.dataset(), info.num_classes, info.ignore_label)
        weights = (weights ** config.class_weight_power).tolist()
    elif config.class_weights is not None:
        raise ValueError(f"class_weights must be None or 'median', got {config.class_weights!r}")
    augment = seg_data.Augment(**config.augment) if config.augment is not None else None
    train_data = seg_data.train_pipeline(
        train_split, config.crop_size, config.batch_size, augment=augment, seed=config.seed
    )
    eval_size = tuple(config.eval_size or config.crop_size)
    if config.eval_size:
        val_data = None
        rebuild = _rebuilder(config)
        scorers = [LabelResolutionValidation(
            val_split, eval_size, batch_size=config.batch_size,
            rebuild=lambda m: rebuild(config.model, m, (*eval_size, 3), **config.model_options),
        )]
    else:
        # Validation inside fit() runs at the training input size (Keras metrics need equal shapes);
        # the final evaluation is at eval_size against the full-resolution labels.
        val_data = seg_data.train_pipeline(val_split, config.crop_size, config.batch_size, augment=None, shuffle=False)
        scorers = []
    steps = -(-len(train_split) // config.batch_size) * config.epochs
    return RunData(train_split, val_split, info, weights, train_data, val_data, scorers, eval_size, steps)


def build_model(config: TrainConfig, info: DatasetInfo):
    """``config.model`` at the crop size (DeepLabV3's image pooling needs a fixed input size;
    evaluation at another size rebuilds it with the trained weights, see ``load_run``), or the
    best model of ``config.init_from`` at the crop size.

    Raises:
      ConfigError: ``init_from`` holds another model, other model options or other classes.
    """
    if not config.init_from:
        return models.build(config.model, (*config.crop_size, 3), info.num_classes, **config.model_options)
    source = run_record(config.init_from)
    if (source["model"], source.get("model_options") or {}) != (config.model, config.model_options):
        raise ConfigError(
            f"init_from {config.init_from} holds a {source['model']!r} model with options "
            f"{source.get('model_options') or {}}, but this run is for {config.model!r} with {config.model_options}"
        )
    model, source_info = load_run(config.init_from, input_size=config.crop_size)
    if source_info.class_names != info.class_names:
        raise ConfigError(f"init_from {config.init_from} was trained on {source_info.class_names}, "
                          f"this run's data has {info.class_names}")
    return model


def inherited_record(config: TrainConfig) -> dict:
    """What a run started from ``config.init_from`` takes over from its record: the narrowed
    architecture of a filter-pruned source and the logit adjustment folded into its classifier."""
    if not config.init_from:
        return {}
    source = run_record(config.init_from)
    return {key: source[key] for key in ("filter_pruned", "logit_adjustment") if source.get(key)}


def _rebuilder(config: TrainConfig):
    if config.init_from and run_record(config.init_from).get("filter_pruned"):
        from tfseg.prune.filters import rebuild_pruned  # lazy: tfseg.prune imports this module

        return rebuild_pruned
    return models.rebuild


def fit_run(config: TrainConfig, run: RunData, model, record: dict, verbose="auto"):
    """Fits a compiled model (or Distiller) into ``config.out_dir`` and scores the best one on val.

    Writes ``run.json`` (``record`` + config + dataset info) first, the training time (over all
    sessions of a resumed run, in-fit validation included) after.

    Returns:
      (best model rebuilt at eval size, Keras History, validation scores).
    """
    out = Path(config.out_dir)
    write_json(out / RUN_FILE, {**config.to_dict(), **record, "info": run.info.to_dict(),
                                "class_weight_values": run.class_weights})
    history = fit(model, run.train_data, run.val_data, out, config.epochs, verbose=verbose, epoch_scorers=run.scorers)
    best, _ = load_run(out, input_size=run.eval_size)
    saved = json.loads((out / RUN_FILE).read_text())
    # Summed over sessions when the run was killed and resumed (TrainingClock).
    saved["train_seconds"] = json.loads((out / "train_time.json").read_text())["seconds"]
    write_json(out / RUN_FILE, saved)
    scores = evaluate(best, run.val_split, image_size=run.eval_size, batch_size=config.batch_size,
                      out_dir=out / "eval" / config.val_split, verbose=verbose)
    return best, history, scores


def train_run(config: TrainConfig, verbose="auto"):
    """Trains ``config.model`` on ``config.dataset`` and evaluates the best model on the val split.

    Resumes automatically if ``config.out_dir`` holds the backup of a killed run.

    Returns:
      (best model, Keras History, validation scores).
    """
    run = prepare_run(config)
    model = build_model(config, run.info)
    inherited = inherited_record(config)
    optimizer = make_optimizer(config.optimizer, config.learning_rate, config.schedule, total_steps=run.total_steps)
    loss = make_loss(config.loss, run.info.num_classes, run.class_weights, folded_logit_offset(inherited))
    compile_for_segmentation(model, run.info.num_classes, loss=loss, optimizer=optimizer)
    return fit_run(config, run, model, {**inherited, "num_params": model.count_params()}, verbose=verbose)


def load_run(run_dir, which: str = "best", input_size=None):
    """Loads a run's model (``best`` or ``last``) and its DatasetInfo.

    Quantization-aware runs (``tfseg.quantize.run``) load their ``{which}.h5`` instead.

    Args:
      run_dir: a training run directory.
      which: ``"best"`` or ``"last"``.
      input_size: (height, width) to rebuild the model at (with the trained weights), when it
        differs from the training size.

    Raises:
      FileNotFoundError: naming the missing file.
    """
    record = run_record(run_dir)
    if record.get("qat"):
        return _load_qat_run(run_dir, which, input_size, record)
    model_path = Path(run_dir) / f"{which}.keras"
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path} not found: is {run_dir} a finished tfseg training run?")
    model = keras.models.load_model(model_path, compile=False)
    if input_size is not None and tuple(model.input_shape[1:3]) != tuple(input_size):
        if record.get("filter_pruned"):  # narrower than the builder's network: rebuild it narrowed
            from tfseg.prune.filters import rebuild_pruned

            model = rebuild_pruned(record["model"], model, (*input_size, 3), **record["model_options"])
        else:
            model = models.rebuild(record["model"], model, (*input_size, 3), **record["model_options"])
    return model, DatasetInfo.from_dict(record["info"])


def _load_qat_run(run_dir, which, input_size, record):
    """A quantization-aware run (``tfseg.quantize.run``) keeps HDF5 models of a fixed input size."""
    from tfseg.quantize.qat import load_qat

    model = load_qat(Path(run_dir) / f"{which}.h5")
    if input_size is not None and tuple(model.input_shape[1:3]) != tuple(input_size):
        raise ConfigError(
            f"the quantization-aware model of {run_dir} takes {model.input_shape[1]}x{model.input_shape[2]} "
            f"inputs and cannot be rebuilt at {input_size[0]}x{input_size[1]}; fine-tune it at that size"
        )
    return model, DatasetInfo.from_dict(record["info"])


def run_record(run_dir) -> dict:
    """The ``run.json`` of a run directory (configuration, classes, palette, timings)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a tfseg training run?")
    return json.loads(path.read_text())


def fine_tuning_loss(record: dict, num_classes: int):
    """The loss a run was trained with (its ``loss`` name and class weights), for fine-tuning its model.

    A calibrated run's classifier carries its logit adjustment; the loss subtracts it so that
    fine-tuning (pruning, QAT) does not train it away.
    """
    return make_loss(record.get("loss", "ce"), num_classes, record.get("class_weight_values"),
                     folded_logit_offset(record))
