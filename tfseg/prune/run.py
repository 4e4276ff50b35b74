"""Iterative filter pruning of a training run, recorded as a run directory.

``prune_run(run_dir, out_dir, ...)`` reads the run's model, data and training settings, prunes its
best model round by round (``prune_filters_iteratively``), scores each round at the run's
evaluation size (mIoU on a split, parameters, MACs, LiteRT latency), and writes ``out_dir`` like a
run: ``run.json`` (the source configuration plus ``filter_pruned``), ``best.keras`` (the final
model), ``rounds.json``, ``pruning.png`` and ``round_XX.keras``. ``tfseg.run.load_run`` and
``tfseg evaluate`` take the result like any run.
"""

from __future__ import annotations

import time
from pathlib import Path

from tfseg import data as seg_data
from tfseg.calibrate import folded_logit_offset
from tfseg.checkpoint import save_model, write_json
from tfseg.evaluate import evaluate
from tfseg.prune.filters import rebuild_pruned
from tfseg.prune.iterative import prune_filters_iteratively
from tfseg.run import RUN_FILE, fine_tuning_loss, load_run, run_record
from tfseg.train import make_optimizer, segmentation_metrics


def prune_run(
    run_dir,
    out_dir,
    *,
    step: float = 0.15,
    target: float = 0.75,
    fine_tune_epochs: int = 2,
    distill: bool = False,
    split: str = "val",
    criterion: str = "l1",
    scope: str = "layer",
    learning_rate: float = 1e-4,
    latency_threads: int = 1,
    bn_batches: int = 20,
    prune_residual: bool = True,
    verbose="auto",
):
    """Prunes a run's best model to ``target`` and records every round (see the module docstring).

    Args:
      run_dir: a training (or distillation) run directory.
      out_dir: where the pruned run goes.
      step, target, fine_tune_epochs, criterion, scope, bn_batches, prune_residual: see
        ``prune_filters_iteratively``.
      distill: fine-tune each round by pixel-wise distillation from the unpruned model.
      split: the split scored after each round (mIoU at the run's evaluation size).
      learning_rate: fine-tuning learning rate (Adam, constant).
      latency_threads: LiteRT threads for the per-round latency (0: skip latency).

    Returns:
      (final pruned model, list of round rows).
    """
    from tfseg.models import profile
    from tfseg.tflite import litert_latency, to_tflite_bytes

    record = run_record(run_dir)
    crop = tuple(record["crop_size"])
    eval_size = tuple(record.get("eval_size") or crop)
    model, info = load_run(run_dir, input_size=crop)
    name, options = record["model"], record["model_options"]
    train_split = seg_data.load(record["dataset"], record["train_split"], **record["data_options"])
    score_split = seg_data.load(record["dataset"], split, **record["data_options"])
    augment = seg_data.Augment(**record["augment"]) if record.get("augment") is not None else None
    train_data = seg_data.train_pipeline(train_split, crop, record["batch_size"], augment=augment, seed=record["seed"])

    def at_eval_size(m):
        if tuple(m.input_shape[1:3]) == eval_size or None in m.input_shape[1:3]:
            return m
        return rebuild_pruned(name, m, (*eval_size, 3), **options)

    def score(m):
        sized = at_eval_size(m)
        scores = evaluate(sized, score_split, image_size=eval_size, batch_size=record["batch_size"], num_overlays=0, verbose=0)
        row = {f"{split}_miou": round(float(scores["miou"]), 4),
               "gmacs": round(profile(sized, (*eval_size, 3), tflite=False)["macs"] / 1e9, 3)}
        if latency_threads:
            timing = litert_latency(to_tflite_bytes(sized), num_threads=latency_threads, runs=10)
            row[f"latency_ms_{latency_threads}t"] = round(timing["median_ms"], 2)
        return row

    def compile_model(trainable):
        loss = fine_tuning_loss(record, info.num_classes)
        optimizer = make_optimizer("adam", learning_rate, "constant")
        trainable.compile(optimizer=optimizer, loss=loss, metrics=segmentation_metrics(info.num_classes))

    distillation_losses = None
    if distill:
        from tfseg.distill.losses import make_distillation_loss  # lazy: pruning works without distillation

        # Weighs classes like the plain fine-tuning loss and keeps a calibrated model's offset.
        distillation_losses = [make_distillation_loss("pixel_kd", record.get("class_weight_values"),
                                                      folded_logit_offset(record))]
    start = time.time()
    final, rounds = prune_filters_iteratively(
        model, train_data, step=step, target=target, fine_tune_epochs=fine_tune_epochs,
        compile_model=compile_model, score=score, teacher=model if distill else None,
        distillation_losses=distillation_losses,
        criterion=criterion, scope=scope, out_dir=out_dir, bn_batches=bn_batches,
        prune_residual=prune_residual, fit_kwargs={"verbose": 2 if verbose == "auto" else verbose},
    )
    out = Path(out_dir)
    save_model(final, out / "best.keras")
    rows = [r.as_row() for r in rounds]
    write_json(out / RUN_FILE, {
        **record, "filter_pruned": True, "pruned_from": str(run_dir),
        "pruning": {"step": step, "target": target, "fine_tune_epochs": fine_tune_epochs, "distill": distill,
                    "criterion": criterion, "scope": scope, "learning_rate": learning_rate, "bn_batches": bn_batches,
                    "prune_residual": prune_residual,
                    "seconds": round(time.time() - start, 1)},
        "rounds": rows, "num_params": final.count_params(),
    })
    return final, rows
