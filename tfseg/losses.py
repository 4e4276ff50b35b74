"""Segmentation losses that understand the ignore label, and class-balancing weights.

Conventions (shared with :mod:`tfseg.metrics`):

* ``y_true``: integer masks ``(B, H, W)`` or ``(B, H, W, 1)``, classes ``0..C-1``, and
  ``ignore_label`` (255, :data:`tfseg.data.info.IGNORE_LABEL`) for pixels that take no part.
* ``y_pred``: logits ``(B, H, W, C)``, channels last (probabilities with ``from_logits=False``).
* ``call`` returns one value per sample, shape ``(B,)``. Keras then reduces it: the default
  reduction averages the per-sample values over the batch; ``Reduction.NONE`` returns them as
  they are, which is what a distribution strategy needs
  (``tf.nn.compute_average_loss(per_sample, global_batch_size=...)``).
  A ``sample_weight`` given to the loss is therefore per sample, ``(B,)``.
* A label outside ``[0, C)`` that is not the ignore label is a data bug (typically a dataset's own
  void value that was never remapped). It raises ``tf.errors.InvalidArgumentError`` when the loss
  runs, instead of being silently ignored or (on GPU) turning the loss into NaN.
"""

from __future__ import annotations

import warnings
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from tfseg._keras import keras, tf
from tfseg.data.info import IGNORE_LABEL
from tfseg.errors import ConfigError, DataError

__all__ = [
    "SegmentationCrossEntropy",
    "sparse_cross_entropy",
    "DiceLoss",
    "CEDiceLoss",
    "LogitOffsetLoss",
    "PixelCounts",
    "class_pixel_counts",
    "median_frequency_weights",
]


# --------------------------------------------------------------------------------------------
# Shared tensor helpers (also used by tfseg.metrics, so that both read labels the same way)
# --------------------------------------------------------------------------------------------


