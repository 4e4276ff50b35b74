"""Pixel-wise knowledge distillation: Hinton's soft-target loss applied at every pixel."""

from __future__ import annotations

from typing import Sequence

from tfseg._keras import keras, tf
from tfseg.data.info import IGNORE_LABEL
from tfseg.distill.losses.base import (
    DistillationLoss,
    check_fraction,
    check_positive,
    labels_like,
    per_sample,
    soft_target_kl,
)
from tfseg.errors import ConfigError
from tfseg.losses import _check_class_weights, _check_logit_offset, _valid_labels, sparse_cross_entropy

__all__ = ["PixelKD"]


@keras.utils.register_keras_serializable(package="tfseg")
class PixelKD(DistillationLoss):
    """Soft-target distillation at every valid pixel, plus the ground-truth cross-entropy.

    Reference: G. Hinton, O. Vinyals, J. Dean, "Distilling the Knowledge in a Neural Network",
    NIPS Deep Learning Workshop 2015 (arXiv:1503.02531). Soft targets are ``softmax(z / T)``; the
    soft term is multiplied by ``T^2`` because its gradients scale as ``1 / T^2`` (section 2 of the
    paper), which keeps the balance between the two terms when T changes. Applied per pixel, as in
    the pixel-wise distillation of Liu et al. (CVPR 2019). The paper's FCN-style experiment used
    ``T = 20, alpha = 0.9``; the defaults here (4, 0.5) are a milder, common choice.

    For one sample with valid (non-ignored) positions V, teacher logits t, student logits s and
    labels y::

        kd   = mean_{i in V} T^2 * KL( softmax(t_i / T) || softmax(s_i / T) )
             = mean_{i in V} T^2 * sum_c p_ic (log p_ic - log q_ic),
               p = softmax(t / T), q = softmax(s / T)
        ce   = sum_{i in V} w[y_i] * (-log softmax(s_i - o)[y_i]) / sum_{i in V} w[y_i]
        loss = alpha * kd + (1 - alpha) * ce

    ``o`` is ``logit_offset`` (0 without it). Without ``class_weights`` every ``w`` is 1 and ``ce``
    is the plain mean over V (the house :class:`tfseg.losses.SegmentationCrossEntropy`, at T = 1).
    A sample without valid pixel gives 0.
    For ``(N, C)`` classification logits every row is a sample: its ``kd`` is its own term and its
    ``ce`` is ``w[y] * ce`` (a ratio over one pixel would cancel the class weight).

    Because the loss contains the ground-truth term, :meth:`default_student_loss_weight` is 0: the
    Distiller's separate cross-entropy defaults to weight 0.

    Args:
      temperature: T > 0, the softmax temperature of the soft term.
      alpha: weight in [0, 1] of the soft term; ``1 - alpha`` weighs the cross-entropy. With
        ``alpha = 1`` no labels are needed (``labels=None`` then counts every pixel as valid).
      class_weights: optional C non-negative weights for the cross-entropy term.
      logit_offset: optional C numbers subtracted from the student's logits in the cross-entropy
        term only: the logit adjustment folded into a calibrated student's classifier
        (``tfseg.calibrate.folded_logit_offset``), which the ground truth would otherwise train
        away, as :class:`tfseg.losses.LogitOffsetLoss` does for the plain loss. The soft term
        compares the logits as they are, since a calibrated teacher carries its offset too.
      weight, teacher_endpoint, student_endpoint, ignore_label, name: see
        :class:`DistillationLoss` (defaults: 1.0, "logits", "logits", 255, "pixel_kd").

    Returns:
      Calling the loss returns float32 ``(B,)`` (or ``(N,)``) per-sample values, unweighted.

    Raises:
      ConfigError (a ValueError): ``temperature <= 0``, ``alpha`` outside [0, 1], bad class
        weights; when called: mismatched shapes, class weights whose length differs from C, or
        ``labels=None`` with ``alpha < 1``.
      tf.errors.InvalidArgumentError: a label outside ``[0, C)`` that is not ``ignore_label``.

    Example:
      >>> kd = PixelKD(temperature=4.0, alpha=0.9)
      >>> per_sample = kd(teacher_logits, student_logits, labels)   # (B,)
    """

    default_name = "pixel_kd"
    default_teacher_endpoint = "logits"
    default_student_endpoint = "logits"

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.5,
        class_weights: Sequence[float] | None = None,
        logit_offset: Sequence[float] | None = None,
        weight: float = 1.0,
        teacher_endpoint: str | None = None,
        student_endpoint: str | None = None,
        ignore_label: int | None = IGNORE_LABEL,
        name: str | None = None,
    ):
        super().__init__(weight, teacher_endpoint, student_endpoint, ignore_label, name)
        owner = type(self).__name__
        self.temperature = check_positive(temperature, "temperature", owner)
        self.alpha = check_fraction(alpha, "alpha", owner)
        self.class_weights, _ = _check_class_weights(class_weights, None, owner)
        self.logit_offset = None if logit_offset is None else _check_logit_offset(logit_offset, owner)

    def validate(self, teacher, student):
        """Any pair the Distiller accepts: a classifier's ``(N, C)`` logits are one pixel per sample."""

    def validate_tensors(self, teacher, student):
        self._check_shapes(teacher, student, ranks=(2, 4))

    def default_student_loss_weight(self) -> float:
        return 0.0  # the (1 - alpha) cross-entropy term is the ground-truth loss

    def compute(self, teacher, student, labels):
        owner = type(self).__name__
        t = self.temperature
        kl = soft_target_kl(teacher, student, t, axis=-1) * (t * t)

        if labels is None:
            if self.alpha < 1.0:
                self._require_labels(labels, f"alpha={self.alpha} < 1 includes the cross-entropy term")
            return per_sample(kl, tf.ones_like(kl, dtype=tf.bool))

        num_classes = tf.shape(student)[-1]
        for what, values in (("class_weights", self.class_weights), ("logit_offset", self.logit_offset)):
            if values is not None and student.shape[-1] is not None and len(values) != student.shape[-1]:
                raise ConfigError(f"{owner}: {len(values)} {what} but the logits have {student.shape[-1]} channels")
        y = labels_like(labels, student)
        y, valid = _valid_labels(y, num_classes, self.ignore_label, owner)
        kd = per_sample(kl, valid)
        if self.alpha == 1.0:
            return kd

        if self.logit_offset is not None:
            student = student - tf.constant(self.logit_offset, tf.float32)
        ce = sparse_cross_entropy(y, student)
        w = tf.cast(valid, tf.float32)
        if self.class_weights is not None:
            w *= tf.gather(tf.constant(self.class_weights, tf.float32), y)
        if ce.shape.rank == 1:
            # One position per sample: the class weight multiplies its CE (a ratio would cancel it).
            ce_sample = tf.where(valid, w * ce, tf.zeros_like(ce))
        else:
            ce_sample = tf.math.divide_no_nan(
                tf.reduce_sum(tf.where(valid, w * ce, tf.zeros_like(ce)), axis=[1, 2]),
                tf.reduce_sum(w, axis=[1, 2]),
            )
        return self.alpha * kd + (1.0 - self.alpha) * ce_sample

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(temperature=self.temperature, alpha=self.alpha, class_weights=self.class_weights,
                      logit_offset=self.logit_offset)
        return config
