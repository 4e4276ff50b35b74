"""One model in every format it can be deployed in, side by side: size, accuracy, speed.

``run(BenchmarkConfig(run_dir))`` exports the run's model as float32, float16, dynamic-range and
post-training int8 TFLite (a quantization-aware run: its own int8 only), each with every asked-for
output (``tfseg.output_tail``: full-resolution logits, low-resolution logits, a class map), scores the Keras model
and every file on a split in one pass (each in its own runtime: Keras, LiteRT; mIoU at full label
resolution), times each at the given thread counts (the Keras model at batch 1 with TensorFlow's
own threads, for reference), reads how LiteRT delegates each file to XNNPACK (partitions, operators
left outside: ``tfseg.xnnpack``), and writes ``benchmark.md``, ``benchmark.json`` and ``benchmark.png``
(mIoU against latency) with the files in the benchmark folder.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from tfseg import export
from tfseg._keras import tf
from tfseg.checkpoint import write_json
from tfseg.errors import ConfigError
from tfseg.evaluate import ConfusionMatrix, stream
from tfseg.options import BENCHMARK_FORMATS, EXPORT_OUTPUTS
from tfseg.predictors import KerasPredictor, TFLitePredictor
from tfseg.quantize.ptq import representative_images
from tfseg.report import plot_accuracy_latency
from tfseg.runs import Run
from tfseg.tflite import litert_latencies, random_images
from tfseg.xnnpack import delegation, outside_names, summary

# A format's name in the table -> the export's quantization.
QUANTIZATION_OF = dict(zip(BENCHMARK_FORMATS, ("none", "float16", "dynamic", "int8")))


@dataclasses.dataclass
class BenchmarkConfig:
    """``run_dir``: the run; ``out_dir``: default ``<run_dir>/benchmark``; ``split``: scored on;
    ``formats``: among float32, float16, dynamic, int8; ``threads``: LiteRT thread counts timed;
    ``max_images``: score on at most this many images; ``calibration_images``: int8 calibration
    (training images); ``runs``: timed invocations per format and thread count; ``outputs``: what
    each file outputs, among logits, low_res_logits, class_map (``tfseg export --output``)."""

    run_dir: str
    out_dir: str | None = None
    split: str = "test"
    formats: tuple = BENCHMARK_FORMATS
    threads: tuple = (1, 2)
    max_images: int | None = None
    calibration_images: int = 100
    runs: int = 20
    outputs: tuple = ("logits",)

    def __post_init__(self):
        unknown = [name for name in self.formats if name not in QUANTIZATION_OF]
        if unknown:
            raise ConfigError(f"unknown format(s) {', '.join(map(repr, unknown))}; choose from "
                              f"{', '.join(QUANTIZATION_OF)}")
        unknown = [name for name in self.outputs if name not in EXPORT_OUTPUTS]
        if unknown or not self.outputs:
            raise ConfigError(f"unknown output(s) {', '.join(map(repr, unknown)) or '(none given)'}; choose from "
                              f"{', '.join(EXPORT_OUTPUTS)}")
        if not self.threads or min(self.threads) < 1:
            raise ConfigError(f"threads must be counts of at least 1, got {list(self.threads)}")


def keras_latency(model, size, runs: int = 20, warmup: int = 3) -> float:
    """Median milliseconds of one batch-1 forward pass of a Keras model (a traced graph, as served)
    on random images."""
    images = tf.constant(random_images((*size, 3), count=1))
    forward = tf.function(lambda x: model(x, training=False))
    timings = []
    for step in range(warmup + runs):
        start = time.perf_counter()
        forward(images).numpy()
        if step >= warmup:
            timings.append(1000 * (time.perf_counter() - start))
    return float(np.median(timings))


def score(predictors: dict, split, max_images: int | None = None, verbose="auto") -> tuple[int, dict]:
    """The mIoU of every predictor (name -> ``tfseg.predictors.Predictor``) on a split, in one pass
    at full label resolution; returns ``(images scored, {name: miou})``."""
    info = split.info
    confusions = {name: ConfusionMatrix(p, info.num_classes, info.ignore_label) for name, p in predictors.items()}
    images = stream(list(predictors.values()), split, list(confusions.values()), max_images=max_images, verbose=verbose)
    return images, {name: float(confusion.scores()["miou"]) for name, confusion in confusions.items()}


def _exports(source: Run, model, config: BenchmarkConfig, folder: Path) -> dict:
    """row name ('int8', 'int8 low_res_logits', ...) -> exported .tflite path (written once; reused by a rerun)."""
    formats = ["int8"] if source.is_quantization_aware else list(config.formats)
    if source.is_quantization_aware and "int8" not in config.formats:
        raise ConfigError(f"{source.path} is quantization-aware: it exports as int8 only")
    calibration = None
    if "int8" in formats and not source.is_quantization_aware:
        calibration = representative_images(source.train_split,
                                            source.eval_size, config.calibration_images)
    paths = {}
    for name in formats:
        for output in config.outputs:
            suffix = "" if output == "logits" else f"_{output}"
            path = folder / f"{source.model_name}_{name}{suffix}.tflite"
            if not path.exists():
                export.to_tflite(model, path, QUANTIZATION_OF[name], info=source.info, input_size=source.eval_size,
                                 model_name=source.model_name, output=output,
                                 representative_data=calibration if name == "int8" else None)
            row = "int8 (QAT)" if source.is_quantization_aware else name
            paths[row + ("" if output == "logits" else f" {output}")] = path
    return paths


def run(config: BenchmarkConfig, verbose="auto") -> dict:
    """Benchmarks a run's model in every format; see the module docstring.

    Returns:
      ``{"split", "images", "rows": [{"format", "file_kib", "miou", "ms_<n>t", ...}, ...]}``; TFLite rows
      also ``xnnpack_partitions``, ``xnnpack_outside`` (the operators outside XNNPACK, I/O
      quantization apart) and ``xnnpack`` (both, short: ``tfseg.xnnpack.summary``).
    """
    source = Run.open(config.run_dir)
    out = Path(config.out_dir or source.path / "benchmark")
    size = source.eval_size
    model = source.model(size=size)
    paths = _exports(source, model, config, out)
    keras_predictor = KerasPredictor(model, size)
    predictors = {"keras": keras_predictor, **{name: TFLitePredictor(path, num_threads=max(config.threads))
                                                for name, path in paths.items()}}
    images, mious = score(predictors, source.split(config.split), config.max_images, verbose)
    rows = [{"format": "Keras (tf_keras)", "file_kib": None, "miou": mious["keras"],
             "ms_tf": keras_latency(model, size, config.runs)}]
    # Every file timed in the same rounds, so a load that comes and goes falls on all of them alike.
    timings = {threads: litert_latencies({name: path.read_bytes() for name, path in paths.items()}, threads,
                                         config.runs) for threads in config.threads}
    for name, path in paths.items():
        report = delegation(path.read_bytes())  # layer names from the tensor names: cut models too
        row = {"format": f"TFLite {name}", "file": str(path), "file_kib": path.stat().st_size / 1024,
               "miou": mious[name], "xnnpack_partitions": report["partitions"], "xnnpack": summary(report),
               "xnnpack_outside": outside_names(report)}
        for threads in config.threads:
            row[f"ms_{threads}t"] = timings[threads][name]["median_ms"]
        rows.append(row)
    result = {"run": str(source.path), "model": source.model_name, "split": config.split, "images": images,
              "input_size": list(size), "threads": list(config.threads), "rows": rows}
    table = format_table(result)
    (out / "benchmark.md").write_text(table + "\n")
    write_json(out / "benchmark.json", result)
    first = f"ms_{config.threads[0]}t"
    plot_accuracy_latency([{**row, "latency_ms": row.get(first), "miou_litert": row["miou"]} for row in rows[1:]],
                          out / "benchmark.png", label="format",
                          title=f"{source.model_name}: mIoU ({config.split}) vs LiteRT latency, {config.threads[0]} thread(s)")
    return {**result, "table": table, "out_dir": str(out)}


def format_table(result: dict) -> str:
    """The benchmark as a Markdown table."""
    threads = result["threads"]
    header = ["format", "size (KiB)", f"mIoU {result['split']} (%)", "ms, TF (batch 1)",
              *(f"ms, LiteRT {n} thread{'s' if n > 1 else ''}" for n in threads), "XNNPACK partitions"]
    lines = [f"{result['model']} at {result['input_size'][0]}x{result['input_size'][1]}, "
             f"{result['images']} {result['split']} images", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for row in result["rows"]:
        cells = [row["format"], _cell(row.get("file_kib"), "{:.0f}"), _cell(100 * row["miou"], "{:.2f}"),
                 _cell(row.get("ms_tf"), "{:.2f}"), *(_cell(row.get(f"ms_{n}t"), "{:.2f}") for n in threads),
                 row.get("xnnpack", "-")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


__all__ = ["BenchmarkConfig", "format_table", "keras_latency", "run", "score"]
