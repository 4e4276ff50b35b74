"""The base class of the distillation losses and the helpers they share.

Conventions (the Distiller relies on them):

* ``teacher`` and ``student`` are tensors of the same spatial shape, channels last: ``(B, H, W, C)``
  maps for segmentation, ``(N, C)`` logits for classification (only for losses whose
  ``validate_tensors`` accepts them). The Distiller has already resized the student map to the
  teacher's size and passed it through the loss's ``adapter`` (if any).
* ``labels`` are integer labels at the *input image* resolution, ``(B, H0, W0)`` or
  ``(B, H0, W0, 1)`` (``(N,)`` for classification), possibly containing ``ignore_label``. Each loss
  resizes them (nearest neighbour) to its own map size to know which positions are valid.
* Calling a loss returns one float32 value per sample, shape ``(B,)``, *without* ``weight``: the
  Distiller multiplies the batch mean by ``weight``. A sample without any valid position gives 0.
* The teacher never gets a gradient: every loss wraps it in ``tf.stop_gradient``.
"""

from __future__ import annotations

import math

from tfseg._keras import keras, tf
from tfseg.data.info import IGNORE_LABEL
from tfseg.errors import ConfigError

__all__ = [
    "DistillationLoss",
    "resize_labels_nearest",
    "valid_mask",
    "pool_patches",
    "pool_valid",
    "check_positive",
    "check_fraction",
    "check_pool_size",
    "labels_like",
    "masked_mean",
    "per_sample",
    "pair_mean_squared",
    "soft_target_kl",
]


# --------------------------------------------------------------------------------------------
# Argument checks (ConfigError is a ValueError, so callers may catch either)
# --------------------------------------------------------------------------------------------


def _owner_prefix(owner: str) -> str:
    return f"{owner}: " if owner else ""


def check_positive(value, what: str, owner: str = "") -> float:
    """Return ``value`` as a float, raising ConfigError unless it is finite and > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_owner_prefix(owner)}{what} must be a number > 0, got {value!r}") from None
    if not math.isfinite(number) or number <= 0.0:
        raise ConfigError(f"{_owner_prefix(owner)}{what} must be finite and > 0, got {value!r}")
    return number


def check_fraction(value, what: str, owner: str = "") -> float:
    """Return ``value`` as a float, raising ConfigError unless it lies in [0, 1]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{_owner_prefix(owner)}{what} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # also rejects NaN
        raise ConfigError(f"{_owner_prefix(owner)}{what} must be in [0, 1], got {value!r}")
    return number


