"""A training run end to end: data, model, fit, evaluation, and the run directory that records it.

A run directory holds ``run.json`` (what was trained on what, with the dataset's classes and
palette), ``best.keras``/``last.keras``, logs, curves and evaluation reports. ``load_run`` gives
back the model and its dataset info, so later stages (evaluate, distill, prune, export) start
from a directory rather than from remembered arguments.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from tfseg import data as seg_data
from tfseg import models
from tfseg._keras import keras
from tfseg.checkpoint import write_json
from tfseg.data.info import DatasetInfo
from tfseg.evaluate import evaluate
from tfseg.losses import median_frequency_weights
from tfseg.train import compile_for_segmentation, fit, make_optimizer

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
    eval_size: tuple | None = None  # model input size at evaluation; defaults to crop_size
    batch_size: int = 8
    epochs: int = 10
    loss: str = "ce"
    class_weights: str | None = None  # None or "median" (median-frequency from the train split)
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    schedule: str = "poly"
    augment: dict | None = dataclasses.field(default_factory=dict)  # Augment options; None: no augmentation
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["crop_size"] = list(self.crop_size)
        d["eval_size"] = list(self.eval_size) if self.eval_size else None
        return d


def train_run(config: TrainConfig, verbose="auto"):
    """Trains ``config.model`` on ``config.dataset`` and evaluates the best model on the val split.

    Resumes automatically if ``config.out_dir`` holds the backup of a killed run.

    Returns:
      (best model, Keras History, validation scores).
    """
    keras.utils.set_random_seed(config.seed)
    out = Path(config.out_dir)
    train_split = seg_data.load(config.dataset, config.train_split, **config.data_options)
    val_split = seg_data.load(config.dataset, config.val_split, **config.data_options)
    info = train_split.info
    weights = None
    if config.class_weights == "median":
        weights = median_frequency_weights(train_split.dataset(), info.num_classes, info.ignore_label).tolist()
    elif config.class_weights is not None:
        raise ValueError(f"class_weights must be None or 'median', got {config.class_weights!r}")

    # Built at the crop size: some models (DeepLabV3's image pooling) need a fixed input size.
    # Evaluation at another size rebuilds the model with the trained weights (load_run).
    model = models.build(config.model, (*config.crop_size, 3), info.num_classes, **config.model_options)
    augment = seg_data.Augment(**config.augment) if config.augment is not None else None
    train_data = seg_data.train_pipeline(
        train_split, config.crop_size, config.batch_size, augment=augment, seed=config.seed
    )
    eval_size = tuple(config.eval_size or config.crop_size)
    # Validation inside fit() runs at the training input size (Keras metrics need equal shapes);
    # the final evaluation below is at eval_size against the full-resolution labels.
    val_data = seg_data.train_pipeline(val_split, config.crop_size, config.batch_size, augment=None, shuffle=False)
    steps = -(-len(train_split) // config.batch_size) * config.epochs
    optimizer = make_optimizer(config.optimizer, config.learning_rate, config.schedule, total_steps=steps)
    compile_for_segmentation(model, info.num_classes, loss=config.loss, class_weights=weights, optimizer=optimizer)

    write_json(out / RUN_FILE, {**config.to_dict(), "info": info.to_dict(), "class_weight_values": weights,
                                "num_params": model.count_params()})
    start = time.time()
    history = fit(model, train_data, val_data, out, config.epochs, verbose=verbose)
    best, _ = load_run(out, input_size=eval_size)
    record = json.loads((out / RUN_FILE).read_text())
    record["train_seconds"] = round(time.time() - start, 1)
    write_json(out / RUN_FILE, record)
    scores = evaluate(best, val_split, image_size=eval_size, batch_size=config.batch_size,
                      out_dir=out / "eval" / config.val_split, verbose=verbose)
    return best, history, scores


def load_run(run_dir, which: str = "best", input_size=None):
    """Loads a run's model (``best`` or ``last``) and its DatasetInfo.

    Args:
      run_dir: a training run directory.
      which: ``"best"`` or ``"last"``.
      input_size: (height, width) to rebuild the model at (with the trained weights), when it
        differs from the training size.

    Raises:
      FileNotFoundError: naming the missing file.
    """
    record = run_record(run_dir)
    model_path = Path(run_dir) / f"{which}.keras"
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path} not found: is {run_dir} a finished tfseg training run?")
    model = keras.models.load_model(model_path, compile=False)
    if input_size is not None and tuple(model.input_shape[1:3]) != tuple(input_size):
        model = models.rebuild(record["model"], model, (*input_size, 3), **record["model_options"])
    return model, DatasetInfo.from_dict(record["info"])


def run_record(run_dir) -> dict:
    """The ``run.json`` of a run directory (configuration, classes, palette, timings)."""
    path = Path(run_dir) / RUN_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {run_dir} a tfseg training run?")
    return json.loads(path.read_text())
