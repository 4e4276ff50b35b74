"""Latency of a tfseg model on the device: median, p90 and FPS after a warm-up.

Per thread count:

- ``invoke``: the interpreter's ``invoke()`` alone, the model's own latency (what a benchmark
  table compares across models);
- ``end_to_end``: ``Segmenter.predict`` on a camera frame, an (H, W, 3) uint8 RGB array (of the
  model's input size unless ``frame_size`` says otherwise), what an application sees per frame;
  split into ``preprocess`` (resize if the frame's size differs, pixel mapping, ``set_tensor``),
  the invoke and ``postprocess`` (argmax, the runner's upsampling of low-resolution exports,
  resize to the frame). Image decoding is not part of it: a camera gives arrays.

The two are timed in alternation, so that both see the same machine load, and
``end_to_end_ratio`` is the ratio of their medians.

The postprocessing of ``low_res_logits`` exports costs more where classes meet (see
``tfseg_lite.postprocess.BilinearArgmax``), so it depends on the picture: by default the frame is
a synthetic one of flat colour patches, on which the CamVid students see more class boundaries
than on CamVid photos; ``image=`` times a real photo instead.

The first invocations are slower (XNNPACK packs weights, caches warm up), hence the untimed
warm-up. On a shared or thermally throttled device quote the median; p90 shows the noise.
"""

from __future__ import annotations

import platform

import numpy as np
from PIL import Image

from tfseg_lite.segmenter import Segmenter, to_rgb

STEPS = ("preprocess", "postprocess", "end_to_end")


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


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(height, width, 3) uint8: flat colour patches of 64x64 pixels plus noise (a model sees
    regions and boundaries in it, unlike in pure noise, where a model may see one class only)."""
    rng = np.random.default_rng(seed)
    patches = rng.integers(0, 256, (height // 64 + 1, width // 64 + 1, 3)).repeat(64, axis=0).repeat(64, axis=1)
    return np.clip(patches[:height, :width] + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)


def benchmark(segmenter: Segmenter, runs: int = 50, warmup: int = 5, seed: int = 0, frame_size=None, image=None) -> dict:
    """Times a Segmenter on a camera frame.

    Args:
      segmenter: the model, with its thread count already set.
      runs: timed repetitions (each of ``invoke`` and of ``predict``).
      warmup: untimed repetitions first.
      seed: for the synthetic frame.
      frame_size: (height, width) of the frame; default: the model's input size (no resize).
      image: a photo (anything ``load_image`` takes) to use as the frame, resized to the frame size
        beforehand (not timed); default: ``synthetic_frame``.

    Returns:
      ``segmenter.describe()`` plus ``runs``, ``warmup``, ``machine``, ``frame`` (a description),
      ``end_to_end_ratio`` (end-to-end median / invoke median), and dicts ``invoke``,
      ``preprocess``, ``postprocess`` and ``end_to_end`` with ``median_ms``, ``p90_ms``,
      ``min_ms``, ``mean_ms`` and ``fps``.

    Raises:
      ValueError: ``runs`` < 1, ``warmup`` < 0 or a frame size < 1.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    height, width = (int(v) for v in (frame_size or segmenter.input_size))
    if height < 1 or width < 1:
        raise ValueError(f"the frame size must be at least 1x1, got {height}x{width}")
    if image is None:
        frame, source = synthetic_frame(height, width, seed), "synthetic"
    else:
        picture = to_rgb(image)
        source = str(image) if not isinstance(image, (Image.Image, np.ndarray)) else "the given image"
        frame = np.asarray(picture if picture.size == (width, height) else picture.resize((width, height), Image.BILINEAR))
    tensor = segmenter.preprocess(frame)
    for _ in range(warmup):
        segmenter.run(tensor)
        segmenter.predict(frame)
    invoke, steps = [], {step: [] for step in STEPS}
    for _ in range(runs):  # alternating, so that both see the same load
        segmenter.run(tensor)
        invoke.append(segmenter.last_invoke_ms)
        segmenter.predict(frame)
        for step in STEPS:
            steps[step].append(segmenter.last_times[step + "_ms"])
    result = segmenter.describe()
    resized = "the model's input size: no resize" if (height, width) == segmenter.input_size else "resized to the input"
    result.update(
        runs=runs,
        warmup=warmup,
        machine=f"{platform.machine()} {platform.python_implementation()} {platform.python_version()}",
        frame=f"{height}x{width} uint8 RGB array ({resized}), {source}",
        invoke=_stats(invoke),
        **{step: _stats(times) for step, times in steps.items()},
    )
    result["end_to_end_ratio"] = result["end_to_end"]["median_ms"] / result["invoke"]["median_ms"]
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
            f"frame      {result['frame']}",
            f"runs       {result['runs']} timed after {result['warmup']} warm-up, invoke and predict alternating",
            f"invoke     median {inv['median_ms']:.2f} ms  p90 {inv['p90_ms']:.2f} ms  "
            f"min {inv['min_ms']:.2f} ms  -> {inv['fps']:.1f} FPS",
            f"end-to-end median {e2e['median_ms']:.2f} ms  p90 {e2e['p90_ms']:.2f} ms  "
            f"min {e2e['min_ms']:.2f} ms  -> {e2e['fps']:.1f} FPS",
            f"steps      preprocess {result['preprocess']['median_ms']:.2f} ms, postprocess "
            f"{result['postprocess']['median_ms']:.2f} ms (medians); end-to-end / invoke "
            f"{result['end_to_end_ratio']:.2f}",
        ]
    )


TABLE_HEADER = (
    "| model | quantization | runtime | threads | input | invoke median ms | invoke p90 ms | FPS "
    "| end-to-end median ms | preprocess ms | postprocess ms | end-to-end / invoke | frame |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def table_row(result: dict) -> str:
    """One Markdown row for a latency table (``TABLE_HEADER`` gives the columns)."""
    inv = result["invoke"]
    height_width = result["input"].split("x")[:2]
    return (
        f"| {result['model']} | {result['quantization']} | {result['runtime']} | {result['threads']} | "
        f"{height_width[0]}x{height_width[1]} | {inv['median_ms']:.2f} | {inv['p90_ms']:.2f} | {inv['fps']:.1f} | "
        f"{result['end_to_end']['median_ms']:.2f} | {result['preprocess']['median_ms']:.2f} | "
        f"{result['postprocess']['median_ms']:.2f} | {result['end_to_end_ratio']:.2f} | {result['frame'].split()[0]} |"
    )


__all__ = ["STEPS", "TABLE_HEADER", "benchmark", "format_report", "synthetic_frame", "table_row"]