def check_pool_size(value, owner: str = "", allow_none: bool = False):
    """Return ``value`` as an int >= 1 (or None when allowed), raising ConfigError otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise ConfigError(f"{_owner_prefix(owner)}pool_size must be an integer >= 1, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------------
# Labels -> valid positions
# --------------------------------------------------------------------------------------------


def _as_int_labels(labels):
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating:
        # Keras may hand labels over as floats; round so that 254.9999 cannot become 254.
        labels = tf.round(labels)
    return tf.cast(labels, tf.int32)


def _nearest_indices(in_size, out_size):
    """Source index of each output index for a nearest-neighbour resize (half-pixel centres).

    ``src = floor((dst + 0.5) * in / out)``, clipped to ``in - 1``: the rule of
    ``tf.image.resize(..., method="nearest")``, written out so that it is explicit and the same
    for upsampling and downsampling.
    """
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    centres = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale
    return tf.minimum(tf.cast(tf.floor(centres), tf.int32), in_size - 1)


def resize_labels_nearest(labels, size):
    """Nearest-neighbour resize of integer labels to a map's spatial size.

    Args:
      labels: ``(B, H0, W0)`` or ``(B, H0, W0, 1)`` integer (or integral float) labels.
      size: ``(H, W)``, Python ints or scalar tensors.

    Returns:
      int32 ``(B, H, W)`` labels; output pixel ``(i, j)`` takes the label at
      ``(floor((i + 0.5) * H0 / H), floor((j + 0.5) * W0 / W))``. Labels are never interpolated,
      so the ignore label stays the ignore label.

    Raises:
      ConfigError: labels that are not rank 3 or ``(B, H0, W0, 1)``.
    """
    labels = _as_int_labels(labels)
    if labels.shape.rank == 4 and labels.shape[-1] == 1:
        labels = tf.squeeze(labels, axis=-1)
    if labels.shape.rank != 3:
        raise ConfigError(f"labels must be (B, H, W) or (B, H, W, 1) for a (B, H, W, C) map, got shape {labels.shape}")
    in_h, in_w = tf.shape(labels)[1], tf.shape(labels)[2]
    rows = _nearest_indices(in_h, size[0])
    cols = _nearest_indices(in_w, size[1])
    return tf.gather(tf.gather(labels, rows, axis=1), cols, axis=2)


def labels_like(labels, reference):
    """``labels`` brought to the positions of ``reference`` (a rank-4 map or rank-2 logits).

    Returns int32 ``(B, H, W)`` for a rank-4 ``reference``, ``(N,)`` for a rank-2 one.

    Raises:
      ConfigError: labels whose rank does not fit the reference.
    """
    if reference.shape.rank == 2:
        labels = _as_int_labels(labels)
        if labels.shape.rank == 2 and labels.shape[-1] == 1:
            labels = tf.squeeze(labels, axis=-1)
        if labels.shape.rank != 1:
            raise ConfigError(f"labels must be (N,) or (N, 1) for (N, C) logits, got shape {labels.shape}")
        return labels
    shape = tf.shape(reference)
    return resize_labels_nearest(labels, (shape[1], shape[2]))


def valid_mask(labels, reference, ignore_label: int | None = IGNORE_LABEL):
    """Boolean mask of the positions of ``reference`` whose (resized) label is not ignored.

    Args:
      labels: labels at input resolution (see :func:`resize_labels_nearest`), ``(N,)`` for rank-2
        logits, or ``None``: then every position is valid (feature losses without labels).
      reference: the ``(B, H, W, C)`` map or ``(N, C)`` logits the mask is for.
      ignore_label: the label that marks a position as ignored (``None``: none is).

    Returns:
      bool ``(B, H, W)`` (or ``(N,)``) mask.
    """
    if labels is None:
        return tf.ones(tf.shape(reference)[:-1], dtype=tf.bool)
    labels = labels_like(labels, reference)
    if ignore_label is None:
        return tf.ones_like(labels, dtype=tf.bool)
    return tf.not_equal(labels, ignore_label)


# --------------------------------------------------------------------------------------------
# Patch pooling (pair-wise and CSC losses)
# --------------------------------------------------------------------------------------------


def _pad_to_multiple(x, k: int, value):
    """Pad ``(B, H, W, C)`` at the bottom/right so that H and W divide by ``k``."""
    shape = tf.shape(x)
    pad_h = (k - shape[1] % k) % k
    pad_w = (k - shape[2] % k) % k
    return tf.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]], constant_values=value)


def _blocks(x, k: int):
    """``(B, H, W, C)`` with H, W multiples of k -> ``(B, H/k, k, W/k, k, C)``."""
    shape = tf.shape(x)
    return tf.reshape(x, [shape[0], shape[1] // k, k, shape[2] // k, k, shape[3]])


def pool_patches(x, k: int, mode: str = "avg"):
    """Pool non-overlapping ``k x k`` patches of a ``(B, H, W, C)`` map (ceil mode).

    A partial patch at the bottom/right edge is pooled over its real pixels only (like PyTorch's
    ``ceil_mode=True``), so no pixel is dropped and padding never enters a value.

    ``k`` may be a scalar int32 tensor (a patch size chosen in the graph).

    Returns:
      ``(B, ceil(H/k), ceil(W/k), C)`` float32.
    """
    if isinstance(k, int) and k == 1:
        return x
    if mode == "max":
        padded = _pad_to_multiple(x, k, x.dtype.min)
        return tf.reduce_max(_blocks(padded, k), axis=[2, 4])
    total, count = _patch_sums(x, k)
    return total / count


def _patch_sums(x, k: int):
    """Sum over each ``k x k`` patch (ceil mode) and the number of real pixels in it."""
    real = _pad_to_multiple(tf.ones_like(x[..., :1]), k, 0.0)
    total = tf.reduce_sum(_blocks(_pad_to_multiple(x, k, 0.0), k), axis=[2, 4])
    count = tf.reduce_sum(_blocks(real, k), axis=[2, 4])
    return total, count


def pool_valid(valid, k: int, min_fraction: float = 0.5):
    """A pooled position is valid when at least ``min_fraction`` of its real pixels are valid.

    Args:
      valid: bool ``(B, H, W)``.

    Returns:
      bool ``(B, ceil(H/k), ceil(W/k))``.
    """
    if isinstance(k, int) and k == 1:
        return valid
    # Compare counts, not a ratio: compiled graphs turn x / n into x * (1 / n), and 2 * 0.25 may
    # come out as 0.49999997, which would flip exactly-half patches between eager and graph mode.
    valid_count, real_count = _patch_sums(tf.cast(valid, tf.float32)[..., tf.newaxis], k)
    return (valid_count >= min_fraction * real_count)[..., 0]


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


@keras.utils.register_keras_serializable(package="tfseg")
class DistillationLoss:
    """Base class of the distillation losses: a plain, serializable callable.

    A subclass sets the class attributes, implements ``compute(teacher, student, labels)``, which
    gets float32 tensors (teacher already behind ``tf.stop_gradient``, shapes checked) and returns
    the per-sample loss ``(B,)``, and overrides a hook only where it differs from the default.

    Class attributes:
      default_name: the log key used when the constructor gets ``name=None``.
      default_teacher_endpoint / default_student_endpoint: endpoints tapped by default.

    Hooks (the Distiller asks each loss instead of knowing about it):
      validate(teacher, student): raises, when the Distiller is built, if the loss cannot compare
        these two models. Default: both output ``(B, H, W, C)`` maps.
      validate_tensors(teacher, student): raises, at each call, for tensors the loss cannot
        compare. Default: ``(B, H, W, C)`` maps of equal shapes.
      adapter(teacher_channels, student_channels, name): the layer that maps the student's tap to
        what the loss compares, or None. Default: a trainable 1x1 convolution to the teacher's
        channel count when the counts differ.
      default_student_loss_weight(): the weight the loss asks for the compiled ground-truth loss.
        Default 1.0 (the loss adds to it).

    Args:
      weight: factor the Distiller applies to the batch mean of this loss (>= 0).
      teacher_endpoint: endpoint name tapped from the teacher (None: the class default).
      student_endpoint: endpoint name tapped from the student (None: the class default).
      ignore_label: label value of positions that take no part (None: no label is ignored).
      name: log key (None: the class default).

    Raises:
      ConfigError: a negative or non-finite weight, an empty endpoint name, an ignore label that
        is not an integer.
    """

    default_name = "distillation"
    default_teacher_endpoint = "logits"
    default_student_endpoint = "logits"

    def __init__(
        self,
        weight: float = 1.0,
        teacher_endpoint: str | None = None,
        student_endpoint: str | None = None,
        ignore_label: int | None = IGNORE_LABEL,
        name: str | None = None,
    ):
        owner = type(self).__name__
        try:
            weight = float(weight)
        except (TypeError, ValueError):
            raise ConfigError(f"{owner}: weight must be a number >= 0, got {weight!r}") from None
        if not math.isfinite(weight) or weight < 0.0:
            raise ConfigError(f"{owner}: weight must be finite and >= 0, got {weight!r}")
        if ignore_label is not None and (
            isinstance(ignore_label, bool) or not isinstance(ignore_label, (int, float)) or int(ignore_label) != ignore_label
        ):
            raise ConfigError(f"{owner}: ignore_label must be an integer or None, got {ignore_label!r}")
        self.weight = weight
        self.teacher_endpoint = self._endpoint(teacher_endpoint, self.default_teacher_endpoint, "teacher")
        self.student_endpoint = self._endpoint(student_endpoint, self.default_student_endpoint, "student")
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.name = str(name) if name else self.default_name

    def _endpoint(self, value, default, which):
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{type(self).__name__}: {which}_endpoint must be a non-empty string, got {value!r}")
        return value

    # -- hooks the Distiller calls ----------------------------------------------------------

    def validate(self, teacher, student):
        """Checks, when the Distiller is built, that this loss can compare ``teacher`` with ``student``.

        Called with the two Keras models once their class counts, output ranks and this loss's
        endpoints are known to agree. The default asks for segmentation models: the loss compares
        spatial maps, which classifiers do not have.

        Raises:
          ValueError: the models output class vectors ``(N, C)``.
        """
        if len(student.output_shape) != 4:
            raise ValueError(
                f"{type(self).__name__} compares spatial maps, but the models output {student.output_shape} "
                "(classifiers): use PixelKD or AdaptiveCrossEntropy"
            )

    def validate_tensors(self, teacher, student):
        """Checks the float32 tensors of one call: by default ``(B, H, W, C)`` maps of equal shapes.

        Raises:
          ConfigError: tensors of another rank or of different shapes.
        """
        self._check_shapes(teacher, student)

    def adapter(self, teacher_channels: int, student_channels: int, name: str):
        """The trainable layer the Distiller puts on the student's tap before this loss, or None.

        The default maps the student's channels to the teacher's with a 1x1 convolution when the
        counts differ, because the loss compares the two maps channel by channel.
        """
        if teacher_channels == student_channels:
            return None
        return keras.layers.Conv2D(teacher_channels, 1, name=name)

    def default_student_loss_weight(self) -> float:
        """The weight this loss asks for the compiled ground-truth loss (the student loss).

        Used when the Distiller gets ``student_loss_weight=None``; the Distiller takes the smallest
        weight its losses ask for. 1.0: this loss is added to the ground-truth loss. A loss whose
        value already holds a cross-entropy with the labels returns 0.0, so that the labels are
        not counted twice.
        """
        return 1.0

    # -- the call ---------------------------------------------------------------------------

    def __call__(self, teacher, student, labels=None):
        """Per-sample loss, float32 ``(B,)``, not multiplied by ``weight``.

        Args:
          teacher: the teacher's tensor, ``(B, H, W, C)`` (``(N, C)`` too for losses that accept
            classifier logits). It gets no gradient.
          student: the student's tensor, the same shape (channels may differ for losses that
            compare positions with positions); see :meth:`validate_tensors`.
          labels: integer labels at input resolution (see :func:`resize_labels_nearest`), or
            ``None`` when the loss does not need them.

        Returns:
          float32 tensor ``(B,)``.

        Raises:
          ConfigError: tensors of the wrong rank or of different shapes, or missing labels.
        """
        teacher = tf.stop_gradient(tf.cast(tf.convert_to_tensor(teacher), tf.float32))
        student = tf.cast(tf.convert_to_tensor(student), tf.float32)
        self.validate_tensors(teacher, student)
        return self.compute(teacher, student, labels)

    def compute(self, teacher, student, labels):
        raise NotImplementedError(f"{type(self).__name__} must implement compute()")

    def _check_shapes(self, teacher, student, ranks=(4,), channels: bool = True):
        """ConfigError unless both tensors have one of ``ranks`` and equal shapes (``channels=False``:
        equal batch and spatial sizes)."""
        owner = type(self).__name__
        for which, tensor in (("teacher", teacher), ("student", student)):
            if tensor.shape.rank not in ranks:
                expected = " or ".join("(B, H, W, C)" if rank == 4 else "(N, C)" for rank in ranks)
                raise ConfigError(f"{owner}: the {which} tensor must be {expected}, got shape {tensor.shape}")
        if teacher.shape.rank != student.shape.rank:
            raise ConfigError(
                f"{owner}: teacher shape {teacher.shape} and student shape {student.shape} differ in rank"
            )
        compared_t = teacher.shape if channels else teacher.shape[:-1]
        compared_s = student.shape if channels else student.shape[:-1]
        if not compared_t.is_compatible_with(compared_s):
            what = "shapes" if channels else "batch and spatial sizes"
            raise ConfigError(
                f"{owner}: teacher shape {teacher.shape} and student shape {student.shape} must have equal "
                f"{what} (the Distiller resizes the student map and adapts its channels first)"
            )

    def _require_labels(self, labels, why: str):
        if labels is None:
            raise ConfigError(f"{type(self).__name__}: labels are required ({why})")

    # -- serialization ----------------------------------------------------------------------

    def get_config(self) -> dict:
        """Constructor arguments as a JSON-friendly dict (subclasses add their own)."""
        return {
            "weight": self.weight,
            "teacher_endpoint": self.teacher_endpoint,
            "student_endpoint": self.student_endpoint,
            "ignore_label": self.ignore_label,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict):
        """Rebuild a loss from :meth:`get_config`'s dict."""
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


