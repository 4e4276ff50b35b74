"""Pair-wise (structured) distillation: match the pixel-affinity graphs of teacher and student."""

from __future__ import annotations

from tfseg._keras import keras, tf
from tfseg.data.info import IGNORE_LABEL
from tfseg.distill import taps
from tfseg.distill.losses.base import (
    DistillationLoss,
    check_pool_size,
    pair_mean_squared,
    pool_patches,
    pool_valid,
    valid_mask,
)
from tfseg.errors import ConfigError

__all__ = ["PairwiseKD", "cosine_affinity"]

_POOL_MODES = ("avg", "max")


def cosine_affinity(features, eps: float = 1e-8, detach_norm: bool = True):
    """Cosine-similarity matrix of the positions of ``(B, H, W, C)`` features -> ``(B, HW, HW)``.

    ``a_ij = f_i . f_j / ((||f_i|| + eps) (||f_j|| + eps))``. As in the authors' code
    (irfanICMLL/structure_knowledge_distillation, ``utils/utils.py``) the norm gets ``eps`` added
    and, with ``detach_norm``, no gradient: the student is pushed through the numerators only.
    """
    norm = tf.norm(features, axis=-1, keepdims=True) + eps
    if detach_norm:
        norm = tf.stop_gradient(norm)
    unit = features / norm
    shape = tf.shape(unit)
    flat = tf.reshape(unit, [shape[0], shape[1] * shape[2], shape[3]])
    return tf.matmul(flat, flat, transpose_b=True)


