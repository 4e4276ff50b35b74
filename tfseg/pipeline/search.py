"""The search stage: a latency-aware architecture search on a dataset, written to a search directory.

``run(SearchConfig(...))`` splits the train split into a half for the supernet's weights and a half
for the architecture (and, with learning by teaching, a held-out share of unlabeled images), checks
the latency table against the deployment size and this runtime before any training (missing
entries are measured on demand), and fits a ``SearchController`` (or ``LBTController``) with resume.
The directory holds:

- ``search.json``: the configuration, the table used, the predicted latency, ``complete``;
- ``architecture.json``: the derived network (``tfseg train --model searched --model-option
  architecture=DIR/architecture.json`` trains it), one ``arch_epochNNN.json`` per epoch, and
  ``history.jsonl`` (predicted ms, w, skip shares, the cells, per epoch);
- ``log.csv``, ``search.png`` (val mIoU of the supernet and predicted latency per epoch), ``state/``.
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
from tfseg.data.subsets import partition
from tfseg.errors import ConfigError
from tfseg.nas.architecture import Architecture
from tfseg.nas.controller import (
    LATENCY_COEFFICIENTS,
    BalanceLatencyWeight,
    DerivedWidthBatchNorm,
    SearchController,
    paired_dataset,
    search_callbacks,
)
from tfseg.nas.expected_latency import LatencyModel
from tfseg.nas.latency_table import LatencyTable, installed_runtime_version
from tfseg.nas.lbt import LBTController, lbt_dataset
from tfseg.nas.space import SearchSpace, check_input_size
from tfseg.nas.supernet import SuperNet
from tfseg.options import augment_options
from tfseg.report import plot_tradeoff
from tfseg.runs import Run
from tfseg.train import progress_verbosity

SEARCH_FILE = "search.json"
MAX_SKIP_SHARE = 0.5  # the early stop's limit on skip ops in the derived net (DARTS+)


@dataclasses.dataclass
class SearchConfig:
    """A search; defaults search a tiny space on the built-in scenes in a minute or two.

    ``proxy_size`` is the size the supernet trains at, ``deploy_size`` the size the latency table is
    measured at (the derived net's deployment size). ``latency_table``: a table file (created and
    filled on demand when missing; default ``<out_dir>/latency_table.json``). ``latency_band``:
    (low, high) ms around the target; w doubles above it and halves below it after each epoch.
    ``teacher_run``: distil its logits into the supernet's weight steps. ``lbt``: learning by
    teaching, with ``unlabeled_fraction`` of the train split held out as the unlabeled images and
    ``lbt_student`` (a zoo model) as the student.
    """

    out_dir: str = "runs/search"
    dataset: str = "scenes"
    data_options: dict = dataclasses.field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    space: dict = dataclasses.field(default_factory=dict)
    proxy_size: tuple = (64, 64)
    deploy_size: tuple = (96, 96)
    latency_table: str | None = None
    latency_dtype: str = "int8"
    latency_threads: int = 1
    latency_weight: float = 0.01
    # (ops, path, widths) weights of the decoupled latency terms; FasterSeg's (1, 497, 2) / 500 by default
    latency_coefficients: tuple = LATENCY_COEFFICIENTS
    # w at the first architecture step := this x the ratio of the segmentation loss's gradient norm
    # to the latency term's (BalanceLatencyWeight); None keeps latency_weight
    latency_balance: float | None = None
    latency_band: tuple | None = None
    batch_size: int = 8
    epochs: int = 4
    warmup_epochs: int = 2
    learning_rate: float = 0.02
    arch_learning_rate: float = 3e-4
    augment: dict | None = None  # tfseg.data.Augment options ({} its defaults); None: no augmentation
    teacher_run: str | None = None
    lbt: bool = False
    lbt_student: str = "fastseg_tiny"
    teaching_weight: float = 1.0
    unlabeled_fraction: float = 0.2
    precise_bn: int = 8  # training batches the supernet's BN statistics are re-estimated on before validation
    seed: int = 0

    def __post_init__(self):
        self.proxy_size = check_input_size(self.proxy_size)
        self.deploy_size = check_input_size(self.deploy_size)
        self.augment = augment_options(self.augment)
        self.latency_coefficients = tuple(float(c) for c in self.latency_coefficients)
        if self.latency_balance is not None and self.latency_balance <= 0:
            raise ConfigError(f"latency_balance must be > 0, got {self.latency_balance}")
        if self.latency_band is not None:
            self.latency_band = tuple(float(v) for v in self.latency_band)
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup_epochs must be between 0 and epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.lbt and not 0 < self.unlabeled_fraction < 0.5:
            raise ConfigError(f"unlabeled_fraction must be in (0, 0.5), got {self.unlabeled_fraction}")

    @property
    def search_space(self) -> SearchSpace:
        return SearchSpace.from_dict(self.space)

    @property
    def table_path(self) -> Path:
        return Path(self.latency_table) if self.latency_table else Path(self.out_dir) / "latency_table.json"

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def read_record(out_dir) -> dict:
    """The search directory's ``search.json`` ({} before a search wrote it)."""
    path = Path(out_dir) / SEARCH_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def is_finished(out_dir) -> bool:
    return bool(read_record(out_dir).get("complete"))


