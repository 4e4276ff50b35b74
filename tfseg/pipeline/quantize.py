"""The quantize stage: quantization-aware fine-tuning of a run, recorded as a run directory.

``run(QATConfig(run_dir=..., out_dir=...))`` loads a run's model at its evaluation size, makes it
quantization-aware (``tfseg.quantize.quantize_aware``), fine-tunes it for a few epochs on the run's
training data with the run's loss (or, with ``teacher_run``, as the student of a ``Distiller``:
quantization-aware knowledge distillation), keeps the epoch with the best val mIoU at label
resolution, and writes a run: ``run.json`` (the source's lineage plus a ``qat`` section),
``best.h5`` / ``last.h5`` (HDF5: see ``save_qat``), ``log.csv``, ``curves.png``, ``eval/val/``.
"""

from __future__ import annotations

import dataclasses
import warnings

from tfseg import distribute
from tfseg._keras import keras
from tfseg.distill.distiller import Distiller
from tfseg.errors import ConfigError
from tfseg.pipeline.train import fit_and_score, total_steps
from tfseg.quantize.ptq import representative_images
from tfseg.quantize.qat import freeze_batch_norm, quantize_aware, save_qat
from tfseg.runs import Run
from tfseg.train import compile_for_segmentation, make_optimizer, segmentation_metrics


@dataclasses.dataclass
class QATConfig:
    """What a quantization-aware fine-tuning run needs.

    Attributes:
      run_dir: the trained float run (train or distill stage; a pruned run works too, with
        ``preserve_sparsity`` for magnitude pruning).
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
      losses: the distillation losses with a teacher (names or dicts, ``make_distillation_loss``).
      augment: use the run's augmentation (else plain resizing).
      calibration_images: training images the activation ranges start from
        (``calibrate_ranges``); 0 leaves TF-MOT's [-6, 6].
      freeze_batch_norm: every BatchNormalization normalises with its trained statistics and
        keeps them (``freeze_batch_norm``); weights, gamma, beta and ranges adapt to int8.
      seed: data order and augmentation.
      distribute: ``tfseg.distribute`` strategy (none, mirrored, multi_worker); ``batch_size`` is
        the global batch. With more than one replica the weights and batch norm follow the global
        batch, but TF-MOT moves each activation range towards the mean over replicas of each
        replica's own batch min/max (tensorflow/model-optimization#1068): ranges come out a little
        narrower than in one process, and the result depends on the number of replicas.
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
    distribute: str = "none"

    def __post_init__(self):
        distribute.check_mode(self.distribute)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d


def run(config: QATConfig, verbose="auto") -> Run:
    """Fine-tunes a quantization-aware copy of a run's model; see the module docstring.

    Raises:
      FileNotFoundError: the run (or teacher run) does not exist.
      ConfigError: a layer that cannot be quantized, a teacher trained on other classes, a source
        that is quantization-aware already.
    """
    strategy = distribute.strategy(config.distribute)  # first: a multi-worker one must precede any TF op
    if strategy.num_replicas_in_sync > 1:
        warnings.warn(f"quantization-aware training on {strategy.num_replicas_in_sync} replicas: activation ranges "
                      "follow per-replica batches (tensorflow/model-optimization#1068), so the result depends on "
                      "the number of replicas", stacklevel=2)
    source = Run.open(config.run_dir)
    keras.utils.set_random_seed(config.seed)
    if source.is_quantization_aware:
        raise ConfigError(f"{config.run_dir} is already a quantization-aware run; start from its float run")
    size = tuple(config.image_size or source.eval_size)
    qat_run = Run(config.out_dir, source.derive(
        config.out_dir, "quantize", crop_size=list(size), eval_size=list(size), epochs=config.epochs,
        batch_size=config.batch_size or source.batch_size, seed=config.seed,
        augment=source.record.get("augment", {}) if config.augment else None,
        qat={**config.to_dict(), "source_model": source.model_name},
    ))
    with strategy.scope():
        model = source.model(config.which, size=size)
        calibration = None
        if config.calibration_images:
            calibration = representative_images(source.train_split, size,
                                                config.calibration_images, seed=config.seed)
        qat = quantize_aware(model, preserve_sparsity=config.preserve_sparsity, calibration_data=calibration)
        distribute.synchronize_batch_norm(qat, strategy)
        if config.freeze_batch_norm:
            freeze_batch_norm(qat)
        optimizer = make_optimizer(source.record.get("optimizer", "adam"), config.learning_rate, "cosine",
                                   total_steps=total_steps(qat_run, config.epochs))
        trained = qat
        if config.teacher_run:
            teacher_run = Run.open(config.teacher_run)
            if teacher_run.info.class_names != source.info.class_names:
                raise ConfigError(f"the teacher {config.teacher_run} was trained on other classes: "
                                  f"{teacher_run.info.class_names}")
            teacher = teacher_run.model(size=size)
            losses = source.distillation_losses(config.losses)
            # Fake-quant ranges add a few non-trainable weights: compare sizes on the float student.
            trained = Distiller(teacher, qat, losses, allow_larger_student=model.count_params() <= teacher.count_params())
            trained.compile(optimizer, loss=source.loss(), metrics=segmentation_metrics(source.num_classes))
            qat_run.record["qat"]["distillation_losses"] = [kd.get_config() | {"class": type(kd).__name__}
                                                            for kd in losses]
        else:
            compile_for_segmentation(qat, source.num_classes, loss=source.loss(), optimizer=optimizer)
    qat_run.record["num_params"] = qat.count_params()
    return fit_and_score(qat_run, trained, config.epochs, verbose=verbose, model_suffix=".h5", save_last=save_qat)


__all__ = ["QATConfig", "run"]