def masked_mean(values, valid, axis):
    """Mean of ``values`` over the valid positions along ``axis``; 0 where none is valid.

    ``tf.where`` (not a product) keeps a NaN/inf at an ignored position out of the value and out
    of the gradient.
    """
    valid_f = tf.cast(valid, tf.float32)
    total = tf.reduce_sum(tf.where(valid, values, tf.zeros_like(values)), axis=axis)
    return tf.math.divide_no_nan(total, tf.reduce_sum(valid_f, axis=axis))


def per_sample(values, valid):
    """Reduce per-position values ``(B, H, W)`` (or ``(N,)``) to per-sample means ``(B,)``."""
    if values.shape.rank == 1:
        return tf.where(valid, values, tf.zeros_like(values))
    return masked_mean(values, valid, axis=[1, 2])


def pair_mean_squared(a_teacher, a_student, valid):
    """Mean over valid pairs of ``(a_student - a_teacher)^2`` for ``(B, N, N)`` matrices.

    ``valid`` is ``(B, N)``; a pair (i, j) is valid when both i and j are. Returns ``(B,)``, 0 for
    a sample without valid positions.
    """
    pairs = tf.logical_and(valid[:, :, tf.newaxis], valid[:, tf.newaxis, :])
    return masked_mean(tf.square(a_student - a_teacher), pairs, axis=[1, 2])


def soft_target_kl(teacher_logits, student_logits, temperature: float, axis: int = -1):
    """``KL(softmax(t / T) || softmax(s / T))`` along ``axis``, one value per remaining position.

    The gradient with respect to the student logits is written out, ``(q - p) / T`` with
    ``p = softmax(t / T)`` and ``q = softmax(s / T)``: what automatic differentiation would give,
    but in one pass instead of differentiating back through log-softmax, exp and the product,
    which matters on full-resolution segmentation logits (pixel-wise KD). The teacher gets no
    gradient.
    """
    t = float(temperature)
    log_p = tf.nn.log_softmax(tf.stop_gradient(teacher_logits) / t, axis=axis)
    p = tf.exp(log_p)

    @tf.custom_gradient
    def kl(student):
        log_q = tf.nn.log_softmax(student / t, axis=axis)
        value = tf.reduce_sum(p * (log_p - log_q), axis=axis)

        def gradient(upstream):
            return tf.expand_dims(upstream, axis) * (tf.exp(log_q) - p) / t

        return value, gradient

    return kl(student_logits)
