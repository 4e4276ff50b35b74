"""Quantization-aware fine-tuning of a trained run, recorded as a run directory.

``qat_run(QATConfig(run_dir=..., out_dir=...))`` loads a run's model at its evaluation size,
makes it quantization-aware (``quantize_aware``), fine-tunes it for a few epochs on the run's
training data with the run's loss (or, with ``teacher_run``, as the student of a ``Distiller``:
quantization-aware knowledge distillation), keeps the epoch with the best validation mIoU at
label resolution, and writes a run directory that ``tfseg.run.load_run``, ``tfseg evaluate`` and
``tfseg export`` take like any other: ``run.json`` (the source run's record plus a ``qat``
section), ``best.h5`` / ``last.h5`` (HDF5: see ``save_qat``), ``log.csv``, ``curves.png``,
``eval/val/``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from tfseg._keras import keras
from tfseg.checkpoint import BestModelCheckpoint, write_json
from tfseg.errors import ConfigError
from tfseg.quantize.ptq import representative_images
from tfseg.quantize.qat import freeze_batch_norm, quantize_aware, save_qat

QAT_RECORD_KEY = "qat"


@dataclasses.dataclass
class QATConfig:
    """What a quantization-aware fine-tuning run needs.

    Attributes:
      run_dir: the trained float run (``tfseg train`` / ``tfseg distill``; a pruned run works too,
        with ``preserve_sparsity``).
      out_dir: the new run directory.
      which: ``best`` or ``last`` model of ``run_dir``.
      epochs: fine-tuning epochs (a few: the weights are trained, only the ranges and the
        rounding are new).
      learning_rate: peak rate, decayed to 0 by a cosine over the run (1-10 % of training's).
      batch_size: default the run's.
      image_size: (height, width) to train and validate at; default the run's evaluation size.
        The QAT model keeps this input size (it cannot be rebuilt at another one).
      preserve_sparsity: TF-MOT's prune-preserving QAT (for magnitude-pruned models).
      teacher_run: a teacher run: fine-tune inside a ``Distiller`` (quantization-aware KD).
      losses: the distillation losses with a teacher (names or dicts, see ``tfseg.distill.run``).
      augment: use the run's augmentation (else plain resizing).
      calibration_images: training images the activation ranges start from
        (``calibrate_ranges``); 0 leaves TF-MOT's [-6, 6].
      freeze_batch_norm: every BatchNormalization normalises with its trained statistics and
        keeps them (``freeze_batch_norm``); weights, gamma, beta and ranges adapt to int8.
      seed: data order and augmentation.
    """

    run_dir: str
    out_dir: str
    which: str = "best"
    epochs: int = 3
    learning_rate: float = 1e-4
    batch_size: int | None = None
    image_size: tuple | None = None
    preserve_sparsity: bool = False
    teacher_run: str | None = None
    losses: list = dataclasses.field(default_factory=lambda: ["pixel_kd"])
    augment: bool = True
    calibration_images: int = 32
    freeze_batch_norm: bool = False
    seed: int = 0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d


def _train_config(config: QATConfig, record: dict, size):
    from tfseg.run import TrainConfig

    overrides = dict(
        out_dir=config.out_dir, crop_size=tuple(size), eval_size=tuple(size), epochs=config.epochs,
        learning_rate=config.learning_rate, schedule="cosine", seed=config.seed,
        batch_size=config.batch_size or record.get("batch_size", 8),
    )
    if not config.augment:
        overrides["augment"] = None
    return TrainConfig.from_record(record, **overrides)


def qat_run(config: QATConfig, verbose="auto"):
    """Fine-tunes a quantization-aware copy of a run's model; see the module docstring.

    Returns:
      (best QAT model, Keras History, validation scores of the best model).

    Raises:
      FileNotFoundError: the run (or teacher run) does not exist.
      ConfigError: a layer that cannot be quantized, a teacher trained on other classes.

    Example:
      >>> qat, _, scores = qat_run(QATConfig("runs/camvid/student-kd", "runs/camvid/student-qkd",
      ...                                    teacher_run="runs/camvid/teacher", epochs=3))
    """
    from tfseg.calibrate import folded_logit_offset
    from tfseg.distill.distiller import Distiller
    from tfseg.distill.losses import make_distillation_loss
    from tfseg.evaluate import evaluate
    from tfseg.run import fine_tuning_loss, load_run, prepare_run, run_record
    from tfseg.train import CurvesPlot, compile_for_segmentation, make_optimizer, progress_verbosity
    from tfseg.train import segmentation_metrics

    record = run_record(config.run_dir)
    if record.get(QAT_RECORD_KEY):
        raise ConfigError(f"{config.run_dir} is already a quantization-aware run; start from its float run")
    size = tuple(config.image_size or record.get("eval_size") or record["crop_size"])
    train_config = _train_config(config, record, size)
    run = prepare_run(train_config)
    model, info = load_run(config.run_dir, config.which, input_size=size)
    if info.class_names != run.info.class_names:
        raise ConfigError(f"{config.run_dir} was trained on {info.class_names}, its data now has {run.info.class_names}")
    calibration = None
    if config.calibration_images:
        calibration = representative_images(run.train_split, size, config.calibration_images, seed=config.seed)
    qat = quantize_aware(model, preserve_sparsity=config.preserve_sparsity, calibration_data=calibration)
    if config.freeze_batch_norm:
        freeze_batch_norm(qat)
    optimizer = make_optimizer(train_config.optimizer, config.learning_rate, "cosine", total_steps=run.total_steps)
    loss = fine_tuning_loss(record, info.num_classes)
    trained = qat
    qat_record = {**config.to_dict(), "source_model": record["model"]}
    if config.teacher_run:
        teacher, teacher_info = load_run(config.teacher_run, input_size=size)
        if teacher_info.class_names != info.class_names:
            raise ConfigError(f"the teacher {config.teacher_run} was trained on other classes: {teacher_info.class_names}")
        losses = [make_distillation_loss(spec, run.class_weights, folded_logit_offset(record)) for spec in config.losses]
        # Fake-quant ranges add a few non-trainable weights: compare sizes on the float student.
        trained = Distiller(teacher, qat, losses, allow_larger_student=model.count_params() <= teacher.count_params())
        trained.compile(optimizer, loss=loss, metrics=segmentation_metrics(info.num_classes))
        qat_record["distillation_losses"] = [kd.get_config() | {"class": type(kd).__name__} for kd in losses]
    else:
        compile_for_segmentation(qat, info.num_classes, loss=loss, optimizer=optimizer)

    out = Path(config.out_dir)
    saved = {**record, "out_dir": str(out), QAT_RECORD_KEY: qat_record, "eval_size": list(size),
             "num_params": qat.count_params()}
    write_json(out / "run.json", saved)
    start = time.time()
    history = trained.fit(
        run.train_data, epochs=config.epochs, verbose=progress_verbosity(verbose),
        callbacks=[*run.scorers,
                   keras.callbacks.BackupAndRestore(str(out / "backup")),
                   BestModelCheckpoint(out / "best.h5", monitor="val_miou"),
                   keras.callbacks.CSVLogger(str(out / "log.csv"), append=True),
                   CurvesPlot(out / "log.csv", out / "curves.png")],
    )
    save_qat(qat, out / "last.h5")
    backup = out / "backup"  # BackupAndRestore leaves its emptied folder behind
    if backup.is_dir() and not any(backup.iterdir()):
        backup.rmdir()
    saved["train_seconds"] = round(time.time() - start, 1)
    write_json(out / "run.json", saved)
    best, _ = load_run(out, "best")
    scores = evaluate(best, run.val_split, image_size=size, batch_size=train_config.batch_size,
                      out_dir=out / "eval" / train_config.val_split, verbose=verbose)
    return best, history, scores


def is_qat_run(run_dir) -> bool:
    """Whether a run directory holds a quantization-aware run (from ``qat_run``)."""
    path = Path(run_dir) / "run.json"
    return path.exists() and bool(json.loads(path.read_text()).get(QAT_RECORD_KEY))


__all__ = ["QATConfig", "QAT_RECORD_KEY", "is_qat_run", "qat_run"]
