"""Segmentation metrics from a confusion matrix: streaming Keras metrics and a NumPy API.

Everything here is derived from one C x C confusion matrix ``cm`` whose rows are the ground
truth and columns the prediction (``cm[t, p]`` = pixels of class t predicted as p), counted over
the non-ignored pixels only. The scores are computed by a single function,
``_scores(cm, xp)``, written once against the NumPy API and run with NumPy
(:func:`scores_from_confusion`) or with ``tf.experimental.numpy`` (the Keras metrics' ``result``),
so the two can never disagree on a definition:

* ``per_class_iou[c] = tp / (gt + pred - tp)``; NaN when the class is absent from both the
  ground truth and the prediction (union 0): there is nothing to score, and counting it as 0 or 1
  would move the mean for no reason. ``miou`` is the mean over the other classes. A class that
  is predicted but absent from the ground truth has IoU 0 and does count (a false positive).
* ``per_class_dice[c] = 2 tp / (gt + pred)``, NaN on the same classes; ``mean_dice`` likewise.
* ``per_class_accuracy[c] = tp / gt`` (recall), NaN for classes absent from the ground truth;
  ``mean_class_accuracy`` is their mean (SegNet's "class average accuracy").
* ``pixel_accuracy = trace / total`` (SegNet's "global accuracy").
* ``frequency_weighted_iou = sum_c (gt_c / total) * iou_c``.
* A mean over an empty set (nothing counted yet) is 0, like the Keras MeanIoU metric, so a
  progress bar never shows NaN.

Labels outside ``[0, C)`` that are not the ignore label (in the ground truth or in an integer
prediction map) are an error, never silently dropped or folded into the matrix:
``tf.errors.InvalidArgumentError`` from the Keras metrics, :class:`~tfseg.errors.DataError` from
:func:`confusion_matrix`. They almost always mean a dataset's void value was not remapped.

The matrix is float64: exact for integer counts up to 2**53 (about 5e10 CamVid images of
360x480), fractional sample weights work, and float64 sums across replicas under every
distribution strategy. (float32 would stop counting exactly after 2**24 pixels, i.e. ~100
CamVid images; int32 would overflow after ~12,000.)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from tfseg._keras import keras, tf
from tfseg.data.info import IGNORE_LABEL
from tfseg.errors import ConfigError, DataError
from tfseg.losses import (
    _check_channels,
    _check_num_classes,
    _labels_like,
    _valid_labels,
)

__all__ = [
    "ConfusionMatrixMetric",
    "MeanIoU",
    "PixelAccuracy",
    "MeanDice",
    "PerClassIoU",
    "confusion_matrix",
    "scores_from_confusion",
    "format_scores",
]

_tnp = tf.experimental.numpy


# --------------------------------------------------------------------------------------------
# The one set of formulas
# --------------------------------------------------------------------------------------------


def _scores(cm, xp) -> dict:
    """All scores of a confusion matrix, with ``xp`` = ``numpy`` or ``tf.experimental.numpy``."""
    tp = xp.diagonal(cm)
    gt = xp.sum(cm, axis=1)
    pred = xp.sum(cm, axis=0)
    total = xp.sum(cm)
    nan = float("nan")

    def ratio(num, den):  # num / den, NaN where den == 0, without a division by zero
        return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), nan)

    def nanmean(values):  # mean of the non-NaN entries, 0 if there are none
        defined = xp.logical_not(xp.isnan(values))
        count = xp.sum(xp.where(defined, 1.0, 0.0))
        return xp.sum(xp.where(defined, values, 0.0)) / xp.maximum(count, 1.0)

    per_class_iou = ratio(tp, gt + pred - tp)
    per_class_dice = ratio(2.0 * tp, gt + pred)
    per_class_accuracy = ratio(tp, gt)
    share = xp.where(total > 0, gt / xp.maximum(total, 1.0), 0.0)
    return {
        "miou": nanmean(per_class_iou),
        "per_class_iou": per_class_iou,
        "pixel_accuracy": xp.sum(tp) / xp.maximum(total, 1.0),
        "mean_class_accuracy": nanmean(per_class_accuracy),
        "per_class_accuracy": per_class_accuracy,
        "mean_dice": nanmean(per_class_dice),
        "per_class_dice": per_class_dice,
        # iou is NaN only where gt == pred == 0, i.e. where the share is 0 anyway.
        "frequency_weighted_iou": xp.sum(share * xp.where(xp.isnan(per_class_iou), 0.0, per_class_iou)),
        "class_pixel_share": share,
    }


# --------------------------------------------------------------------------------------------
# NumPy API
# --------------------------------------------------------------------------------------------


def confusion_matrix(y_true, y_pred_labels, num_classes: int, ignore_label: int | None = IGNORE_LABEL) -> np.ndarray:
    """Confusion matrix (rows: ground truth, columns: prediction) of the non-ignored pixels.

    Args:
      y_true: integer masks of any shape, e.g. ``(B, H, W)``; a trailing axis of size 1 is dropped.
      y_pred_labels: predicted class indices with the same shape as ``y_true`` (use
        ``np.argmax(logits, -1)`` for logits).
      num_classes: number of classes C.
      ignore_label: ground-truth value whose pixels are skipped (``None``: none).

    Returns:
      ``(C, C)`` int64 array.

    Raises:
      DataError: shapes that differ, or a label outside ``[0, C)`` (other than the ignore label in
        ``y_true``), naming the offending values.

    Example:
      >>> cm = confusion_matrix(masks, np.argmax(logits, -1), num_classes=11)
      >>> scores_from_confusion(cm)["miou"]
    """
    num_classes = _check_num_classes(num_classes, "confusion_matrix")
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred_labels)
    if y_true.ndim == y_pred.ndim + 1 and y_true.shape[-1] == 1:
        y_true = y_true[..., 0]
    if y_pred.ndim == y_true.ndim + 1 and y_pred.shape[-1] == 1:
        y_pred = y_pred[..., 0]
    if y_true.shape != y_pred.shape:
        raise DataError(
            f"confusion_matrix: y_true shape {y_true.shape} differs from y_pred_labels shape {y_pred.shape}"
            " (pass class indices, e.g. np.argmax(logits, -1), not logits)"
        )
    for name, values in (("y_true", y_true), ("y_pred_labels", y_pred)):
        if not np.issubdtype(values.dtype, np.integer) and not np.array_equal(values, np.round(values)):
            raise DataError(f"confusion_matrix: {name} holds non-integer values")
    y_true = y_true.astype(np.int64, copy=False).ravel()
    y_pred = y_pred.astype(np.int64, copy=False).ravel()
    keep = np.ones(y_true.shape, bool) if ignore_label is None else y_true != ignore_label
    # Predictions are checked everywhere (they have no ignore value), as the Keras metrics do.
    for name, values in (("y_true", y_true[keep]), ("y_pred_labels", y_pred)):
        bad = (values < 0) | (values >= num_classes)
        if bad.any():
            raise DataError(
                f"confusion_matrix: {name} has labels {np.unique(values[bad])[:10].tolist()} outside "
                f"[0, {num_classes}) that are not the ignore label {ignore_label}"
            )
    flat = np.bincount(y_true[keep] * num_classes + y_pred[keep], minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def scores_from_confusion(cm, class_names: Sequence[str] | None = None) -> dict:
    """Every segmentation score of a confusion matrix (definitions in the module docstring).

    Args:
      cm: ``(C, C)`` confusion matrix, rows ground truth, columns prediction (counts or weights).
      class_names: optional C names, stored under ``"class_names"`` for :func:`format_scores`.

    Returns:
      A dict with floats ``miou``, ``pixel_accuracy``, ``mean_class_accuracy``, ``mean_dice``,
      ``frequency_weighted_iou`` and ``num_pixels``; ``(C,)`` float64 arrays ``per_class_iou``,
      ``per_class_dice``, ``per_class_accuracy`` (NaN for classes without data) and
      ``class_pixel_share`` (ground-truth share of the counted pixels); ``confusion_matrix``; and
      ``class_names`` when given.

    Raises:
      ConfigError: a matrix that is not square, or class_names of the wrong length.
      DataError: negative or non-finite entries.

    Example:
      >>> s = scores_from_confusion(cm, CAMVID_INFO.class_names)
      >>> print(f"mIoU {s['miou']:.3f}")
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ConfigError(f"scores_from_confusion: expected a square (C, C) matrix, got shape {cm.shape}")
    if not np.all(np.isfinite(cm)) or (cm < 0).any():
        raise DataError("scores_from_confusion: the confusion matrix has negative or non-finite entries")
    if class_names is not None and len(class_names) != cm.shape[0]:
        raise ConfigError(f"scores_from_confusion: {len(class_names)} class names for a {cm.shape[0]}-class matrix")
    scores = {k: (float(v) if np.ndim(v) == 0 else np.asarray(v)) for k, v in _scores(cm, np).items()}
    scores["num_pixels"] = float(cm.sum())
    scores["confusion_matrix"] = cm
    if class_names is not None:
        scores["class_names"] = list(class_names)
    return scores


