"""The run directory, typed: what a stage of the pipeline reads from the run it starts from.

A run directory holds ``run.json`` (the record: what was trained on what, with the dataset's
classes and palette), the model files (``best.keras``/``last.keras``, or ``best.h5``/``last.h5`` for
a quantization-aware run), logs, curves and evaluation reports. ``Run`` is the one reader of that
record: its data (splits, training batches, class weights), its loss, its model at any input size,
and ``derive`` for the fresh record of a run made from it (pruned, quantization-aware, ...).

    run = Run.open("runs/camvid/teacher")
    model = run.model(size=run.eval_size)            # rebuilt at 360x480 with the trained weights
    test = run.split("test")
    child = run.derive("runs/camvid/teacher-pruned", stage="prune", pruning={...})

Run directories written before the stages recorded their name open too: the stage is read from the
keys they wrote (``qat``, ``filter_pruned``, ``teacher``).
"""

from __future__ import annotations

import json
from pathlib import Path

from tfseg import data as seg_data
from tfseg import models
from tfseg._keras import keras
from tfseg.calibrate import folded_logit_offset
from tfseg.checkpoint import write_json
from tfseg.data.info import DatasetInfo
from tfseg.distill.losses import make_distillation_loss
from tfseg.errors import ConfigError
from tfseg.prune.filters import rebuild_pruned
from tfseg.quantize.qat import load_qat
from tfseg.train import make_loss

RUN_FILE = "run.json"
# What a derived run takes over from its source: what its data are, how they are fed and weighed,
# and what its model's architecture and classifier are. Timings, output folder and the source's own
# stage settings are not inherited (each stage records its own).
LINEAGE_FIELDS = (
    "model", "model_options", "dataset", "data_options", "train_split", "val_split", "crop_size", "eval_size",
    "batch_size", "loss", "class_weights", "class_weight_power", "class_weight_values", "augment", "seed", "info",
    "filter_pruned", "logit_adjustment",
)
REQUIRED_FIELDS = ("model", "dataset", "crop_size", "info")


