"""The distill stage: a student trained from a teacher run, recorded like a training run.

The run directory has the train stage's layout (``best.keras`` is the student), so every later
stage takes it as it takes any run; ``run.json`` also records the teacher and the losses.
"""

from __future__ import annotations

import dataclasses

from tfseg import distribute
from tfseg.distill.distiller import Distiller
from tfseg.errors import ConfigError
from tfseg.pipeline.train import TrainConfig, fit_and_score, start, total_steps
from tfseg.runs import Run
from tfseg.train import make_optimizer, segmentation_metrics


@dataclasses.dataclass
class DistillConfig(TrainConfig):
    """A TrainConfig for the student (``model`` etc.) plus the teacher and the losses.

    ``losses``: names or dicts for ``tfseg.distill.losses.make_distillation_loss``; ``[]`` trains
    the student alone through the same loop (the baseline of an ablation). ``student_loss_weight``:
    see Distiller.
    """

    out_dir: str = "runs/distill"
    model: str = "fastseg_tiny"
    teacher_run: str = "runs/camvid/teacher"
    teacher_which: str = "best"
    losses: list = dataclasses.field(default_factory=lambda: ["pixel_kd"])
    student_loss_weight: float | None = None


def run(config: DistillConfig, verbose="auto") -> Run:
    """Distils ``config.teacher_run``'s model into a new ``config.model`` student.

    Raises:
      ConfigError: the teacher was trained on other classes, a bad loss specification.
    """
    strategy = distribute.strategy(config.distribute)  # first: a multi-worker one must precede any TF op
    teacher_run = Run.open(config.teacher_run)
    with strategy.scope():
        student_run, student = start(config, "distill")
        if teacher_run.info.class_names != student_run.info.class_names:
            raise ConfigError(
                f"the teacher in {config.teacher_run} was trained on classes {teacher_run.info.class_names}, "
                f"but {config.dataset!r} has {student_run.info.class_names}"
            )
        teacher = teacher_run.model(config.teacher_which, size=config.crop_size)
        distribute.synchronize_batch_norm(student, strategy)
        # The run's class weights, and the offset of a student started from a calibrated run.
        losses = student_run.distillation_losses(config.losses)
        distiller = Distiller(teacher, student, losses, student_loss_weight=config.student_loss_weight)
        optimizer = make_optimizer(config.optimizer, config.learning_rate, config.schedule,
                                   total_steps=total_steps(student_run, config.epochs))
        distiller.compile(optimizer, loss=student_run.loss(), metrics=segmentation_metrics(student_run.num_classes))
    student_run.record.update({
        "num_params": student.count_params(),
        "teacher": {"run": str(config.teacher_run), "which": config.teacher_which, "model": teacher.name,
                    "num_params": teacher.count_params()},
        "distillation_losses": [loss.get_config() | {"class": type(loss).__name__} for loss in losses],
        "student_loss_weight_used": distiller.student_loss_weight,
    })
    return fit_and_score(student_run, distiller, config.epochs, verbose=verbose)


__all__ = ["DistillConfig", "run"]
