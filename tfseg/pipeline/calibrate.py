"""The calibrate stage: fits a class-weighted run's logit adjustment on val and folds it into its model.

The adjustment (``tfseg.calibrate``) becomes part of the saved model's classifier bias; the run
records it as ``logit_adjustment``, and every run derived from this one inherits it with the
model (``Run.logit_offset``), so that their fine-tuning losses keep it.
"""

from __future__ import annotations

import dataclasses
import shutil

from tfseg.calibrate import DEFAULT_STRENGTHS, fit_logit_adjustment, fold_class_bias
from tfseg.checkpoint import atomic_write, save_model
from tfseg.errors import ConfigError
from tfseg.evaluate import evaluate, write_report
from tfseg.runs import Run

UNCALIBRATED = "best_uncalibrated"


@dataclasses.dataclass
class CalibrateConfig:
    """``run_dir``: a class-weighted run; ``split``: chooses the strength (val, never test);
    ``strengths``: the strengths ``s`` of ``-s * log(class weight)`` tried."""

    run_dir: str
    split: str = "val"
    strengths: tuple = DEFAULT_STRENGTHS


def run(config: CalibrateConfig, verbose="auto") -> Run:
    """Fits the logit adjustment of a class-weighted run on ``config.split`` and folds it into
    ``best.keras``.

    The original is kept as ``best_uncalibrated.keras`` (and calibration always starts from it, so
    running this twice gives the same model). ``run.json`` gets a ``logit_adjustment`` record and
    ``eval/<split>/`` the adjusted model's report.

    Raises:
      ConfigError: the run was trained without class weights (there is no shift to take back), or
        it inherits an adjustment.
    """
    source = Run.open(config.run_dir)
    out = source.path
    strengths = sorted({0.0, *(float(s) for s in config.strengths)})  # 0 = as trained, the reference
    if not source.class_weights:
        raise ConfigError(f"{out} was trained without class weights: its logits carry no prior shift to correct")
    if source.is_quantization_aware:
        raise ConfigError(f"{out} is quantization-aware: calibrate its float run before quantizing")
    if not (out / f"{UNCALIBRATED}.keras").exists():
        if source.logit_offset is not None:
            raise ConfigError(f"{out} inherits the logit adjustment of the run it was made from (its classifier "
                              "already carries it, and there is no unadjusted model to start again from)")
        atomic_write(out / f"{UNCALIBRATED}.keras", lambda tmp: shutil.copyfile(out / "best.keras", tmp))
    size = source.eval_size
    at_eval_size = source.model(UNCALIBRATED, size=size)
    data_split = source.split(config.split)
    strength, bias, by_strength = fit_logit_adjustment(at_eval_size, data_split, source.class_weights,
                                                       image_size=size, strengths=strengths, verbose=verbose)
    save_model(fold_class_bias(source.model(UNCALIBRATED), bias), out / "best.keras")
    scores = evaluate(fold_class_bias(at_eval_size, bias), data_split, image_size=size, verbose=0)
    write_report(out / "eval" / config.split, scores, source.info)
    summary = {"split": config.split, "strength": strength, "bias": bias,
               "miou_by_strength": {str(s): round(m, 4) for s, m in by_strength.items()},
               "miou_before": by_strength[0.0], "miou_after": float(scores["miou"])}
    return source.update(logit_adjustment=summary)


def calibrate_run(run_dir, split: str = "val", strengths=DEFAULT_STRENGTHS, verbose="auto") -> dict:
    """``run`` for a run directory; returns the ``logit_adjustment`` summary it recorded."""
    return run(CalibrateConfig(str(run_dir), split, tuple(strengths)), verbose=verbose).record["logit_adjustment"]


__all__ = ["CalibrateConfig", "UNCALIBRATED", "calibrate_run", "run"]