def latency_model(config: SearchConfig, num_classes: int, verbose="auto") -> LatencyModel:
    """The table at ``config.table_path``, checked against the deployment size, dtype, runtime and
    threads (a ConfigError naming the file on a mismatch), with its missing entries measured."""
    space, path = config.search_space, config.table_path
    if path.exists():
        table = LatencyTable.load(path, verbose=verbose)
        table.check_compatible(config.deploy_size, config.latency_dtype, installed_runtime_version(),
                               threads=(config.latency_threads,))
    else:
        table = LatencyTable(config.deploy_size, num_classes, config.latency_dtype,
                             sorted({1, 2, config.latency_threads}), space=space, path=path, verbose=verbose)
    return LatencyModel(table, space, num_classes, threads=config.latency_threads)


def _datasets(config: SearchConfig, train_split):
    """The train split's parts (weights, architecture[, unlabeled]) as the controller's paired
    batches, with the steps per epoch, the parts and the weights and architecture parts' own batches."""
    fractions = [0.5, 0.5] if not config.lbt else [(1 - config.unlabeled_fraction) / 2] * 2 + [config.unlabeled_fraction]
    parts = partition(train_split, fractions, config.seed, names=["weights", "architecture", "unlabeled"][:len(fractions)])
    augment = None if config.augment is None else seg_data.Augment(**config.augment)
    pipelines = [seg_data.train_pipeline(part, config.proxy_size, config.batch_size, augment=augment,
                                         seed=config.seed + i, repeat=True, drop_remainder=True)
                 for i, part in enumerate(parts)]
    steps = max(1, max(len(part) for part in parts[:2]) // config.batch_size)
    data = paired_dataset(*pipelines) if not config.lbt else lbt_dataset(*pipelines)
    return data, steps, parts, pipelines[:2]


def _controller(config: SearchConfig, num_classes: int, latency: LatencyModel, warmup_steps: int):
    supernet = SuperNet(config.search_space, config.proxy_size, num_classes)
    teacher = Run.open(config.teacher_run).model(size=config.proxy_size) if config.teacher_run else None
    common = dict(latency_weight=config.latency_weight, latency_coefficients=config.latency_coefficients,
                  warmup_steps=warmup_steps, teacher=teacher)
    if config.lbt:
        student = models.build(config.lbt_student, (*config.proxy_size, 3), num_classes)
        controller = LBTController(supernet, latency, student=student, teaching_weight=config.teaching_weight, **common)
    else:
        controller = SearchController(supernet, latency, **common)
    controller.compile(optimizer=keras.optimizers.SGD(config.learning_rate, momentum=0.9, jit_compile=False),
                       arch_optimizer=keras.optimizers.Adam(config.arch_learning_rate, beta_1=0.5, beta_2=0.999,
                                                            jit_compile=False))
    return controller


def read_history(out_dir) -> list:
    """The search's per-epoch records (``history.jsonl``: epoch, predicted ms, w, skip share, the
    cells), [] before its first epoch."""
    path = Path(out_dir) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def supernet_val_miou(out_dir) -> dict:
    """Epoch (from 1) -> the supernet's val mIoU, from the search's ``log.csv`` ({} without one)."""
    path = Path(out_dir) / "log.csv"
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines or "val_miou" not in lines[0].split(","):
        return {}
    column = lines[0].split(",").index("val_miou")
    return {int(row.split(",")[0]) + 1: float(row.split(",")[column]) for row in lines[1:]}


def plot_search(out_dir, path: Path, band=None):
    """Per epoch: the supernet's val mIoU, the derived net's predicted latency (``band`` shaded) and
    the latency weight w."""
    history, miou = read_history(out_dir), supernet_val_miou(out_dir)
    if not history or not miou:
        return None
    rows = [{"epoch": h["epoch"], "predicted ms": h["predicted_ms"], "latency weight w": h["w"],
             "supernet val mIoU": 100 * miou.get(h["epoch"], float("nan"))} for h in history]
    return plot_tradeoff(rows, "epoch", ["supernet val mIoU", "predicted ms", "latency weight w"], path,
                         title="architecture search", log_scale=["latency weight w"],
                         bands={"predicted ms": band} if band else None)


def final_architecture(out: Path, derived: Architecture, max_skip_share: float = MAX_SKIP_SHARE):
    """The search's result and the epoch it is from (None: derived at the end): ``derived``, unless
    skips took over (more than ``max_skip_share`` of its cells, the early stop's rule), then the last
    epoch's architecture before they did (DARTS+ keeps the net from before the collapse)."""
    history = read_history(out)
    if not history or history[-1]["skip_op_share"] <= max_skip_share:
        return derived, None
    earlier = [h["epoch"] for h in history if h["skip_op_share"] <= max_skip_share]
    if not earlier:
        return derived, None
    return Architecture.load(out / f"arch_epoch{earlier[-1]:03d}.json"), earlier[-1]


def run(config: SearchConfig, verbose="auto") -> Architecture:
    """Searches; resumes a killed search in ``config.out_dir``; returns the derived architecture.

    Raises:
      ConfigError: a bad space or size, a latency table measured at another size, dtype or on
        another runtime, a teacher trained on other classes — all before any training.
    """
    out = Path(config.out_dir)
    started = time.time()
    if is_finished(out):
        return Architecture.load(out / "architecture.json")
    keras.utils.set_random_seed(config.seed)
    train_split = seg_data.load(config.dataset, config.train_split, **config.data_options)
    val_split = seg_data.load(config.dataset, config.val_split, **config.data_options)
    info = train_split.info
    if config.teacher_run and Run.open(config.teacher_run).info.class_names != info.class_names:
        raise ConfigError(f"the teacher in {config.teacher_run} was trained on other classes than {config.dataset!r}")
    latency = latency_model(config, info.num_classes, verbose=verbose)
    data, steps, parts, (weight_batches, arch_batches) = _datasets(config, train_split)
    controller = _controller(config, info.num_classes, latency, warmup_steps=config.warmup_epochs * steps)
    record = {**config.to_dict(), "stage": "search", "info": info.to_dict(), "complete": False,
              "parts": {part.name: len(part) for part in parts}, "steps_per_epoch": steps,
              "latency_table_file": str(config.table_path), "latency_table_meta": latency.table.meta}
    out.mkdir(parents=True, exist_ok=True)
    spent_before = read_record(out).get("search_seconds", 0.0)  # a resumed search adds to its earlier time
    record["search_seconds"] = spent_before
    write_json(out / SEARCH_FILE, record)
    initial_epoch = controller.restore_state(out / "state")
    val_data = seg_data.train_pipeline(val_split, config.proxy_size, config.batch_size, augment=None, shuffle=False)
    def record_time(*_):  # each epoch, so that a killed search's time still counts when it resumes
        record["search_seconds"] = round(spent_before + time.time() - started, 1)
        write_json(out / SEARCH_FILE, record)

    precise_bn = [DerivedWidthBatchNorm(controller.supernet, weight_batches, config.precise_bn)] if config.precise_bn else []
    balance = [BalanceLatencyWeight(arch_batches, config.latency_balance)] if config.latency_balance else []
    callbacks = [*precise_bn, *balance, *search_callbacks(out, config.latency_band, max_skip_op_share=MAX_SKIP_SHARE),
                 keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
                 keras.callbacks.LambdaCallback(on_epoch_end=record_time)]
    controller.fit(data, epochs=config.epochs, steps_per_epoch=steps, initial_epoch=initial_epoch,
                   validation_data=val_data, callbacks=callbacks, verbose=progress_verbosity(verbose))
    architecture, epoch = final_architecture(out, controller.supernet.arch.derive())
    architecture.save(out / "architecture.json")
    plot_search(out, out / "search.png", config.latency_band)
    write_json(out / SEARCH_FILE, {**record, "complete": True, "epochs_run": int(controller.finished_epochs.numpy()),
                                   "predicted_ms": latency.predict(architecture), "architecture_epoch": epoch,
                                   "search_seconds": round(spent_before + time.time() - started, 1)})
    return architecture


__all__ = ["SEARCH_FILE", "SearchConfig", "final_architecture", "is_finished", "latency_model", "read_history",
           "read_record", "run", "supernet_val_miou"]
