"""The prune stage: iterative filter pruning of a run, recorded as a run directory.

``run(PruneConfig(run_dir, out_dir, ...))`` prunes the run's best model round by round
(``tfseg.prune.prune_filters_iteratively``), scores each round at the run's evaluation size (mIoU on
a split, parameters, MACs, LiteRT latency) and writes ``out_dir`` as a run: ``run.json`` (the
source's lineage plus ``filter_pruned``, ``pruning`` and ``rounds``), ``best.keras`` (the final
model), ``rounds.json``, ``pruning.png`` and ``round_XX.keras``.
"""

from __future__ import annotations

import dataclasses
import time

from tfseg.checkpoint import save_model
from tfseg.evaluate import evaluate
from tfseg.models import profile
from tfseg.prune.iterative import prune_filters_iteratively
from tfseg.runs import Run, write_run
from tfseg.tflite import litert_latency, to_tflite_bytes
from tfseg.train import make_optimizer, segmentation_metrics


@dataclasses.dataclass
class PruneConfig:
    """What a pruning run needs.

    Attributes:
      run_dir: a training (or distillation) run directory.
      out_dir: where the pruned run goes.
      step, target, fine_tune_epochs, criterion, scope, bn_batches, prune_residual: see
        ``tfseg.prune.prune_filters_iteratively``.
      distill: fine-tune each round by pixel-wise distillation from the unpruned model.
      split: the split scored after each round (mIoU at the run's evaluation size).
      learning_rate: fine-tuning learning rate (Adam, constant).
      latency_threads: LiteRT threads for the per-round latency (0: skip latency).
    """

    run_dir: str
    out_dir: str
    step: float = 0.15
    target: float = 0.75
    fine_tune_epochs: int = 2
    distill: bool = False
    split: str = "val"
    criterion: str = "l1"
    scope: str = "layer"
    learning_rate: float = 1e-4
    latency_threads: int = 1
    bn_batches: int = 20
    prune_residual: bool = True


def round_scorer(source: Run, split: str, latency_threads: int):
    """``score(model) -> row`` for each round: mIoU on ``split`` at the run's evaluation size, GMACs
    and (``latency_threads`` > 0) the LiteRT latency."""
    score_split = source.split(split)
    size = source.eval_size

    def score(model):
        if tuple(model.input_shape[1:3]) != size and None not in model.input_shape[1:3]:
            model = source.rebuild(model, size)  # narrowed like the pruned model
        scores = evaluate(model, score_split, image_size=size, batch_size=source.batch_size, num_overlays=0,
                          verbose=0)
        row = {f"{split}_miou": round(float(scores["miou"]), 4),
               "gmacs": round(profile(model, (*size, 3), tflite=False)["macs"] / 1e9, 3)}
        if latency_threads:
            timing = litert_latency(to_tflite_bytes(model), num_threads=latency_threads, runs=10)
            row[f"latency_ms_{latency_threads}t"] = round(timing["median_ms"], 2)
        return row

    return score


def run(config: PruneConfig, verbose="auto") -> Run:
    """Prunes a run's best model to ``config.target`` and records every round (module docstring)."""
    source = Run.open(config.run_dir)
    model = source.model(size=source.crop_size)
    pruned_record = source.derive(config.out_dir, "prune", filter_pruned=True, complete=False)
    # rebuild_pruned for every resize from here on (the rounds' models are narrowed)
    pruned_view = Run(config.out_dir, pruned_record)

    def compile_model(trainable):
        trainable.compile(optimizer=make_optimizer("adam", config.learning_rate, "constant"), loss=source.loss(),
                          metrics=segmentation_metrics(source.num_classes))

    # Weighs classes like the plain fine-tuning loss and keeps a calibrated model's offset.
    distillation_losses = source.distillation_losses(["pixel_kd"]) if config.distill else None
    start = time.time()
    final, rounds = prune_filters_iteratively(
        model, source.training_data(), step=config.step, target=config.target,
        fine_tune_epochs=config.fine_tune_epochs, compile_model=compile_model,
        score=round_scorer(pruned_view, config.split, config.latency_threads),
        teacher=model if config.distill else None, distillation_losses=distillation_losses,
        criterion=config.criterion, scope=config.scope, out_dir=config.out_dir, bn_batches=config.bn_batches,
        prune_residual=config.prune_residual, fit_kwargs={"verbose": 2 if verbose == "auto" else verbose},
    )
    save_model(final, pruned_view.path / "best.keras")
    settings = {key: value for key, value in dataclasses.asdict(config).items() if key not in ("run_dir", "out_dir")}
    return write_run(config.out_dir, {
        **pruned_record, "pruned_from": str(config.run_dir),
        "pruning": {**settings, "seconds": round(time.time() - start, 1)},
        "rounds": [r.as_row() for r in rounds], "num_params": final.count_params(), "complete": True,
    })


__all__ = ["PruneConfig", "round_scorer", "run"]
