"""Channel and spatial correlation (CSC) distillation of Park & Heo (Sensors 2020)."""

from __future__ import annotations

import math

from tfseg._keras import keras, tf
from tfseg.data.info import IGNORE_LABEL
from tfseg.distill.losses.base import (
    DistillationLoss,
    check_pool_size,
    pair_mean_squared,
    pool_patches,
    pool_valid,
    valid_mask,
)
from tfseg.errors import ConfigError

__all__ = ["CSCLoss", "channel_spatial_association", "auto_pool_size"]


def auto_pool_size(height, width, max_positions: int):
    """Smallest patch side k with ``ceil(H / k) * ceil(W / k) <= max_positions``.

    Python ints in, a Python int out; scalar tensors (sizes unknown while tracing) in, an int32
    tensor out.
    """
    if isinstance(height, int) and isinstance(width, int):
        k = 1
        while math.ceil(height / k) * math.ceil(width / k) > max_positions:
            k += 1
        return k

    def too_many(k):
        return ((height + k - 1) // k) * ((width + k - 1) // k) > max_positions

    return tf.while_loop(too_many, lambda k: [k + 1], [tf.constant(1, tf.int32)])[0]


def channel_spatial_association(features, eps: float = 1e-12):
    """Channel-and-spatial association matrix ``(B, N, N)`` of ``(B, H, W, C)`` features, N = HW.

    Each position's C-vector is L2-normalised (``f / max(||f||, eps)``). The paper's construction
    (element-wise products of the vector with its C circular shifts, stacked into a ``C^2 x N``
    channel-association matrix M, then ``M^T M``) gives, entry by entry,
    ``sum_s sum_k f_pk f_p(k+s) f_qk f_q(k+s) = (f_p . f_q)^2``; that identity is computed here,
    so the ``C^2 x N`` matrix is never built (``O(N^2 C)`` instead of ``O(N^2 C^2)``). The tests
    check it against the literal circular-shift construction.
    """
    unit = tf.math.l2_normalize(features, axis=-1, epsilon=eps * eps)
    shape = tf.shape(unit)
    flat = tf.reshape(unit, [shape[0], shape[1] * shape[2], shape[3]])
    return tf.square(tf.matmul(flat, flat, transpose_b=True))


@keras.utils.register_keras_serializable(package="tfseg")
class CSCLoss(DistillationLoss):
    """Channel and spatial correlation (CSC) loss of Park & Heo.

    Reference: S. Park, Y. S. Heo, "Knowledge Distillation for Semantic Segmentation Using Channel
    and Spatial Correlations and Adaptive Cross Entropy", Sensors 20(16):4616, 2020
    (doi:10.3390/s20164616), and the authors' patent on the same method, US 11,756,202 B2 /
    KR 10-2191351 ("Method for semantic segmentation based on knowledge distillation"), claim 1.

    What the sources say (claim 1 of the patent, the abstract of the paper): the feature vector of
    every pixel of the last layer's map is L2-normalised; for the C channels ("the number of
    labels is C"), channel-association vectors are formed from the normalised vector and its
    circular shifts; they are concatenated and rearranged into a channel-association matrix; a
    channel-and-space association matrix is built from it for teacher and student; the loss is a
    Euclidean norm of the difference of the two matrices. Implemented, for one sample with
    positions p, q (after optional pooling) and valid positions V::

        f^_p      = f_p / ||f_p||                                    (per-position L2 norm)
        v_s(p)    = f^_p (.) roll(f^_p, s),  s = 0 .. C-1             (C channel-association vectors)
        M         = [vec_s v_s(p)]_p  in R^{C^2 x N}                  (channel-association matrix)
        S         = M^T M  in R^{N x N},  S_pq = (f^_p . f^_q)^2      (channel-and-space association)
        loss      = sum_{p, q in V} (S^s_pq - S^t_pq)^2 / |V|^2

    Ambiguities and choices (the paper's body could not be consulted while writing this, only its
    abstract and the patent claim; check against the paper's equations before publishing numbers):

    * The loss is the *squared* Frobenius norm divided by the number of pairs, the normalisation
      of the pair-wise loss of Liu et al. (CVPR 2019) that CSC extends; the claim only says "based
      on a Euclidean norm value of the difference".
    * All C shifts, including the zero shift, are used ("with respect to the C labels"). With all
      of them, ``S`` is exactly the square of the cosine-affinity matrix, computed that way here.
    * S is ``N x N`` over positions, so the channel counts of teacher and student need not match
      and the student gets no adapter (as for :class:`PairwiseKD`).
    * Ignored positions are excluded from the pairs (a position is valid when at least half of the
      pixels of its patch are valid); a sample without valid position gives 0.
    * The sources apply CSC to the last layer's map, whose channels are the C classes, so the
      default endpoints are the logits. tfseg models output logits at input resolution: see the
      memory note.

    Memory: S is ``N x N`` per sample for teacher and student (float32), N = H'W'. A 288 x 384
    crop at full resolution has N = 110,592, i.e. 49 GB per matrix: impossible. ``pool_size``
    average-pools ``k x k`` patches first (ceil mode). The default ``pool_size=None`` picks the
    smallest k with ``N <= max_positions`` (2304 by default: ~21 MB per matrix and sample): for
    288 x 384 logits that is k = 8, i.e. 36 x 48 positions, the stride-8 map that segmentation
    heads produce before upsampling; for a stride-8 or stride-16 feature endpoint it is k = 1.
    (For maps whose size is unknown while tracing, k is chosen in the graph.)

    Args:
      pool_size: patch side (integer >= 1), or None for the automatic choice above.
      max_positions: the N the automatic choice stays under (integer >= 1).
      weight, teacher_endpoint, student_endpoint, ignore_label, name: see
        :class:`DistillationLoss` (defaults: 1.0, "logits", "logits", 255, "csc").

    Returns:
      Calling the loss returns float32 ``(B,)`` per-sample values, unweighted.

    Raises:
      ConfigError (a ValueError): ``pool_size < 1`` or not an integer, ``max_positions < 1``;
        when called, maps that are not ``(B, H, W, C)`` or whose batch/spatial sizes differ.

    Example:
      >>> csc = CSCLoss()                      # logits, pooled to <= 2304 positions
      >>> per_sample = csc(teacher_logits, student_logits, labels)   # (B,)
    """

    default_name = "csc"
    default_teacher_endpoint = "logits"
    default_student_endpoint = "logits"

    def __init__(
        self,
        pool_size: int | None = None,
        max_positions: int = 2304,
        weight: float = 1.0,
        teacher_endpoint: str | None = None,
        student_endpoint: str | None = None,
        ignore_label: int | None = IGNORE_LABEL,
        name: str | None = None,
    ):
        super().__init__(weight, teacher_endpoint, student_endpoint, ignore_label, name)
        owner = type(self).__name__
        self.pool_size = check_pool_size(pool_size, owner, allow_none=True)
        if isinstance(max_positions, bool) or int(max_positions) != max_positions or max_positions < 1:
            raise ConfigError(f"{owner}: max_positions must be an integer >= 1, got {max_positions!r}")
        self.max_positions = int(max_positions)

    def validate_tensors(self, teacher, student):
        self._check_shapes(teacher, student, channels=False)  # S is position x position

    def adapter(self, teacher_channels, student_channels, name):
        return None  # S is position x position: any channel counts

    def patch_size_for(self, teacher):
        """The pooling patch side used for a map shaped like ``teacher``.

        A Python int, or an int32 tensor when ``pool_size=None`` and the spatial size is unknown
        while tracing.
        """
        if self.pool_size is not None:
            return self.pool_size
        height, width = teacher.shape[1], teacher.shape[2]
        if height is None or width is None:
            shape = tf.shape(teacher)
            height, width = shape[1], shape[2]
        return auto_pool_size(height, width, self.max_positions)

    def compute(self, teacher, student, labels):
        k = self.patch_size_for(teacher)
        valid = pool_valid(valid_mask(labels, teacher, self.ignore_label), k)
        s_t = channel_spatial_association(pool_patches(teacher, k))
        s_s = channel_spatial_association(pool_patches(student, k))
        flat_valid = tf.reshape(valid, [tf.shape(valid)[0], -1])
        return pair_mean_squared(s_t, s_s, flat_valid)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(pool_size=self.pool_size, max_positions=self.max_positions)
        return config
