"""Batched ``tf.data`` pipelines over a split: one for ``fit()``, one for evaluation.

- :func:`train_pipeline`: shuffle (over indices, before decoding), optional repeat, augmentation or
  a plain resize to the crop size, batch, prefetch.
- :func:`eval_pipeline`: fixed order, the image resized to the network's input size, the mask kept
  at its full original resolution (evaluation upsamples predictions to the label size).
"""

from __future__ import annotations

import inspect
import warnings

from tfseg._keras import tf
from tfseg.data.augment import Augment, resize_pair


def _size(value, what: str) -> tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or any(int(v) < 1 for v in value):
        raise ValueError(f"{what} must be (height, width) of positive ints, got {value}")
    return int(value[0]), int(value[1])


def _unbatched(split, shuffle: bool, seed):
    """``split.dataset(shuffle=..., seed=...)``, or a buffered shuffle for splits without those arguments."""
    params = inspect.signature(split.dataset).parameters
    if "shuffle" in params:
        return split.dataset(shuffle=shuffle, seed=seed)
    ds = split.dataset()
    # Decoded examples are large: bound the buffer rather than shuffling the whole split.
    return ds.shuffle(min(len(split), 256), seed=seed, reshuffle_each_iteration=True) if shuffle else ds


def train_pipeline(
    split,
    crop_size,
    batch_size: int,
    *,
    augment: Augment | bool | None = None,
    shuffle: bool = True,
    seed: int | None = None,
    repeat: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """The training input for ``model.fit``: batches of ``(image, mask)`` of ``crop_size``.

    Args:
      split: a split (``.dataset()``, ``len()``), e.g. from :func:`tfseg.data.load`.
      crop_size: (height, width) of the training examples, or one int for a square.
      batch_size: examples per batch.
      augment: an :class:`Augment`, ``True`` for ``Augment()`` defaults, or ``None``/``False``:
        then every example is resized to ``crop_size`` (image bilinear, mask nearest).
      shuffle: visit examples in a new random order every epoch.
      seed: makes shuffling and augmentation reproducible (the same batches in a new process);
        each epoch still gets a different order and different augmentations.
      repeat: repeat forever (then pass ``steps_per_epoch`` to ``fit``).
      drop_remainder: drop a last, smaller batch (for graphs that need a static batch size).

    Returns:
      A prefetched dataset of ``(images float32 (B, h, w, 3) in [0, 255], masks int32 (B, h, w))``.

    Example:
      >>> from tfseg.data import scenes
      >>> ds = train_pipeline(scenes("train", num_images=4), (32, 32), 2, augment=True, seed=0)
      >>> [tuple(t.shape) for t in next(iter(ds))]
      [(2, 32, 32, 3), (2, 32, 32)]
    """
    crop_size = _size(crop_size, "crop_size")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if augment is True:
        augment = Augment()
    ds = _unbatched(split, shuffle, seed)
    if repeat:
        ds = ds.repeat()
    if augment:
        # One seed pair per example from a seeded stream that moves on every epoch: reproducible
        # across runs, different across epochs, and independent of parallel map scheduling.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda example, s: augment(example[0], example[1], crop_size, s),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        ds = ds.map(lambda i, m: resize_pair(i, m, crop_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_pipeline(split, image_size, batch_size: int) -> tf.data.Dataset:
    """Evaluation input: images resized for the network, masks at their original resolution.

    Args:
      split: a split.
      image_size: (height, width) the network takes (bilinear resize), one int for a square, or
        ``None`` to keep each image's own size.
      batch_size: examples per batch. If the split's images differ in size, their masks cannot
        be stacked, so batches of 1 are used instead (with a warning).

    Returns:
      A prefetched dataset, in the split's fixed order, of ``(images float32 (B, h, w, 3),
      masks int32 (B, H, W))`` with (H, W) the original size of the labels.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sizes = split.image_sizes() if hasattr(split, "image_sizes") else set()
    if len(sizes) != 1 and batch_size > 1:
        warnings.warn(
            f"eval_pipeline: the images of {getattr(split, 'name', 'the split')} have "
            f"{len(sizes) or 'unknown'} different sizes; using batches of 1 so masks keep their size",
            stacklevel=2,
        )
        batch_size = 1
    label_size = next(iter(sizes)) if len(sizes) == 1 else None
    image_size = None if image_size is None else _size(image_size, "image_size")

    def prepare(image, mask):
        if image_size is not None:
            image = tf.image.resize(image, image_size, method="bilinear")
            image.set_shape([image_size[0], image_size[1], 3])
        if label_size is not None:
            mask.set_shape(label_size)
        return image, mask

    ds = split.dataset().map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
