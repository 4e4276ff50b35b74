"""The MAC-bound limit of this machine (``litert_peak``): LiteRT's throughput in GMAC/s on single large
convolutions (dense 1x1 and 3x3, and a depthwise 3x3, which is memory-bound), float32 and int8.
``MACs / peak`` is the time a model would take if every MAC ran at the dense peak;
``profile_layers(..., peak_gmacs=...)`` states its latency as a multiple of that.
"""

from __future__ import annotations

from tfseg._keras import keras
from tfseg.models.profiling import layer_table
from tfseg.tflite import litert_latencies, random_images, to_tflite_bytes

layers = keras.layers

# name, input (H, W, C), layer, dense (a convolution whose MACs can run at the machine's peak)
PEAK_KERNELS = (
    ("conv1x1 256->256 @90x120", (90, 120, 256), lambda: layers.Conv2D(256, 1), True),
    ("conv3x3 64->64 @180x240", (180, 240, 64), lambda: layers.Conv2D(64, 3, padding="same"), True),
    ("depthwise3x3 96 @180x240", (180, 240, 96), lambda: layers.DepthwiseConv2D(3, padding="same"), False),
)


def litert_peak(num_threads=(1, 2), runs: int = 10, warmup: int = 2, kernels=PEAK_KERNELS,
                quantizations=("float32", "int8")) -> list[dict]:
    """LiteRT's throughput in GMAC/s on single large convolutions, float32 and int8 (int8 I/O, so
    the model is the convolution alone), timed in interleaved rounds (``litert_latencies``).

    Args:
      num_threads: thread counts to measure.
      runs, warmup: per model and thread count.
      kernels: ``(name, input (H, W, C), layer factory, dense)`` tuples (``PEAK_KERNELS``: a 1x1
        256->256 conv on 90x120, a 3x3 64->64 conv on 180x240, a depthwise 3x3 on 180x240x96).
      quantizations: ``"float32"`` and/or ``"int8"``.

    Returns:
      ``[{"kernel", "quantization", "num_threads", "dense", "macs", "median_ms", "p90_ms",
      "gmacs_per_s"}, ...]``.
    """
    models, macs = {}, {}
    for name, shape, make, _dense in kernels:
        inputs = keras.Input(shape)
        model = keras.Model(inputs, make()(inputs), name="peak")
        macs[name] = sum(row["macs"] for row in layer_table(model))
        for quantization in quantizations:
            models[(name, quantization)] = (to_tflite_bytes(model, "int8", random_images(shape, 2), io_dtype="int8") if quantization == "int8"
                                            else to_tflite_bytes(model))
    dense = {name: flag for name, _shape, _make, flag in kernels}
    rows = []
    for threads in num_threads:
        stats = litert_latencies({f"{n}|{q}": data for (n, q), data in models.items()}, threads, runs, warmup)
        for (name, quantization) in models:
            entry = stats[f"{name}|{quantization}"]
            rows.append({"kernel": name, "quantization": quantization, "num_threads": threads, "dense": dense[name],
                         "macs": macs[name], "median_ms": entry["median_ms"], "p90_ms": entry["p90_ms"],
                         "gmacs_per_s": macs[name] / entry["median_ms"] / 1e6})
    return rows


def peak_gmacs(rows) -> dict:
    """The best dense GMAC/s of ``litert_peak``'s rows: ``{quantization: {num_threads: GMAC/s}}``."""
    peaks = {}
    for row in rows:
        if row["dense"]:
            by_threads = peaks.setdefault(row["quantization"], {})
            by_threads[row["num_threads"]] = max(by_threads.get(row["num_threads"], 0.0), row["gmacs_per_s"])
    return peaks


def format_peak(rows) -> str:
    """A Markdown table of ``litert_peak``'s rows."""
    lines = ["| kernel | quantization | threads | GMACs | ms | GMAC/s |", "|---|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['kernel']}{'' if row['dense'] else ' (memory-bound)'} | {row['quantization']} | "
                     f"{row['num_threads']} | {row['macs'] / 1e9:.3f} | {row['median_ms']:.3f} | "
                     f"{row['gmacs_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


__all__ = ["PEAK_KERNELS", "format_peak", "litert_peak", "peak_gmacs"]
