"""Latency of a tfseg model on the device: median, p90 and FPS after a warm-up.

Two figures per thread count:

- ``invoke``: the interpreter's ``invoke()`` alone, the model's own latency (what a benchmark
  table compares across models);
- ``end_to_end``: ``Segmenter.predict`` on an image of the model's input size (preprocessing,
  quantization, invoke, argmax and resizing to the image: for low-resolution exports this
  includes the runner's upsampling), what an application sees per frame.

The first invocations are slower (XNNPACK packs weights, caches warm up), hence the untimed
warm-up. On a shared or thermally throttled device quote the median; p90 shows the noise.
"""

from __future__ import annotations

import platform
import time

import numpy as np

from tfseg_lite.segmenter import Segmenter


def _stats(times_ms) -> dict:
    times = np.asarray(times_ms, np.float64)
    median = float(np.median(times))
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": float(times.min()),
        "mean_ms": float(times.mean()),
        "fps": 1000.0 / median if median > 0 else float("inf"),
    }


def benchmark(segmenter: Segmenter, runs: int = 50, warmup: int = 5, seed: int = 0) -> dict:
    """Times a Segmenter on a random image of its input size.

    Args:
      segmenter: the model, with its thread count already set.
      runs: timed repetitions (each of ``invoke`` and of ``predict``).
      warmup: untimed invocations first.
      seed: for the random image.

    Returns:
      ``segmenter.describe()`` plus ``runs``, ``warmup``, ``machine`` and two dicts ``invoke`` and
      ``end_to_end`` with ``median_ms``, ``p90_ms``, ``min_ms``, ``mean_ms`` and ``fps``.

    Raises:
      ValueError: ``runs`` < 1 or ``warmup`` < 0.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    height, width = segmenter.input_size
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tensor = segmenter.preprocess(image)
    for _ in range(warmup):
        segmenter.run(tensor)
    invoke = []
    for _ in range(runs):
        segmenter.run(tensor)
        invoke.append(segmenter.last_invoke_ms)
    end_to_end = []
    for _ in range(runs):
        start = time.perf_counter()
        segmenter.predict(image)
        end_to_end.append((time.perf_counter() - start) * 1000.0)
    result = segmenter.describe()
    result.update(
        runs=runs,
        warmup=warmup,
        machine=f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        invoke=_stats(invoke),
        end_to_end=_stats(end_to_end),
    )
    return result


def format_report(result: dict) -> str:
    """Human-readable lines for one ``benchmark`` result."""
    inv, e2e = result["invoke"], result["end_to_end"]
    return "\n".join(
        [
            f"model      {result['model_file']} ({result['model']}, {result['classes']} classes, "
            f"{result['file_kb']} KB, description {result['metadata']})",
            f"runtime    {result['runtime']} on {result['machine']}, threads {result['threads']}",
            f"input      {result['input']} -> output {result['output']}, quantization {result['quantization']}",
            f"runs       {result['runs']} timed after {result['warmup']} warm-up",
            f"invoke     median {inv['median_ms']:.2f} ms  p90 {inv['p90_ms']:.2f} ms  "
            f"min {inv['min_ms']:.2f} ms  -> {inv['fps']:.1f} FPS",
            f"end-to-end median {e2e['median_ms']:.2f} ms  p90 {e2e['p90_ms']:.2f} ms  "
            f"min {e2e['min_ms']:.2f} ms  -> {e2e['fps']:.1f} FPS (preprocess + invoke + argmax and resize)",
        ]
    )


TABLE_HEADER = (
    "| model | quantization | runtime | threads | input | invoke median ms | invoke p90 ms | FPS | end-to-end median ms |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def table_row(result: dict) -> str:
    """One Markdown row for a latency table (``TABLE_HEADER`` gives the columns)."""
    inv = result["invoke"]
    height_width = result["input"].split("x")[:2]
    return (
        f"| {result['model']} | {result['quantization']} | {result['runtime']} | {result['threads']} | "
        f"{height_width[0]}x{height_width[1]} | {inv['median_ms']:.2f} | {inv['p90_ms']:.2f} | {inv['fps']:.1f} | "
        f"{result['end_to_end']['median_ms']:.2f} |"
    )


__all__ = ["TABLE_HEADER", "benchmark", "format_report", "table_row"]