def _check_num_classes(num_classes, owner: str) -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or int(num_classes) != num_classes or int(num_classes) < 1:
        raise ConfigError(f"{owner}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_channels(y_pred, num_classes: int | None, owner: str) -> None:
    """Raise ConfigError when the static channel count of ``y_pred`` differs from ``num_classes``."""
    channels = y_pred.shape[-1] if y_pred.shape.rank is not None else None
    if num_classes is not None and channels is not None and channels != num_classes:
        raise ConfigError(
            f"{owner}: the model outputs {channels} channels but num_classes is {num_classes}; "
            f"y_pred has shape {y_pred.shape}"
        )


def _labels_like(y_true, spatial_shape_of, owner: str):
    """Return ``y_true`` as int32 ``(B, H, W)``, matching ``spatial_shape_of`` (a rank-3 or rank-4 tensor).

    Accepts ``(B, H, W)`` and ``(B, H, W, 1)`` masks, and float masks (Keras may cast labels to
    the prediction dtype). A mask of unknown rank is reshaped to the prediction's spatial shape.
    """
    y_true = tf.convert_to_tensor(y_true)
    if y_true.dtype.is_floating:
        # Round rather than truncate, so 254.9999 from a resize cannot become 254.
        y_true = tf.round(y_true)
    y_true = tf.cast(y_true, tf.int32)
    if y_true.shape.rank == 4 and y_true.shape[-1] == 1:
        y_true = tf.squeeze(y_true, axis=-1)
    elif y_true.shape.rank is None:
        y_true = tf.reshape(y_true, tf.shape(spatial_shape_of)[:3])
    if y_true.shape.rank != 3:
        raise ConfigError(f"{owner}: masks must be (B, H, W) or (B, H, W, 1), got shape {y_true.shape}")
    if not y_true.shape.is_compatible_with(spatial_shape_of.shape[:3]):
        raise ConfigError(
            f"{owner}: mask shape {y_true.shape} does not match prediction shape {spatial_shape_of.shape}"
        )
    return y_true


def sparse_cross_entropy(labels, logits):
    """``-log softmax(logits)[label]`` along the last axis: one value per position.

    The values and gradient of ``tf.nn.sparse_softmax_cross_entropy_with_logits``, written as
    ``logsumexp(z) - z[label]`` with the gradient ``softmax(z) - one_hot(label)`` spelt out. On
    CPU, with the few classes of segmentation, TF's fused op is much slower (8x288x384x11 float32
    on 2 cores, ``recipes/bench_step_parts.py``: 52-58 ms against 31-35 ms forward and backward,
    43-45 against 17-21 ms forward only), and every training step runs it on the full-resolution
    logits.

    Args:
      labels: integer labels in ``[0, C)`` of static rank, one per position of ``logits``
        (callers replace ignored labels and check the range first, see :func:`_valid_labels`).
      logits: float ``(..., C)``.

    Returns:
      ``logits.shape[:-1]`` values, no gradient for ``labels``.
    """
    labels = tf.cast(labels, tf.int32)
    if labels.shape.rank is None:
        raise ConfigError(f"sparse_cross_entropy: labels need a static rank, got shape {labels.shape}")

    @tf.custom_gradient
    def cross_entropy(z):
        # Shift by the row maximum first: exp stays in range and z - max is exact, so large logits
        # lose no more precision than in TF's op.
        shifted = z - tf.reduce_max(z, axis=-1, keepdims=True)
        exp_shifted = tf.exp(shifted)
        total = tf.reduce_sum(exp_shifted, axis=-1, keepdims=True)
        picked = tf.gather(shifted, labels[..., tf.newaxis], batch_dims=labels.shape.rank)
        values = (tf.math.log(total) - picked)[..., 0]

        def gradient(upstream):
            one_hot = tf.one_hot(labels, tf.shape(z)[-1], dtype=z.dtype)
            return upstream[..., tf.newaxis] * (exp_shifted / total - one_hot)

        return values, gradient

    return cross_entropy(logits)


def _valid_labels(labels, num_classes, ignore_label: int | None, what: str):
    """Return (labels with ignored pixels replaced by 0, boolean mask of the valid pixels).

    ``num_classes`` may be a Python int or a scalar tensor. Both outputs carry a control
    dependency on the range check, so whatever uses them also runs the check (eagerly, the check
    raises at once).
    """
    if ignore_label is None:
        ignored = tf.zeros_like(labels, dtype=tf.bool)
    else:
        ignored = tf.equal(labels, ignore_label)
    out_of_range = tf.logical_and(
        tf.logical_not(ignored), tf.logical_or(labels < 0, labels >= num_classes)
    )
    # Reductions instead of boolean_mask keep shapes static (XLA-friendly); the message still
    # names the offending range and the class count.
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(out_of_range)),
        [
            f"{what}: labels outside [0, num_classes) that are not the ignore label "
            f"({ignore_label}); smallest and largest such label, then num_classes:",
            tf.reduce_min(tf.where(out_of_range, labels, tf.int32.max)),
            tf.reduce_max(tf.where(out_of_range, labels, tf.int32.min)),
            num_classes,
        ],
    )
    with tf.control_dependencies([check]):
        valid = tf.logical_not(ignored)
        safe = tf.where(valid, labels, tf.zeros_like(labels))
    return safe, valid


def _check_class_weights(class_weights, num_classes: int | None, owner: str):
    if class_weights is None:
        return None, num_classes
    weights = [float(w) for w in np.asarray(class_weights, dtype=np.float64).reshape(-1)]
    if num_classes is not None and len(weights) != num_classes:
        raise ConfigError(f"{owner}: {len(weights)} class_weights given but num_classes is {num_classes}")
    if any(not np.isfinite(w) or w < 0 for w in weights):
        raise ConfigError(f"{owner}: class_weights must be finite and >= 0, got {weights}")
    return weights, len(weights)


def _check_logit_offset(logit_offset, owner: str) -> list:
    offset = [float(v) for v in np.asarray(logit_offset, dtype=np.float64).reshape(-1)]
    if not offset or not np.all(np.isfinite(offset)):
        raise ConfigError(f"{owner}: logit_offset must be finite numbers, got {logit_offset!r}")
    return offset


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


