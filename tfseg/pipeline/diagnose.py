"""The int8 diagnosis stage: which layers of a run's post-training int8 model lose accuracy, and what
leaving the worst of them in float buys back and costs.

``run(DiagnoseConfig(run_dir))`` calibrates the run's model as its int8 export does (training
images, the same seed), measures the int8 error of every operator on images of ``split``
(``tfseg.quantize.diagnose``), then scores float32, full int8, and int8 with float fallback (the k
worst layers for each k of ``fallback_worst``, and the layers named in ``fallback_layers``) in
LiteRT on each of ``score_splits`` in one pass (mIoU at full label resolution,
``tfseg.pipeline.benchmark.score``), and times them in turns at ``threads`` thread(s). It writes
``diagnose.md``, ``diagnose.json`` and ``layers.png`` (per-layer error, worst first) to ``out_dir``.
Choose on val; ship the choice with ``tfseg export RUN --float-fallback NAME,...``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tfseg.checkpoint import atomic_write, write_json
from tfseg.errors import ConfigError
from tfseg.options import DIAGNOSIS_METRICS
from tfseg.pipeline.benchmark import score
from tfseg.predictors import TFLitePredictor
from tfseg.quantize.diagnose import ROUNDING_RMSE_SCALE, Diagnosis, diagnose
from tfseg.quantize.ptq import DEFAULT_CALIBRATION_IMAGES, representative_images
from tfseg.report import plot_ranking
from tfseg.runs import Run
from tfseg.tflite import check_layer_names, litert_latencies, to_tflite_bytes

DEFAULT_IMAGES = 32
PLOTTED_LAYERS = 30
METRIC_LABELS = {"rmse_scale": "RMSE of int8 against float / output quantization step",
                 "relative_rmse": "RMSE of int8 against float / std of the float output"}


@dataclasses.dataclass
class DiagnoseConfig:
    """``run_dir``: a float (or pruned) run; ``out_dir``: default ``<run_dir>/diagnose``; ``split``
    and ``images``: where the per-layer error is measured (val: choose there, report on test);
    ``score_splits``: where every choice is scored (default ``split``); ``fallback_worst``: leave
    the k worst layers in float, for each k; ``fallback_layers``: one more choice, these layers in
    float; ``metric``: the ranking (``tfseg.options.DIAGNOSIS_METRICS``); ``calibration_split``,
    ``calibration_images``, ``seed``: as the int8 export calibrates; ``max_images``: score on at
    most this many images per split; ``threads``, ``runs``: LiteRT latency."""

    run_dir: str
    out_dir: str | None = None
    split: str = "val"
    images: int = DEFAULT_IMAGES
    score_splits: tuple | None = None
    fallback_worst: tuple = (1, 3, 5)
    fallback_layers: tuple = ()
    metric: str = DIAGNOSIS_METRICS[0]
    calibration_split: str = "train"
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES
    max_images: int | None = None
    threads: int = 1
    runs: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.metric not in DIAGNOSIS_METRICS:
            raise ConfigError(f"unknown diagnosis metric {self.metric!r}; choose one of {', '.join(DIAGNOSIS_METRICS)}")
        bad = [k for k in self.fallback_worst if not isinstance(k, int) or k < 1]
        if bad:
            raise ConfigError(f"fallback_worst takes layer counts of at least 1, got {bad}")
        for name, value in (("images", self.images), ("threads", self.threads), ("runs", self.runs),
                            ("calibration_images", self.calibration_images)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        self.score_splits = tuple(self.score_splits or (self.split,))


def float_run(run_dir) -> Run:
    """The run, checked to be one whose int8 comes from post-training calibration.

    Raises:
      ConfigError: a quantization-aware run (its int8 ranges come from training: nothing to
        calibrate, no operator to leave in float).
    """
    source = Run.open(run_dir)
    if source.is_quantization_aware:
        origin = source.record.get("source")
        raise ConfigError(
            f"{run_dir} is quantization-aware: its int8 ranges come from training, so there is no post-training "
            "int8 to diagnose and no layer to leave in float"
            + (f"; diagnose the float run it was fine-tuned from ({origin})" if origin else "")
        )
    return source


def layer_diagnosis(model, size, calibration, split, *, images: int = DEFAULT_IMAGES,
                    metric: str = DIAGNOSIS_METRICS[0], seed: int = 0) -> Diagnosis:
    """``tfseg.quantize.diagnose`` of a model calibrated on ``calibration`` (the export's images), its
    error measured on ``images`` random images of the split ``split`` (seeded) at ``size``."""
    probe = representative_images(split, size, images, seed=seed)
    return diagnose(model, calibration, probe, metric=metric)


def _choices(config: DiagnoseConfig, diagnosis: Diagnosis) -> list[tuple[str, list]]:
    """(name, layers left in float) for every int8 model to score, checked before anything is scored."""
    choices = [("int8", [])]
    for k in sorted(set(config.fallback_worst)):
        choices.append((f"int8, {k} worst in float", diagnosis.worst_layers(k)))
    if config.fallback_layers:
        layers = list(dict.fromkeys(config.fallback_layers))
        diagnosis.float_tensors(layers)  # an unknown name fails here, before the long part
        choices.append(("int8, chosen layers in float", layers))
    return choices


def run(config: DiagnoseConfig, verbose="auto") -> dict:
    """Diagnoses a run's int8 model and scores the float fallbacks; see the module docstring.

    Returns:
      ``{"run", "model", "diagnosis", "rows": [{"model", "float_layers", "file_kib", "miou":
      {split: value}, "ms"}, ...], "table", "out_dir", ...}``.

    Raises:
      ConfigError: a quantization-aware run, an unknown layer name, more worst layers than the model has.
    """
    source = float_run(config.run_dir)
    out = Path(config.out_dir or source.path / "diagnose")
    size = source.eval_size
    model = source.model(size=size)
    try:  # before calibrating: a typo should not cost minutes
        check_layer_names(model, config.fallback_layers)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    calibration = representative_images(source.split(config.calibration_split), size, config.calibration_images,
                                        seed=config.seed)
    diagnosis = layer_diagnosis(model, size, calibration, source.split(config.split), images=config.images,
                                metric=config.metric, seed=config.seed)
    choices = _choices(config, diagnosis)
    files = {"float32": to_tflite_bytes(model, None, input_shape=(*size, 3))}
    files.update({name: diagnosis.quantize(layers, io_dtype="uint8") for name, layers in choices})
    float_layers = {"float32": None, **dict(choices)}
    predictors = {name: TFLitePredictor(data, num_threads=config.threads) for name, data in files.items()}
    mious, counts = {}, {}
    for split in config.score_splits:
        counts[split], scores = score(predictors, source.split(split), config.max_images, verbose)
        for name, value in scores.items():
            mious.setdefault(name, {})[split] = value
    # Timed in turns: on a shared machine the load falls on every model alike.
    latency = litert_latencies(files, num_threads=config.threads, runs=config.runs)
    rows = [{"model": name, "float_layers": float_layers[name], "file_kib": len(data) / 1024, "miou": mious[name],
             "ms": latency[name]["median_ms"], "p90_ms": latency[name]["p90_ms"]} for name, data in files.items()]
    result = {"run": str(source.path), "model": source.model_name, "input_size": list(size),
              "split": config.split, "images": diagnosis.images, "metric": config.metric,
              "calibration": {"split": config.calibration_split, "images": len(calibration), "seed": config.seed},
              "score_splits": list(config.score_splits), "scored_images": counts, "threads": config.threads,
              "worst_layers": diagnosis.layer_names, "rows": rows, "diagnosis": diagnosis.as_dict()}
    table = format_table(result)
    report = "\n\n".join([
        f"# int8 diagnosis: {source.model_name} ({source.path})",
        f"Per-layer error of the post-training int8 model against float on {diagnosis.images} {config.split} images "
        f"(each operator on the same inputs as its float twin; ranked by {config.metric}); calibration "
        f"{len(calibration)} {config.calibration_split} images, seed {config.seed}.",
        "## What float fallback buys back and costs", table,
        f"Ship a choice: `tfseg export {source.path} --float-fallback NAME,NAME,... --out MODEL.tflite` "
        "(or `--float-fallback-worst K`).",
        "## The worst layers", diagnosis.markdown(top=20), "![per-layer error, worst first](layers.png)",
    ])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "diagnose.md", lambda tmp: Path(tmp).write_text(report + "\n"))
    write_json(out / "diagnose.json", result)
    shown = diagnosis.rows[:PLOTTED_LAYERS]
    plot_ranking([f"{row.layer or row.tensor} ({row.op})" for row in shown], [getattr(row, config.metric) for row in shown],
                 out / "layers.png", xlabel=METRIC_LABELS[config.metric],
                 title=f"{source.model_name}: int8 error per layer, worst first\n"
                       f"(each operator against its float twin, {diagnosis.images} {config.split} images)",
                 reference=ROUNDING_RMSE_SCALE if config.metric == "rmse_scale" else None,
                 reference_label="rounding alone (0.29)")
    return {**result, "table": table, "out_dir": str(out)}


def format_table(result: dict) -> str:
    """The choices as a Markdown table: size, mIoU on each scored split (with the change from full
    int8), LiteRT latency."""
    splits = result["score_splits"]
    base = next(row for row in result["rows"] if row["model"] == "int8")
    header = ["model", "layers in float", "size (KiB)",
              *(f"mIoU {split} (%) [{result['scored_images'][split]} images]" for split in splits),
              *(f"vs int8, {split}" for split in splits), f"ms, LiteRT {result['threads']} thread(s), median",
             "p90"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    for row in result["rows"]:
        layers = "all" if row["float_layers"] is None else (", ".join(row["float_layers"]) or "-")
        cells = [row["model"], layers, f"{row['file_kib']:.0f}",
                 *(f"{100 * row['miou'][split]:.2f}" for split in splits),
                 *(f"{100 * (row['miou'][split] - base['miou'][split]):+.2f}" for split in splits),
                 f"{row['ms']:.2f}", f"{row['p90_ms']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["DEFAULT_IMAGES", "DiagnoseConfig", "float_run", "format_table", "layer_diagnosis", "run"]
