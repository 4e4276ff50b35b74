"""Adaptive cross entropy (ACE) of Park & Heo (Sensors 2020)."""

from __future__ import annotations

from tfseg._keras import keras, tf
from tfseg.distill.losses.base import DistillationLoss, labels_like, per_sample
from tfseg.losses import _valid_labels

__all__ = ["AdaptiveCrossEntropy", "adaptive_target"]


def adaptive_target(teacher_logits, labels, num_classes):
    """The ACE target: the teacher's probabilities where its prediction is right, else the one-hot.

    Args:
      teacher_logits: ``(..., C)`` float32.
      labels: ``(...)`` int32 class ids in ``[0, C)`` (ignored positions already replaced).
      num_classes: C (int or scalar tensor).

    Returns:
      ``(..., C)`` float32 target distributions.
    """
    teacher_probs = tf.nn.softmax(teacher_logits, axis=-1)
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    correct = tf.equal(tf.argmax(teacher_logits, axis=-1, output_type=tf.int32), labels)
    return tf.where(correct[..., tf.newaxis], teacher_probs, one_hot)


@keras.utils.register_keras_serializable(package="tfseg")
class AdaptiveCrossEntropy(DistillationLoss):
    """Adaptive cross entropy: learn from the teacher where it is right, from the labels elsewhere.

    Reference: S. Park, Y. S. Heo, "Knowledge Distillation for Semantic Segmentation Using Channel
    and Spatial Correlations and Adaptive Cross Entropy", Sensors 20(16):4616, 2020
    (doi:10.3390/s20164616); the same authors' patent KR 10-2225579 covers this loss. The abstract
    states the problem (a teacher's wrong pixels transfer false knowledge) and the remedy (the
    loss "adaptively exploits one-hot encodings using the ground truth labels and the probability
    maps predicted by the teacher network").

    Implemented, for one sample with valid positions V, teacher logits t, student logits s,
    labels y::

        p_i      = softmax(t_i)                                      (teacher probability map)
        target_i = p_i            if argmax_c p_ic == y_i            (the teacher is right)
                 = onehot(y_i)    otherwise                          (do not learn its mistake)
        loss     = mean_{i in V}  - sum_c target_ic * log softmax(s_i)_c

    A sample without valid position gives 0; for ``(N, C)`` logits each row is a sample.

    Ambiguities and choices (the paper's body could not be consulted while writing this; check
    this rule against its equation before publishing numbers):

    * No temperature and no confidence threshold: the rule above uses the plain softmax (T = 1),
      as in the pixel-wise distillation of Liu et al. (CVPR 2019) that the paper builds on, and
      the teacher's argmax as its prediction.
    * ACE takes the place of the plain cross-entropy (it is a cross-entropy with the ground truth
      wherever the teacher is wrong), so :meth:`default_student_loss_weight` is 0: the Distiller's
      separate cross-entropy defaults to weight 0.
    * Ignored positions have no ground truth to check the teacher against: they are left out.

    Args:
      weight, teacher_endpoint, student_endpoint, ignore_label, name: see
        :class:`DistillationLoss` (defaults: 1.0, "logits", "logits", 255, "ace").

    Returns:
      Calling the loss returns float32 ``(B,)`` (or ``(N,)``) per-sample values, unweighted.

    Raises:
      ConfigError (a ValueError): when called, mismatched shapes or ``labels=None``.
      tf.errors.InvalidArgumentError: a label outside ``[0, C)`` that is not ``ignore_label``.

    Example:
      >>> ace = AdaptiveCrossEntropy()
      >>> per_sample = ace(teacher_logits, student_logits, labels)   # (B,)
    """

    default_name = "ace"
    default_teacher_endpoint = "logits"
    default_student_endpoint = "logits"

    def validate(self, teacher, student):
        """Any pair the Distiller accepts: a classifier's ``(N, C)`` logits are one position per sample."""

    def validate_tensors(self, teacher, student):
        self._check_shapes(teacher, student, ranks=(2, 4))

    def default_student_loss_weight(self) -> float:
        return 0.0  # ACE is the cross-entropy with the labels wherever the teacher is wrong

    def compute(self, teacher, student, labels):
        owner = type(self).__name__
        self._require_labels(labels, "the target is chosen by comparing the teacher with the ground truth")
        num_classes = tf.shape(student)[-1]
        y = labels_like(labels, student)
        y, valid = _valid_labels(y, num_classes, self.ignore_label, owner)
        target = adaptive_target(teacher, y, num_classes)
        ce = -tf.reduce_sum(target * tf.nn.log_softmax(student, axis=-1), axis=-1)
        return per_sample(ce, valid)