class Run:
    """A run directory and its record. Build with ``Run.open(path)`` (or a stage's ``run(config)``)."""

    def __init__(self, path, record: dict):
        self.path = Path(path)
        self.record = record
        missing = [key for key in REQUIRED_FIELDS if key not in record]
        if missing:
            raise ConfigError(f"{self.path / RUN_FILE} lacks {', '.join(missing)}: it was not written by a tfseg "
                              "training stage (train, distill, prune, quantize); train the model again with tfseg")

    @classmethod
    def open(cls, path) -> Run:
        """Reads ``path/run.json``.

        Raises:
          FileNotFoundError: naming the missing file.
          ConfigError: the record is not a tfseg run's.
        """
        file = Path(path) / RUN_FILE
        if not file.exists():
            raise FileNotFoundError(f"{file} not found: is {path} a tfseg run directory?")
        try:
            record = json.loads(file.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{file} is not valid JSON ({error})") from None
        return cls(path, record)

    def __repr__(self):
        return f"Run({str(self.path)!r}, stage={self.stage!r}, model={self.model_name!r})"

    # ------------------------------------------------------------------ what the record says

    @property
    def stage(self) -> str:
        """The stage that made this run: train, distill, prune, quantize (calibrate keeps the stage)."""
        if self.record.get("stage"):
            return self.record["stage"]
        if self.record.get("qat"):
            return "quantize"
        if self.record.get("filter_pruned") and "rounds" in self.record:
            return "prune"
        return "distill" if self.record.get("teacher") else "train"

    @property
    def model_name(self) -> str:
        return self.record["model"]

    @property
    def model_options(self) -> dict:
        return dict(self.record.get("model_options") or {})

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo.from_dict(self.record["info"])

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def crop_size(self) -> tuple[int, int]:
        return tuple(self.record["crop_size"])

    @property
    def eval_size(self) -> tuple[int, int]:
        """The model input size the run is scored at (the crop size when none was set)."""
        return tuple(self.record.get("eval_size") or self.record["crop_size"])

    @property
    def batch_size(self) -> int:
        return int(self.record.get("batch_size", 8))

    @property
    def seed(self) -> int:
        return int(self.record.get("seed", 0))

    @property
    def class_weights(self) -> list | None:
        """The class weights its loss used (``None``: unweighted)."""
        return self.record.get("class_weight_values")

    @property
    def logit_offset(self) -> list | None:
        """The logit adjustment its classifier carries (``tfseg.calibrate``); losses that fine-tune
        the model subtract it so that training does not undo it."""
        return folded_logit_offset(self.record)

    @property
    def is_quantization_aware(self) -> bool:
        return bool(self.record.get("qat"))

    @property
    def is_filter_pruned(self) -> bool:
        return bool(self.record.get("filter_pruned"))

    @property
    def finished(self) -> bool:
        """Whether the stage that writes this run completed (a killed one resumes instead)."""
        if "complete" in self.record:
            return bool(self.record["complete"])
        # Records of older versions: the end of fit() writes train_seconds, the pruning stage its rounds.
        return "train_seconds" in self.record or "rounds" in self.record

    # ------------------------------------------------------------------ its data and loss

    def split(self, name: str, dataset: str | None = None, data_options: dict | None = None):
        """The ``name`` split of the run's dataset, with the run's data options; ``dataset`` and
        ``data_options`` read it from elsewhere instead (another copy of the same classes)."""
        options = (self.record.get("data_options") or {}) if data_options is None else data_options
        return seg_data.load(dataset or self.record["dataset"], name, **options)

    @property
    def train_split(self):
        """The split the run trained on (its own name for it, ``train`` by default)."""
        return self.split(self.record.get("train_split", "train"))

    @property
    def augment(self):
        """The run's augmentation (``tfseg.data.Augment``), or ``None`` if it trained without."""
        options = self.record.get("augment", {})
        return None if options is None else seg_data.Augment(**options)

    def training_data(self, size=None, batch_size: int | None = None, augment: bool = True, seed: int | None = None):
        """Batches of the train split as the run was fed them (crops of ``size``, default its crop size)."""
        return seg_data.train_pipeline(
            self.train_split, tuple(size or self.crop_size),
            batch_size or self.batch_size, augment=self.augment if augment else None,
            seed=self.seed if seed is None else seed,
        )

    def loss(self):
        """The loss the run was trained with (name, class weights), scoring logits minus its logit
        adjustment: the loss to fine-tune its model with."""
        return make_loss(self.record.get("loss", "ce"), self.num_classes, self.class_weights, self.logit_offset)

    def distillation_losses(self, specs) -> list:
        """Distillation losses (names or dicts, ``make_distillation_loss``) for a student of this run:
        their ground-truth terms weigh classes like the run's loss and keep its logit adjustment."""
        return [make_distillation_loss(spec, self.class_weights, self.logit_offset) for spec in specs]

    # ------------------------------------------------------------------ its models

    def model_path(self, which: str = "best") -> Path:
        return self.path / f"{which}{'.h5' if self.is_quantization_aware else '.keras'}"

    def model(self, which: str = "best", size=None):
        """The run's ``which`` model (``best`` or ``last``), rebuilt at ``size`` (height, width) when
        given and different from the size it was saved at.

        Raises:
          FileNotFoundError: naming the missing model file.
          ConfigError: a quantization-aware model asked for at another size (it cannot be rebuilt).
        """
        path = self.model_path(which)
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {self.path} a finished tfseg run?")
        if self.is_quantization_aware:
            model = load_qat(path)
            if size is not None and tuple(model.input_shape[1:3]) != tuple(size):
                raise ConfigError(
                    f"the quantization-aware model of {self.path} takes {model.input_shape[1]}x{model.input_shape[2]} "
                    f"inputs and cannot be rebuilt at {size[0]}x{size[1]}; fine-tune it at that size"
                )
            return model
        model = keras.models.load_model(path, compile=False)
        if size is not None and tuple(model.input_shape[1:3]) != tuple(size):
            model = self.rebuild(model, size)
        return model

    def rebuild(self, model, size):
        """``model`` (of this run's architecture) rebuilt at ``size`` with its weights."""
        # A filter-pruned model is narrower than its builder's network: rebuild it narrowed.
        rebuild = rebuild_pruned if self.is_filter_pruned else models.rebuild
        return rebuild(self.model_name, model, (*tuple(size), 3), **self.model_options)

    def scores(self, split: str = "val") -> dict | None:
        """The scores last written for ``split`` (``eval/<split>/scores.json``), or ``None``."""
        path = self.path / "eval" / split / "scores.json"
        return json.loads(path.read_text()) if path.exists() else None

    # ------------------------------------------------------------------ runs made from it

    def derive(self, out_dir, stage: str, **fields) -> dict:
        """The record of a run made from this one by ``stage``: the lineage fields (data, feeding,
        architecture, classifier), ``source`` and ``stage``, then ``fields``. Not written."""
        lineage = {key: self.record[key] for key in LINEAGE_FIELDS if key in self.record}
        return {**lineage, "stage": stage, "source": str(self.path), "out_dir": str(out_dir), **fields}

    def update(self, **fields) -> Run:
        """Adds ``fields`` to ``run.json`` (atomically) and to this object."""
        self.record = {**self.record, **fields}
        write_json(self.path / RUN_FILE, self.record)
        return self


def write_run(out_dir, record: dict) -> Run:
    """Writes ``record`` as ``out_dir/run.json`` (atomically) and returns the Run."""
    run = Run(out_dir, record)
    write_json(run.path / RUN_FILE, record)
    return run


__all__ = ["LINEAGE_FIELDS", "RUN_FILE", "Run", "write_run"]
