"""Pictures people would rather look at than read: overlays, training curves, confusion matrices."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from tfseg.checkpoint import atomic_write
from tfseg.data.info import DatasetInfo

IGNORE_COLOUR = (0, 0, 0)


def colourize(labels: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Maps an (H, W) label map to an (H, W, 3) uint8 RGB picture with the dataset's palette."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[:] = IGNORE_COLOUR
    lut[: info.num_classes] = np.asarray(info.palette, dtype=np.uint8)
    return lut[np.clip(labels, 0, 255).astype(np.uint8)]


MIN_PANEL_HEIGHT = 200


def overlay_panel(image: np.ndarray, truth: np.ndarray, prediction: np.ndarray, info: DatasetInfo) -> np.ndarray:
    """Side by side: image | ground truth | prediction blended over the image, at the label size.

    Panels smaller than ``MIN_PANEL_HEIGHT`` are enlarged by an integer factor (nearest neighbour,
    so label edges stay exact) to be readable.
    """
    factor = max(1, -(-MIN_PANEL_HEIGHT // truth.shape[0]))
    if factor > 1:
        truth = np.kron(truth, np.ones((factor, factor), dtype=truth.dtype))
        prediction = np.kron(prediction, np.ones((factor, factor), dtype=prediction.dtype))
    h, w = truth.shape
    image = np.asarray(image)
    if image.shape[:2] != (h, w):
        image = np.asarray(Image.fromarray(image.astype(np.uint8)).resize((w, h), Image.BILINEAR))
    image = image.astype(np.uint8)
    blended = (0.45 * image + 0.55 * colourize(prediction, info)).astype(np.uint8)
    gap = np.full((h, 4, 3), 255, dtype=np.uint8)
    return np.concatenate([image, gap, colourize(truth, info), gap, blended], axis=1)


def save_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    return atomic_write(path, lambda tmp: Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="PNG"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on devices and CI
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, path, dpi: int) -> Path:
    """Lays ``fig`` out, writes it to ``path`` atomically as PNG and closes it (also on failure)."""
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def plot_curves(log_csv: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """Plots every logged quantity against the epoch from a Keras CSVLogger file (train vs. val)."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]
    keys = [k for k in rows[0] if k not in ("epoch", "lr") and not k.startswith("val_")]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, style in ((key, "-"), ("val_" + key, "--")):
            if name in rows[0]:
                ax.plot(epochs, [float(r[name]) for r in rows], style, marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save_figure(plt, fig, path, dpi=90)


def plot_tradeoff(rows: Sequence[dict], x: str, ys: Sequence[str], path: str | os.PathLike, title: str = "",
                  log_scale: Sequence[str] = (), bands: dict | None = None) -> Path:
    """One panel per quantity in ``ys`` against ``x`` over a list of records (e.g. pruning rounds);
    the quantities in ``log_scale`` on a log axis, ``bands`` ({quantity: (low, high)}) shaded."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(ys), figsize=(4 * len(ys), 3.2), squeeze=False)
    xs = [row[x] for row in rows]
    for ax, key in zip(axes[0], ys):
        ax.plot(xs, [row.get(key) for row in rows], marker="o")
        if key in log_scale:
            ax.set_yscale("log")
        if bands and key in bands:
            ax.axhspan(*bands[key], color="tab:green", alpha=0.15, label="target band")
            ax.legend(fontsize=8)
        ax.set_xlabel(x)
        ax.set_title(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save_figure(plt, fig, path, dpi=90)


AXIS_LABELS = {"latency_ms": "LiteRT latency (ms)", "miou": "mIoU (%)", "miou_litert": "mIoU in LiteRT (%)", "miou_keras": "mIoU in Keras (%)"}


def plot_accuracy_latency(rows: Sequence[dict], path: str | os.PathLike, x: str = "latency_ms",
                          y: str = "miou_litert", label: str = "stage", title: str = "") -> Path:
    """Each model of a chain as a point: mIoU against latency, labelled, the chain's order joined."""
    plt = _pyplot()
    points = [row for row in rows if row.get(x) is not None and row.get(y) is not None]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([row[x] for row in points], [100 * row[y] for row in points], color="0.75", zorder=1)
    for row in points:
        ax.scatter(row[x], 100 * row[y], s=40, zorder=2)
        ax.annotate(str(row[label]), (row[x], 100 * row[y]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(AXIS_LABELS.get(x, x.replace("_", " ")))
    ax.set_ylabel(AXIS_LABELS.get(y, y.replace("_", " ")))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(plt, fig, path, dpi=100)


def pareto_front(points: Sequence[dict], x: str = "latency_ms", y: str = "miou") -> list:
    """The points no other point beats on both (lower ``x`` and higher ``y``, at least one strictly),
    fastest first."""
    def dominated(p):
        return any(q[x] <= p[x] and q[y] >= p[y] and (q[x] < p[x] or q[y] > p[y]) for q in points)
    return sorted((p for p in points if not dominated(p)), key=lambda p: p[x])


def plot_pareto(points: Sequence[dict], path: str | os.PathLike, x: str = "latency_ms", y: str = "miou",
                group: str = "group", label: str = "label", title: str = "") -> Path:
    """Accuracy against latency, one marker per ``group``, every point labelled, the Pareto front as
    a staircase."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.8))
    front = pareto_front(points, x, y)
    ax.step([p[x] for p in front], [100 * p[y] for p in front], where="post", color="0.7", zorder=1,
            label="Pareto front")
    for marker, name in zip("osD^v", dict.fromkeys(p[group] for p in points)):
        members = [p for p in points if p[group] == name]
        ax.scatter([p[x] for p in members], [100 * p[y] for p in members], marker=marker, s=45, zorder=2, label=name)
        for p in members:
            ax.annotate(str(p[label]), (p[x], 100 * p[y]), textcoords="offset points", xytext=(5, 3), fontsize=7)
    ax.set_xlabel(AXIS_LABELS.get(x, x.replace("_", " ")))
    ax.set_ylabel(AXIS_LABELS.get(y, y.replace("_", " ")))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(plt, fig, path, dpi=100)


def plot_ranking(labels: Sequence[str], values: Sequence[float], path: str | os.PathLike, xlabel: str = "",
                 title: str = "", reference: float | None = None, reference_label: str = "") -> Path:
    """Horizontal bars, the first value at the top (a ranking, worst first); ``reference`` draws a
    dashed vertical line (e.g. the error rounding alone gives)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.24 * max(len(values), 1)))
    positions = np.arange(len(values))[::-1]
    ax.barh(positions, values, color="tab:red", alpha=0.75)
    ax.set_yticks(positions, labels, fontsize=7)
    if reference is not None:
        ax.axvline(reference, color="0.3", linestyle="--", linewidth=1, label=reference_label or None)
        if reference_label:
            ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(plt, fig, path, dpi=100)


def plot_grouped_bars(labels: Sequence[str], series: dict, path: str | os.PathLike, xlabel: str = "",
                      title: str = "") -> Path:
    """Horizontal bars in groups, the first label at the top, one bar of each group per series
    (e.g. ``{"float32": ms per segment, "int8": ...}``); a None value leaves its bar out."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.0 + 0.16 * max(len(series), 1) * max(len(labels), 1)))
    positions = np.arange(len(labels))[::-1]
    height = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        offset = (len(series) - 1 - 2 * k) * height / 2  # the first series on top within a group
        ax.barh(positions + offset, [np.nan if v is None else v for v in values], height, label=name)
    ax.set_yticks(positions, labels, fontsize=7)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return _save_figure(plt, fig, path, dpi=100)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrix (rows: ground truth) as a heat map."""
    cm = np.asarray(cm, dtype=np.float64)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * n, 0.8 + 0.5 * n))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    for i in range(n):
        for j in range(n):
            if norm[i, j] >= 0.01:
                ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    return _save_figure(plt, fig, path, dpi=90)