@keras.utils.register_keras_serializable(package="tfseg")
class SegmentationCrossEntropy(keras.losses.Loss):
    """Pixel-wise softmax cross-entropy that skips ignored pixels.

    Per sample, the loss is the weighted mean over that sample's valid pixels,
    ``sum_i w[y_i] * ce_i / sum_i w[y_i]`` (PyTorch's ``CrossEntropyLoss(weight=...)`` semantics,
    applied per sample). Without class weights every ``w`` is 1. A sample without any valid pixel
    contributes 0 (and no NaN, also in the gradient); it still counts in the batch average.

    Args:
      num_classes: number of classes C; ``None`` takes it from ``class_weights`` or, failing that,
        from the logits. When known, a logits tensor with another channel count raises.
      ignore_label: label value excluded from the loss (``None``: no label is ignored).
      class_weights: optional sequence of C non-negative weights, e.g. from
        :func:`median_frequency_weights`.
      from_logits: ``True`` if ``y_pred`` are logits (the tfseg model convention), ``False`` for
        softmax probabilities.
      label_smoothing: ``eps`` in ``[0, 1)``; the target becomes ``(1 - eps) * one_hot + eps / C``.
      reduction: a ``keras.losses.Reduction``; use ``NONE`` under distribution strategies.
      name: loss name.

    Returns:
      Calling the loss returns the reduced loss (or ``(B,)`` per-sample values with
      ``Reduction.NONE``).

    Raises:
      ConfigError: class_weights of the wrong length, or logits whose channel count differs from
        ``num_classes`` (when the loss is traced).
      tf.errors.InvalidArgumentError: a label outside ``[0, C)`` that is not ``ignore_label``.

    Example:
      >>> loss = SegmentationCrossEntropy(num_classes=11, class_weights=weights)
      >>> model.compile(optimizer="adam", loss=loss)
    """

    def __init__(
        self,
        num_classes: int | None = None,
        ignore_label: int | None = IGNORE_LABEL,
        class_weights: Sequence[float] | None = None,
        from_logits: bool = True,
        label_smoothing: float = 0.0,
        reduction=keras.losses.Reduction.AUTO,
        name: str = "segmentation_cross_entropy",
    ):
        super().__init__(reduction=reduction, name=name)
        owner = type(self).__name__
        self.num_classes = _check_num_classes(num_classes, owner)
        self.class_weights, inferred = _check_class_weights(class_weights, self.num_classes, owner)
        if self.num_classes is None:
            self.num_classes = inferred
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.from_logits = bool(from_logits)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ConfigError(f"{owner}: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        owner = type(self).__name__
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank is not None and y_pred.shape.rank != 4:
            raise ConfigError(f"{owner}: y_pred must be (B, H, W, C), got shape {y_pred.shape}")
        _check_channels(y_pred, self.num_classes, owner)
        # Mixed precision: do the softmax in float32, float16 logsumexp loses too much.
        y_pred = tf.cast(y_pred, tf.float32)
        num_classes = self.num_classes if self.num_classes is not None else tf.shape(y_pred)[-1]
        labels = _labels_like(y_true, y_pred, owner)
        labels, valid = _valid_labels(labels, num_classes, self.ignore_label, owner)

        if self.from_logits:
            logits = y_pred
        else:
            # softmax(log p) == p / sum(p), so probabilities go through the same stable op.
            logits = tf.math.log(tf.clip_by_value(y_pred, keras.backend.epsilon(), 1.0))
        ce = sparse_cross_entropy(labels, logits)
        if self.label_smoothing > 0.0:
            # CE against (1-eps)*onehot + eps/C = (1-eps)*ce + eps*mean_c(-log_softmax_c).
            uniform = tf.reduce_logsumexp(logits, axis=-1) - tf.reduce_mean(logits, axis=-1)
            ce = (1.0 - self.label_smoothing) * ce + self.label_smoothing * uniform

        weights = tf.cast(valid, tf.float32)
        if self.class_weights is not None:
            weights *= tf.gather(tf.constant(self.class_weights, tf.float32), labels)
        total = tf.reduce_sum(weights * ce, axis=[1, 2])
        norm = tf.reduce_sum(weights, axis=[1, 2])
        # divide_no_nan: a fully ignored sample gives 0 and a zero gradient, not NaN.
        return tf.math.divide_no_nan(total, norm)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
            class_weights=self.class_weights,
            from_logits=self.from_logits,
            label_smoothing=self.label_smoothing,
        )
        return config