def format_scores(scores: dict, class_names: Sequence[str] | None = None, digits: int = 3) -> str:
    """Render scores as a per-class table (IoU, Dice, accuracy, pixel share) plus the summary.

    Args:
      scores: the dict from :func:`scores_from_confusion`.
      class_names: names to print; default ``scores["class_names"]`` or ``class_0``...
      digits: decimals of the scores.

    Returns:
      A multi-line string; classes without data show ``-``.

    Raises:
      ConfigError: class_names of the wrong length.

    Example:
      >>> print(format_scores(scores_from_confusion(cm), CAMVID_INFO.class_names))
    """
    iou = np.asarray(scores["per_class_iou"], dtype=np.float64)
    num_classes = len(iou)
    names = class_names if class_names is not None else scores.get("class_names")
    names = list(names) if names is not None else [f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"format_scores: {len(names)} class names for {num_classes} classes")
    columns = {
        "IoU": iou,
        "Dice": np.asarray(scores["per_class_dice"], dtype=np.float64),
        "Acc": np.asarray(scores["per_class_accuracy"], dtype=np.float64),
    }
    share = np.asarray(scores["class_pixel_share"], dtype=np.float64)

    def cell(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.{digits}f}"

    width = max([len("class"), len("mean")] + [len(n) for n in names])
    num_width = max(digits + 3, 6)
    header = f"{'class':<{width}}  " + "  ".join(f"{c:>{num_width}}" for c in columns) + f"  {'pixels%':>8}"
    lines = [header, "-" * len(header)]
    for i, name in enumerate(names):
        row = "  ".join(f"{cell(col[i]):>{num_width}}" for col in columns.values())
        lines.append(f"{name:<{width}}  {row}  {100.0 * share[i]:>8.2f}")
    lines.append("-" * len(header))
    means = (scores["miou"], scores["mean_dice"], scores["mean_class_accuracy"])
    lines.append(f"{'mean':<{width}}  " + "  ".join(f"{cell(m):>{num_width}}" for m in means) + f"  {100.0 * share.sum():>8.2f}")
    lines.append(
        f"pixel accuracy {cell(scores['pixel_accuracy'])}   "
        f"frequency-weighted IoU {cell(scores['frequency_weighted_iou'])}   "
        f"mIoU {cell(scores['miou'])}"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Keras metrics
# --------------------------------------------------------------------------------------------


@keras.utils.register_keras_serializable(package="tfseg")
class ConfusionMatrixMetric(keras.metrics.Metric):
    """Streaming confusion matrix over batches; subclasses pick which score ``result`` returns.

    ``update_state(y_true, y_pred, sample_weight=None)``:

    * ``y_true``: int masks ``(B, H, W)`` or ``(B, H, W, 1)`` (float masks are rounded).
    * ``y_pred``: logits or probabilities ``(B, H, W, C)`` (argmax on the last axis), or an integer
      label map ``(B, H, W)`` / ``(B, H, W, 1)``.
    * ``sample_weight``: optional, per sample ``(B,)`` or per pixel ``(B, H, W)``; each pixel adds
      its weight instead of 1.

    Pixels whose ground truth is ``ignore_label`` are skipped. Any other label outside
    ``[0, C)`` raises ``tf.errors.InvalidArgumentError``.

    Args:
      num_classes: number of classes C.
      ignore_label: ground-truth value to skip (``None``: none).
      name: metric name (the key in Keras logs).
      dtype: dtype of ``result()`` (the matrix itself is always float64).

    Returns:
      ``result()`` returns the whole ``(C, C)`` float64 matrix here; subclasses return one score
      (in ``dtype``).

    Raises:
      ConfigError: predictions with a channel count other than ``num_classes``.

    Example:
      >>> m = ConfusionMatrixMetric(3); m.update_state(masks, logits)
      >>> scores_from_confusion(m.result().numpy())
    """

    _score = None  # key of _scores(); None means "the confusion matrix itself"

    def __init__(self, num_classes: int, ignore_label: int | None = IGNORE_LABEL, name: str | None = None, dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.num_classes = _check_num_classes(num_classes, type(self).__name__)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.total_cm = self.add_weight(
            "confusion_matrix",
            shape=(self.num_classes, self.num_classes),
            initializer="zeros",
            dtype=tf.float64,
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        owner = type(self).__name__
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank == 4 and y_pred.shape[-1] == 1 and self.num_classes != 1:
            y_pred = y_pred[..., 0]  # a label map with a channel axis
        if y_pred.shape.rank == 4:
            _check_channels(y_pred, self.num_classes, owner)
            # An argmax is a class index by construction: it needs no range check.
            predicted = tf.argmax(y_pred, axis=-1, output_type=tf.int32)
        elif y_pred.shape.rank == 3:
            if y_pred.dtype.is_floating:
                y_pred = tf.round(y_pred)
            # Predictions have no ignore value: every predicted label must be a class.
            predicted, _ = _valid_labels(tf.cast(y_pred, tf.int32), self.num_classes, None, f"{owner} y_pred")
        else:
            raise ConfigError(f"{owner}: y_pred must be (B, H, W, C) scores or a (B, H, W) label map, got {y_pred.shape}")
        labels = _labels_like(y_true, predicted, owner)
        labels, valid = _valid_labels(labels, self.num_classes, self.ignore_label, f"{owner} y_true")

        weights = None
        if sample_weight is not None:
            sample_weight = tf.cast(tf.convert_to_tensor(sample_weight), tf.float64)
            if sample_weight.shape.rank == 4 and sample_weight.shape[-1] == 1:
                sample_weight = sample_weight[..., 0]
            if sample_weight.shape.rank == 1 or (sample_weight.shape.rank == 2 and sample_weight.shape[-1] == 1):
                # Per-sample weights, (B,) or (B, 1): one weight for all pixels of the sample.
                sample_weight = tf.reshape(sample_weight, [-1, 1, 1])
            weights = tf.reshape(tf.broadcast_to(sample_weight, tf.shape(labels)), [-1])
        # Ignored pixels are counted in one extra bin that is then dropped (no dynamic shapes).
        # bincount of indices, without a float64 weight per pixel unless sample weights ask for one.
        cells = self.num_classes * self.num_classes
        index = tf.reshape(tf.where(valid, labels * self.num_classes + predicted, cells), [-1])
        # The raw op takes the size as a constant (tf.math.bincount computes it, which XLA rejects);
        # empty weights count every pixel once.
        counts = tf.raw_ops.DenseBincount(
            input=index, size=cells + 1, weights=tf.zeros([0], tf.float64) if weights is None else weights
        )[:cells]
        return self.total_cm.assign_add(tf.reshape(counts, (self.num_classes, self.num_classes)))

    def result(self):
        if self._score is None:
            return tf.identity(self.total_cm)  # float64 whatever ``dtype`` is: counts stay exact
        return tf.cast(_scores(tf.convert_to_tensor(self.total_cm), _tnp)[self._score], self.dtype)

    def reset_state(self):
        self.total_cm.assign(tf.zeros((self.num_classes, self.num_classes), tf.float64))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, ignore_label=self.ignore_label)
        return config


@keras.utils.register_keras_serializable(package="tfseg")
class MeanIoU(ConfusionMatrixMetric):
    """Mean intersection-over-union over the classes present in the ground truth or prediction.

    Classes with union 0 (absent from both) are left out of the mean; a class predicted but
    absent from the ground truth counts with IoU 0. Same value as
    ``scores_from_confusion(cm)["miou"]``.

    Args:
      num_classes: number of classes C.
      ignore_label: ground-truth value to skip.
      name: metric name.
      dtype: result dtype.

    Returns:
      ``result()``: scalar mIoU in [0, 1] (0 before any pixel is counted).

    Raises:
      ConfigError: predictions with a channel count other than ``num_classes``.

    Example:
      >>> model.compile(optimizer="adam", loss=SegmentationCrossEntropy(11), metrics=[MeanIoU(11)])
    """

    _score = "miou"

    def __init__(self, num_classes: int, ignore_label: int | None = IGNORE_LABEL, name: str = "miou", dtype=None):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)


@keras.utils.register_keras_serializable(package="tfseg")
class PixelAccuracy(ConfusionMatrixMetric):
    """Fraction of non-ignored pixels whose predicted class is right (SegNet's global accuracy).

    Args:
      num_classes: number of classes C.
      ignore_label: ground-truth value to skip.
      name: metric name.
      dtype: result dtype.

    Returns:
      ``result()``: scalar in [0, 1].

    Raises:
      ConfigError: predictions with a channel count other than ``num_classes``.

    Example:
      >>> m = PixelAccuracy(11); m.update_state(masks, logits); float(m.result())
    """

    _score = "pixel_accuracy"

    def __init__(
        self, num_classes: int, ignore_label: int | None = IGNORE_LABEL, name: str = "pixel_accuracy", dtype=None
    ):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)