@keras.utils.register_keras_serializable(package="tfseg")
class PairwiseKD(DistillationLoss):
    """Pair-wise distillation of Liu et al.: squared difference of the two affinity graphs.

    Reference: Y. Liu, K. Chen, C. Liu, Z. Qin, Z. Luo, J. Wang, "Structured Knowledge
    Distillation for Semantic Segmentation", CVPR 2019, section 3.1 "pair-wise distillation"
    (each node is a ``beta x beta`` patch, affinity = cosine similarity of the node features,
    loss ``1 / (W' x H')^2 * sum_i sum_j (a^s_ij - a^t_ij)^2``), checked against the authors' code
    (irfanICMLL/structure_knowledge_distillation: ``CriterionPairWiseforWholeFeatAfterPool`` and
    ``sim_dis_compute``).

    For one sample: the maps are pooled into ``pool_size x pool_size`` patches (ceil mode: an
    edge patch averages its real pixels), each patch feature f_i is L2-normalised and::

        a_ij = f_i . f_j / ((||f_i|| + 1e-8) (||f_j|| + 1e-8))           (for teacher and student)
        loss = sum_{i, j in V} (a^s_ij - a^t_ij)^2 / |V|^2

    where V is the set of valid patches: a patch is valid when at least half of its pixels have a
    non-ignored label. Without labels, V is every patch and the loss is exactly the authors'
    ``1 / (W' H')^2`` normalisation. A sample without valid patch gives 0.

    Choices where paper and code differ or say nothing:

    * Pooling. The paper describes ``beta x beta`` patches; the released code max-pools with a
      kernel of ``scale`` times the map size (``--pool-scale 0.5``, i.e. 2 x 2 nodes for the whole
      map). Here ``pool_size`` is the patch side in pixels and ``pool_mode`` is ``"avg"`` (default,
      a patch's mean feature) or ``"max"`` (as in the code).
    * The norm in the normalisation gets no gradient (``detach()`` in the code); kept, so the
      student's gradient only flows through the dot products.
    * Signs. Post-ReLU student features have affinities >= 0; a teacher tap that can be negative
      (MobileNetV2's linear bottleneck ``features``: half of its affinities are negative on CamVid)
      asks for what the student cannot give, and chasing it drove a fastseg_tiny student's features
      towards zero (CamVid test mIoU 22.8 vs. 41.9 from scratch). :meth:`validate` refuses that
      pairing; tap ``decoder`` (after a ReLU in every zoo head) instead.
    * Ignored pixels: the paper does not mention them. Their features still enter the pooled
      patch (an image region is an image region); only the validity of the patch uses labels.

    The affinity is ``N x N`` over positions, so teacher and student may have different channel
    counts: the student gets no adapter. Cost: two ``(B, N, N)`` float32 matrices with
    ``N = ceil(H / pool_size) * ceil(W / pool_size)``; for a 36 x 48 map (288 x 384 crop at
    stride 8) and ``pool_size=2``, N = 432, under 1 MB per sample.

    Args:
      pool_size: patch side in pixels (integer >= 1).
      pool_mode: ``"avg"`` or ``"max"``.
      weight, teacher_endpoint, student_endpoint, ignore_label, name: see
        :class:`DistillationLoss` (defaults: 1.0, "features", "features", 255, "pairwise_kd";
        the authors' training script also weighs this term by 1, ``--lambda-pa 1.0``).

    Returns:
      Calling the loss returns float32 ``(B,)`` per-sample values, unweighted.

    Raises:
      ConfigError (a ValueError): ``pool_size < 1`` or not an integer, an unknown ``pool_mode``;
        in :meth:`validate`, classifiers or a never-negative student tap paired with a teacher tap
        that can be negative; when called, maps that are not ``(B, H, W, C)`` or whose
        batch/spatial sizes differ.

    Example:
      >>> pa = PairwiseKD(pool_size=2, teacher_endpoint="features", student_endpoint="features")
      >>> per_sample = pa(teacher_features, student_features, labels)   # (B,)
    """

    default_name = "pairwise_kd"
    default_teacher_endpoint = "features"
    default_student_endpoint = "features"

    def __init__(
        self,
        pool_size: int = 2,
        pool_mode: str = "avg",
        weight: float = 1.0,
        teacher_endpoint: str | None = None,
        student_endpoint: str | None = None,
        ignore_label: int | None = IGNORE_LABEL,
        name: str | None = None,
    ):
        super().__init__(weight, teacher_endpoint, student_endpoint, ignore_label, name)
        owner = type(self).__name__
        self.pool_size = check_pool_size(pool_size, owner)
        if pool_mode not in _POOL_MODES:
            raise ConfigError(f"{owner}: pool_mode must be one of {_POOL_MODES}, got {pool_mode!r}")
        self.pool_mode = pool_mode

    def validate(self, teacher, student):
        """Segmentation models (the default check), and taps whose signs the student can follow."""
        super().validate(teacher, student)
        if taps.is_non_negative(student, self.student_endpoint) and not taps.is_non_negative(teacher, self.teacher_endpoint):
            raise ConfigError(
                f"{type(self).__name__} {self.name!r}: {self.student_endpoint!r} of the student {student.name!r} is "
                f"never negative (after a ReLU) but {self.teacher_endpoint!r} of the teacher {teacher.name!r} can be, "
                "so the student cannot match the teacher's negative similarities and learns to switch its features "
                "off. Tap a teacher layer after a ReLU (e.g. teacher_endpoint='decoder') or a student layer before one"
            )

    def validate_tensors(self, teacher, student):
        self._check_shapes(teacher, student, channels=False)  # the affinity is position x position

    def adapter(self, teacher_channels, student_channels, name):
        return None  # the affinity is position x position: any channel counts

    def compute(self, teacher, student, labels):
        valid = pool_valid(valid_mask(labels, teacher, self.ignore_label), self.pool_size)
        teacher = pool_patches(teacher, self.pool_size, self.pool_mode)
        student = pool_patches(student, self.pool_size, self.pool_mode)
        a_t = cosine_affinity(teacher)
        a_s = cosine_affinity(student)
        flat_valid = tf.reshape(valid, [tf.shape(valid)[0], -1])
        return pair_mean_squared(a_t, a_s, flat_valid)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(pool_size=self.pool_size, pool_mode=self.pool_mode)
        return config