@keras.utils.register_keras_serializable(package="tfseg")
class DiceLoss(keras.losses.Loss):
    """Soft multi-class Dice loss, ``1 - mean_c dice_c``, computed per sample, ignore-aware.

    For each sample and class c, with softmax probabilities p, one-hot targets t and the valid
    (non-ignored) pixels V::

        dice_c = (2 * sum_V p_c t_c + smooth) / (sum_V p_c + sum_V t_c + smooth)

    Ignored pixels are excluded from the intersection and from both sums.

    Every class counts in the mean, including classes absent from the sample's target. This is
    the usual choice (e.g. segmentation_models, MONAI with smoothing): for an absent class
    ``dice_c = smooth / (sum_V p_c + smooth)``, which is ~1 when the class is not predicted and
    drops as the network predicts it, so false positives of absent classes are penalised, and the
    loss is always a mean over the same C terms (comparable between samples). Dropping absent
    classes would leave those false positives without any gradient. A sample whose pixels are all
    ignored has dice 1 for every class, so its loss is 0 (also with ``smooth=0``).

    Args:
      num_classes: number of classes C (the logits must have C channels).
      ignore_label: label value excluded from the loss (``None``: no label is ignored).
      smooth: additive smoothing (>= 0) in numerator and denominator.
      from_logits: ``True`` for logits (softmax applied here), ``False`` for probabilities.
      reduction: a ``keras.losses.Reduction``; use ``NONE`` under distribution strategies.
      name: loss name.

    Returns:
      Calling the loss returns the reduced loss (``(B,)`` values with ``Reduction.NONE``).

    Raises:
      ConfigError: logits whose channel count differs from ``num_classes``.
      tf.errors.InvalidArgumentError: a label outside ``[0, C)`` that is not ``ignore_label``.

    Example:
      >>> model.compile(optimizer="adam", loss=DiceLoss(num_classes=11))
    """

    def __init__(
        self,
        num_classes: int,
        ignore_label: int | None = IGNORE_LABEL,
        smooth: float = 1.0,
        from_logits: bool = True,
        reduction=keras.losses.Reduction.AUTO,
        name: str = "dice_loss",
    ):
        super().__init__(reduction=reduction, name=name)
        owner = type(self).__name__
        if num_classes is None:
            raise ConfigError(f"{owner}: num_classes is required")
        self.num_classes = _check_num_classes(num_classes, owner)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        if not float(smooth) >= 0.0:
            raise ConfigError(f"{owner}: smooth must be >= 0, got {smooth}")
        self.smooth = float(smooth)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        owner = type(self).__name__
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank is not None and y_pred.shape.rank != 4:
            raise ConfigError(f"{owner}: y_pred must be (B, H, W, C), got shape {y_pred.shape}")
        _check_channels(y_pred, self.num_classes, owner)
        y_pred = tf.cast(y_pred, tf.float32)
        labels = _labels_like(y_true, y_pred, owner)
        labels, valid = _valid_labels(labels, self.num_classes, self.ignore_label, owner)

        probs = tf.nn.softmax(y_pred, axis=-1) if self.from_logits else y_pred
        valid = tf.cast(valid, tf.float32)[..., tf.newaxis]
        target = tf.one_hot(labels, self.num_classes, dtype=tf.float32) * valid
        probs = probs * valid
        intersection = tf.reduce_sum(probs * target, axis=[1, 2])  # (B, C)
        denominator = tf.reduce_sum(probs, axis=[1, 2]) + tf.reduce_sum(target, axis=[1, 2])
        numerator = 2.0 * intersection + self.smooth
        denominator = denominator + self.smooth
        # Only reachable with smooth == 0: nothing predicted nor present is perfect agreement.
        dice = tf.where(denominator > 0, numerator / tf.maximum(denominator, 1e-12), 1.0)
        return 1.0 - tf.reduce_mean(dice, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
            smooth=self.smooth,
            from_logits=self.from_logits,
        )
        return config


@keras.utils.register_keras_serializable(package="tfseg")
class CEDiceLoss(keras.losses.Loss):
    """``ce_weight * SegmentationCrossEntropy + dice_weight * DiceLoss``, per sample.

    The class weights apply to the cross-entropy term only; Dice is already insensitive to
    class frequency.

    Args:
      num_classes: number of classes C.
      ignore_label: label value excluded from both terms.
      class_weights: optional C weights for the cross-entropy term.
      ce_weight: factor of the cross-entropy term.
      dice_weight: factor of the Dice term.
      smooth: Dice smoothing.
      from_logits: ``True`` for logits, ``False`` for probabilities.
      reduction: a ``keras.losses.Reduction``; use ``NONE`` under distribution strategies.
      name: loss name.

    Returns:
      Calling the loss returns the reduced loss (``(B,)`` values with ``Reduction.NONE``).

    Raises:
      ConfigError: as for the two component losses.

    Example:
      >>> model.compile(optimizer="adam", loss=CEDiceLoss(11, class_weights=weights, dice_weight=0.5))
    """

    def __init__(
        self,
        num_classes: int,
        ignore_label: int | None = IGNORE_LABEL,
        class_weights: Sequence[float] | None = None,
        ce_weight: float = 1.0,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        from_logits: bool = True,
        reduction=keras.losses.Reduction.AUTO,
        name: str = "ce_dice_loss",
    ):
        super().__init__(reduction=reduction, name=name)
        # The components are used through their ``call`` only (per-sample values); the
        # reduction happens once, here.
        self.cross_entropy = SegmentationCrossEntropy(
            num_classes=num_classes,
            ignore_label=ignore_label,
            class_weights=class_weights,
            from_logits=from_logits,
            reduction=keras.losses.Reduction.NONE,
        )
        self.dice = DiceLoss(
            num_classes=num_classes,
            ignore_label=ignore_label,
            smooth=smooth,
            from_logits=from_logits,
            reduction=keras.losses.Reduction.NONE,
        )
        self.ce_weight = float(ce_weight)
        self.dice_weight = float(dice_weight)

    def call(self, y_true, y_pred):
        return self.ce_weight * self.cross_entropy.call(y_true, y_pred) + self.dice_weight * self.dice.call(
            y_true, y_pred
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.dice.num_classes,
            ignore_label=self.dice.ignore_label,
            class_weights=self.cross_entropy.class_weights,
            ce_weight=self.ce_weight,
            dice_weight=self.dice_weight,
            smooth=self.dice.smooth,
            from_logits=self.dice.from_logits,
        )
        return config


