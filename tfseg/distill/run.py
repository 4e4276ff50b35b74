"""A distillation run: a student trained from a teacher run directory, recorded like a training run.

The run directory has the same layout as ``tfseg.run.train_run``'s (``run.json``, ``best.keras``
= the student, logs, curves, evaluation), so ``tfseg.run.load_run``, ``tfseg evaluate`` and the
export tools take it as they take any run. ``run.json`` also records the teacher and the losses.
"""

from __future__ import annotations

import dataclasses

from tfseg.calibrate import folded_logit_offset
from tfseg.distill.losses.registry import make_distillation_loss
from tfseg.distill.distiller import Distiller
from tfseg.errors import ConfigError
from tfseg.run import TrainConfig, build_model, fit_run, inherited_record, load_run, prepare_run
from tfseg.train import check_output_classes, make_loss, make_optimizer, segmentation_metrics

@dataclasses.dataclass
class DistillConfig(TrainConfig):
    """A TrainConfig for the student (``model`` etc.) plus the teacher and the losses.

    ``losses``: names or dicts for ``make_distillation_loss``; ``[]`` trains the student alone
    through the same loop (the baseline of an ablation). ``student_loss_weight``: see Distiller.
    """

    out_dir: str = "runs/distill"
    teacher_run: str = "runs/camvid/teacher"
    teacher_which: str = "best"
    losses: list = dataclasses.field(default_factory=lambda: ["pixel_kd"])
    student_loss_weight: float | None = None


def load_teacher(config: DistillConfig):
    """The teacher of a run directory, rebuilt at the student's training crop size."""
    teacher, info = load_run(config.teacher_run, config.teacher_which, input_size=config.crop_size)
    return teacher, info


def distill_run(config: DistillConfig, verbose="auto"):
    """Distils ``config.teacher_run``'s model into a new ``config.model`` student.

    Returns:
      (best student at eval size, Keras History, validation scores).

    Raises:
      ConfigError: the teacher was trained on other classes, bad loss specification.
    """
    run = prepare_run(config)
    teacher, teacher_info = load_teacher(config)
    if teacher_info.class_names != run.info.class_names:
        raise ConfigError(
            f"the teacher in {config.teacher_run} was trained on classes {teacher_info.class_names}, "
            f"but {config.dataset!r} has {run.info.class_names}"
        )
    student = build_model(config, run.info)
    inherited = inherited_record(config)
    check_output_classes(student, run.info.num_classes)
    offset = folded_logit_offset(inherited)
    losses = [make_distillation_loss(spec, run.class_weights, offset) for spec in config.losses]
    distiller = Distiller(teacher, student, losses, student_loss_weight=config.student_loss_weight)
    optimizer = make_optimizer(config.optimizer, config.learning_rate, config.schedule, total_steps=run.total_steps)
    distiller.compile(
        optimizer,
        loss=make_loss(config.loss, run.info.num_classes, run.class_weights, offset),
        metrics=segmentation_metrics(run.info.num_classes),
    )
    record = {
        **inherited,
        "num_params": student.count_params(),
        "teacher": {"run": str(config.teacher_run), "which": config.teacher_which, "model": teacher.name,
                    "num_params": teacher.count_params()},
        "distillation_losses": [loss.get_config() | {"class": type(loss).__name__} for loss in losses],
        "student_loss_weight_used": distiller.student_loss_weight,
    }
    return fit_run(config, run, distiller, record, verbose=verbose)