@keras.utils.register_keras_serializable(package="tfseg")
class MeanDice(ConfusionMatrixMetric):
    """Mean hard Dice (F1) over the classes present in the ground truth or prediction.

    Args:
      num_classes: number of classes C.
      ignore_label: ground-truth value to skip.
      name: metric name.
      dtype: result dtype.

    Returns:
      ``result()``: scalar in [0, 1].

    Raises:
      ConfigError: predictions with a channel count other than ``num_classes``.

    Example:
      >>> model.compile(..., metrics=[MeanIoU(11), MeanDice(11)])
    """

    _score = "mean_dice"

    def __init__(self, num_classes: int, ignore_label: int | None = IGNORE_LABEL, name: str = "mean_dice", dtype=None):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)


@keras.utils.register_keras_serializable(package="tfseg")
class PerClassIoU(ConfusionMatrixMetric):
    """IoU of every class, a ``(C,)`` vector with NaN for classes absent from GT and prediction.

    Meant for evaluation code, not for ``compile(metrics=...)``'s progress bar.

    Args:
      num_classes: number of classes C.
      ignore_label: ground-truth value to skip.
      name: metric name.
      dtype: result dtype.

    Returns:
      ``result()``: ``(C,)`` tensor.

    Raises:
      ConfigError: predictions with a channel count other than ``num_classes``.

    Example:
      >>> m = PerClassIoU(11); m.update_state(masks, logits); m.result().numpy()
    """

    _score = "per_class_iou"

    def __init__(
        self, num_classes: int, ignore_label: int | None = IGNORE_LABEL, name: str = "per_class_iou", dtype=None
    ):
        super().__init__(num_classes, ignore_label=ignore_label, name=name, dtype=dtype)