@keras.utils.register_keras_serializable(package="tfseg")
class LogitOffsetLoss(keras.losses.Loss):
    """Scores ``logits - logit_offset`` with another segmentation loss.

    For fine-tuning a model whose classifier bias carries a folded logit adjustment
    (:func:`tfseg.pipeline.calibrate.calibrate_run`): the loss it was trained with has its optimum at the
    unadjusted logits, so fine-tuning with that loss alone slowly trains the adjustment away.
    Scoring the logits minus the folded offset keeps the fine-tuned model adjusted.

    Args:
      loss: the wrapped ``keras.losses.Loss`` (e.g. :class:`SegmentationCrossEntropy`); only its
        per-sample ``call`` is used, the reduction happens here.
      logit_offset: C numbers, the bias folded into the classifier.
      reduction, name: as for any Keras loss (default name: the wrapped loss's).

    Raises:
      ConfigError: a non-finite offset, or logits whose channel count differs from it.
    """

    def __init__(self, loss, logit_offset: Sequence[float], reduction=keras.losses.Reduction.AUTO, name=None):
        if isinstance(loss, dict):  # from get_config
            loss = keras.losses.deserialize(loss)
        if not isinstance(loss, keras.losses.Loss):
            raise ConfigError(f"LogitOffsetLoss wraps a keras.losses.Loss, got {type(loss).__name__}")
        super().__init__(reduction=reduction, name=name or loss.name)
        self.loss, self.logit_offset = loss, _check_logit_offset(logit_offset, "LogitOffsetLoss")

    def call(self, y_true, y_pred):
        y_pred = tf.cast(tf.convert_to_tensor(y_pred), tf.float32)
        _check_channels(y_pred, len(self.logit_offset), type(self).__name__)
        return self.loss.call(y_true, y_pred - tf.constant(self.logit_offset, tf.float32))

    def get_config(self):
        config = super().get_config()
        config.update(loss=keras.losses.serialize(self.loss), logit_offset=self.logit_offset)
        return config


# --------------------------------------------------------------------------------------------
# Class statistics and median-frequency balancing
# --------------------------------------------------------------------------------------------


class PixelCounts(NamedTuple):
    """Per-class pixel statistics of a set of masks (see :func:`class_pixel_counts`).

    Attributes:
      class_pixels: ``(C,)`` int64, pixels labelled c.
      image_pixels: ``(C,)`` int64, total pixels (all of them, ignored ones included) of the
        images in which class c appears at least once.
      ignored_pixels: pixels equal to the ignore label.
      num_images: number of masks seen.
      total_pixels: pixels of all masks.
    """

    class_pixels: np.ndarray
    image_pixels: np.ndarray
    ignored_pixels: int
    num_images: int
    total_pixels: int


