"""The calibrate stage: fits a class-weighted run's logit adjustment on val and folds it into its model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tfseg import data as seg_data
from tfseg.calibrate import DEFAULT_STRENGTHS, fit_logit_adjustment, fold_class_bias, folded_logit_offset
from tfseg.checkpoint import atomic_write, save_model, write_json
from tfseg.errors import ConfigError
from tfseg.evaluate import evaluate, write_report
from tfseg.run import RUN_FILE, load_run, run_record

UNCALIBRATED = "best_uncalibrated.keras"


def calibrate_run(run_dir, split: str = "val", strengths=DEFAULT_STRENGTHS, verbose="auto") -> dict:
    """Fits the logit adjustment of a class-weighted run on ``split`` and folds it into ``best.keras``.

    The original is kept as ``best_uncalibrated.keras`` (and calibration always starts from it, so
    running this twice gives the same model). ``run.json`` gets a ``logit_adjustment`` record and
    ``eval/<split>/`` the adjusted model's report.

    Raises:
      ConfigError: the run was trained without class weights (there is no shift to take back).
    """
    out = Path(run_dir)
    strengths = sorted({0.0, *(float(s) for s in strengths)})  # 0 = as trained, the reference
    record = run_record(out)
    weights = record.get("class_weight_values")
    if not weights:
        raise ConfigError(f"{out} was trained without class weights: its logits carry no prior shift to correct")
    if not (out / UNCALIBRATED).exists():
        if folded_logit_offset(record) is not None:
            raise ConfigError(f"{out} inherits the logit adjustment of the run it was made from (its classifier "
                              "already carries it, and there is no unadjusted model to start again from)")
        atomic_write(out / UNCALIBRATED, lambda tmp: shutil.copyfile(out / "best.keras", tmp))
    which = Path(UNCALIBRATED).stem
    size = tuple(record.get("eval_size") or record["crop_size"])
    at_eval_size, info = load_run(out, which=which, input_size=size)
    data_split = seg_data.load(record["dataset"], split, **record.get("data_options", {}))
    strength, bias, by_strength = fit_logit_adjustment(at_eval_size, data_split, weights, image_size=size,
                                                       strengths=strengths, verbose=verbose)
    original, _ = load_run(out, which=which)
    save_model(fold_class_bias(original, bias), out / "best.keras")
    scores = evaluate(fold_class_bias(at_eval_size, bias), data_split, image_size=size, verbose=0)
    write_report(out / "eval" / split, scores, info)
    summary = {"split": split, "strength": strength, "bias": bias,
               "miou_by_strength": {str(s): round(m, 4) for s, m in by_strength.items()},
               "miou_before": by_strength[0.0], "miou_after": float(scores["miou"])}
    saved = json.loads((out / RUN_FILE).read_text())
    saved["logit_adjustment"] = summary
    write_json(out / RUN_FILE, saved)
    return summary