def _iter_masks(masks) -> Iterable[np.ndarray]:
    """Yield single (H, W) masks from an iterable / dataset of masks or (image, mask) pairs."""
    if isinstance(masks, np.ndarray):
        masks = [masks] if masks.ndim == 2 or (masks.ndim == 3 and masks.shape[-1] == 1) else masks
    elif isinstance(masks, tf.data.Dataset):
        masks = masks.as_numpy_iterator()
    for element in masks:
        if isinstance(element, dict):
            if "mask" not in element:
                raise DataError(f"dataset element has keys {sorted(element)}, expected a 'mask' key")
            element = element["mask"]
        elif isinstance(element, (tuple, list)):
            # (image, mask) or (image, mask, sample_weight): the mask is the second item.
            if len(element) < 2:
                raise DataError(f"expected a mask or an (image, mask) pair, got a {len(element)}-tuple")
            element = element[1]
        mask = np.asarray(element)
        if mask.ndim >= 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.ndim == 2:
            yield mask
        elif mask.ndim == 3:  # a batch (B, H, W): frequencies are per image, so split it
            yield from mask
        else:
            raise DataError(f"masks must be (H, W), (H, W, 1), (B, H, W) or (B, H, W, 1); got shape {mask.shape}")


def class_pixel_counts(masks, num_classes: int, ignore_label: int | None = IGNORE_LABEL) -> PixelCounts:
    """Count pixels per class, and the pixels of the images in which each class appears.

    Args:
      masks: an iterable of integer masks (``(H, W)``, ``(H, W, 1)`` or batches of them), an
        ``(N, H, W)`` array, or a ``tf.data.Dataset`` of masks, of ``(image, mask)`` pairs or of
        ``{"mask": ...}`` dicts, batched or not. Masks must already use ``ignore_label`` for void.
      num_classes: number of classes C.
      ignore_label: label value that is not counted as a class.

    Returns:
      A :class:`PixelCounts`.

    Raises:
      DataError: a mask with an unexpected shape, or a label outside ``[0, C)`` that is not the
        ignore label (the message names the label and the mask's position).

    Example:
      >>> counts = class_pixel_counts(train_ds, num_classes=11)
      >>> counts.class_pixels / counts.class_pixels.sum()
    """
    num_classes = _check_num_classes(num_classes, "class_pixel_counts")
    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    ignored = total = num_images = 0
    for index, mask in enumerate(_iter_masks(masks)):
        values = mask.astype(np.int64, copy=False).ravel()
        size = values.size
        if ignore_label is not None:
            is_ignored = values == ignore_label
            ignored += int(is_ignored.sum())
            # An ignore label inside [0, C) simply means that class is never counted.
            values = values[~is_ignored]
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            bad = np.unique(values[(values < 0) | (values >= num_classes)])
            raise DataError(
                f"mask #{index}: labels {bad[:10].tolist()} are outside [0, {num_classes}) and not the "
                f"ignore label {ignore_label}"
            )
        per_class = np.bincount(values, minlength=num_classes)
        class_pixels += per_class
        # SegNet's definition: the denominator is every pixel of the image, void included.
        image_pixels[per_class > 0] += size
        total += size
        num_images += 1
    return PixelCounts(class_pixels, image_pixels, ignored, num_images, total)


def median_frequency_weights(masks, num_classes: int, ignore_label: int | None = IGNORE_LABEL) -> np.ndarray:
    """Class weights by median-frequency balancing (Eigen & Fergus 2015, used by SegNet).

    ``weight_c = median(freq) / freq_c`` with ``freq_c`` = (pixels of class c) / (total pixels of
    the images in which c appears), the total counting every pixel of those images, ignored ones
    included (as SegNet computed it; this reproduces the CamVid weights in its dataset README).
    The median is taken over the classes that appear. A class that never appears gets weight 0
    (it has no pixel to weight) and a warning.

    Args:
      masks: as for :func:`class_pixel_counts`.
      num_classes: number of classes C.
      ignore_label: label value that is not a class.

    Returns:
      ``(C,)`` float64 weights, frequent classes < 1 < rare classes.

    Raises:
      DataError: as for :func:`class_pixel_counts`, or when no mask has any labelled pixel.

    Example:
      >>> w = median_frequency_weights(train_ds, num_classes=11)
      >>> loss = SegmentationCrossEntropy(num_classes=11, class_weights=w)
    """
    counts = class_pixel_counts(masks, num_classes, ignore_label)
    present = counts.class_pixels > 0
    if not present.any():
        raise DataError(f"median_frequency_weights: no labelled pixel in {counts.num_images} masks")
    freq = np.zeros(num_classes, np.float64)
    freq[present] = counts.class_pixels[present] / counts.image_pixels[present]
    weights = np.zeros(num_classes, np.float64)
    weights[present] = np.median(freq[present]) / freq[present]
    if not present.all():
        warnings.warn(
            f"median_frequency_weights: classes {np.flatnonzero(~present).tolist()} never appear in "
            f"{counts.num_images} masks; their weight is 0",
            stacklevel=2,
        )
    return weights
