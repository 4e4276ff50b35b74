"""Split objects: one split of one dataset, as an unbatched ``tf.data.Dataset`` of ``(image, mask)``.

Every split, whatever its source, follows the same small protocol (the base class :class:`Split`):

- ``split.info``: the :class:`~tfseg.data.info.DatasetInfo` (class names, palette, ignore label);
- ``split.name``: e.g. ``"camvid/train"``;
- ``len(split)``: the number of examples;
- ``split.dataset(shuffle=False, seed=None)``: an unbatched dataset of ``(image, mask)`` with
  ``image`` float32 (H, W, 3) in [0, 255] (not normalised: models normalise inside their graph)
  and ``mask`` int32 (H, W) holding ``0..C-1`` or ``IGNORE_LABEL``. Without ``shuffle`` the order
  is fixed. Shuffling happens *before* decoding, over file names or indices, so that a full
  shuffle never holds decoded images in a buffer;
- ``split.image_sizes()``: the set of distinct (H, W) sizes, so pipelines know whether
  full-resolution masks can be batched.

Two kinds live here: :class:`FileSplit` (image and mask files on disk, decoded by Pillow inside
``tf.numpy_function`` so that a bad file fails with a message naming it) and :class:`ArraySplit`
(arrays in memory, e.g. the synthetic scenes). :func:`folder` and :func:`camvid` build file splits;
:func:`check` scans a split up front.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from tfseg._keras import keras, tf
from tfseg.data import files
from tfseg.data.camvid_info import CAMVID_INFO, CAMVID_SPLITS, CAMVID_VOID
from tfseg.data.info import IGNORE_LABEL, DatasetInfo
from tfseg.errors import ConfigError, DataError

CAMVID_ENV = "TFSEG_CAMVID_DIR"
# Where the project keeps the shared copy of CamVid, relative to a checkout's working directory.
CAMVID_FALLBACK = Path("..") / "shared" / "data" / "camvid"


class Split(abc.ABC):
    """One split of a dataset. Subclasses implement ``__len__``, ``image_sizes`` and ``_decode``.

    Attributes:
      info: the dataset's label space.
      name: a readable name such as ``"camvid/train"``, used in logs and reports.
    """

    def __init__(self, info: DatasetInfo, name: str):
        self.info = info
        self.name = name

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of examples."""

    @abc.abstractmethod
    def image_sizes(self) -> set[tuple[int, int]]:
        """The distinct (height, width) sizes of the split's images."""

    @abc.abstractmethod
    def _decode(self, index_dataset: tf.data.Dataset) -> tf.data.Dataset:
        """Maps a dataset of int64 example indices to ``(image uint8, mask int32)`` examples."""

    def dataset(self, shuffle: bool = False, seed: int | None = None) -> tf.data.Dataset:
        """The examples as an unbatched ``tf.data.Dataset`` of ``(image float32, mask int32)``.

        Args:
          shuffle: visit the examples in a random order (a full shuffle of the indices, reshuffled
            at every iteration). Without it the order is the split's fixed order.
          seed: makes the shuffled order reproducible.

        Returns:
          Dataset of ``(image (H, W, 3) float32 in [0, 255], mask (H, W) int32)``.
        """
        n = len(self)
        indices = tf.data.Dataset.range(n)
        if shuffle:
            indices = indices.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return self._decode(indices).map(_to_float, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, examples={len(self)}, classes={self.info.num_classes})"


def _to_float(image, mask):
    return tf.cast(image, tf.float32), tf.cast(mask, tf.int32)


class FileSplit(Split):
    """A split backed by image/mask file pairs, decoded with Pillow inside the ``tf.data`` graph.

    Args:
      pairs: ``[(image_path, mask_path), ...]`` in the split's order (see ``files.list_pairs``).
      info: the label space; masks are checked against ``info.num_classes``.
      name: readable name.
      void_values: mask index values meaning "unlabelled", mapped to ``IGNORE_LABEL``.
      palette: RGB colour per class for colour masks (``None`` for index masks).
      void_colours: with ``palette``, colours meaning "unlabelled".

    Raises:
      DataError: ``pairs`` is empty.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        info: DatasetInfo,
        name: str,
        *,
        void_values: Iterable[int] = (),
        palette: Sequence[Sequence[int]] | None = None,
        void_colours: Iterable[Sequence[int]] = (),
    ):
        super().__init__(info, name)
        if not pairs:
            raise DataError(f"empty split {name!r}: no image/mask pairs")
        self.pairs = [(str(i), str(m)) for i, m in pairs]
        self.mask_options = {
            "void_values": tuple(int(v) for v in void_values),
            "palette": None if palette is None else tuple(tuple(int(c) for c in p) for p in palette),
            "void_colours": tuple(tuple(int(c) for c in p) for p in void_colours),
        }
        self._sizes: set[tuple[int, int]] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Reads example ``index`` eagerly: ``(image uint8 (H, W, 3), mask int32 (H, W))``.

        Raises:
          DataError: the image or the mask is bad; the message names the file and the value.
        """
        image_path, mask_path = self.pairs[index]
        return files.read_pair(image_path, mask_path, self.info.num_classes, **self.mask_options)

    def image_sizes(self) -> set[tuple[int, int]]:
        # Pillow reads only the header on open, so this costs milliseconds even for CamVid.
        if self._sizes is None:
            sizes = set()
            for image_path, _ in self.pairs:
                try:
                    with Image.open(image_path) as img:
                        sizes.add((img.height, img.width))
                except (OSError, ValueError) as e:
                    raise DataError(f"cannot read the header of image {image_path}: {e}") from None
            self._sizes = sizes
        return set(self._sizes)

    def _decode(self, index_dataset: tf.data.Dataset) -> tf.data.Dataset:
        image_paths = tf.constant([p[0] for p in self.pairs])
        mask_paths = tf.constant([p[1] for p in self.pairs])

        def read(image_path, mask_path):
            # A DataError raised here reaches the caller as a tf.errors.OpError whose text holds
            # our message, so the file name and the bad value stay visible.
            return files.read_pair(
                image_path.decode(), mask_path.decode(), self.info.num_classes, **self.mask_options
            )

        def decode(index):
            image, mask = tf.numpy_function(
                read,
                [tf.gather(image_paths, index), tf.gather(mask_paths, index)],
                [tf.uint8, tf.int32],
                stateful=False,
                name="read_pair",
            )
            image.set_shape([None, None, 3])
            mask.set_shape([None, None])
            return image, mask

        return index_dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


class ArraySplit(Split):
    """A split held in memory as ``uint8`` arrays (small datasets, synthetic data, tests).

    Args:
      images: uint8 array (N, H, W, 3).
      masks: uint8 or int array (N, H, W) with labels ``0..C-1`` or ``IGNORE_LABEL``.
      info: the label space.
      name: readable name.

    Raises:
      DataError: shapes do not fit together or a label is out of range.
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, info: DatasetInfo, name: str):
        super().__init__(info, name)
        self._images, self._masks = _validated_arrays(images, masks, info, name)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The split as ``(images uint8 (N, H, W, 3), masks uint8 (N, H, W))``."""
        return self._images, self._masks

    def __len__(self) -> int:
        return len(self.arrays()[0])

    def image_sizes(self) -> set[tuple[int, int]]:
        return {tuple(self.arrays()[0].shape[1:3])}

    def _decode(self, index_dataset: tf.data.Dataset) -> tf.data.Dataset:
        return gather_arrays(index_dataset, *self.arrays())


def gather_arrays(index_dataset: tf.data.Dataset, images: np.ndarray, masks: np.ndarray) -> tf.data.Dataset:
    """Maps example indices to ``(images[i], masks[i])`` for in-memory splits."""
    # The arrays become constants of the input graph, gathered by index: no copy per epoch, and
    # shuffling indices costs nothing. Fine for the small in-memory datasets this is meant for.
    images_t = tf.constant(images)
    masks_t = tf.constant(masks)

    def take(index):
        return tf.gather(images_t, index), tf.cast(tf.gather(masks_t, index), tf.int32)

    return index_dataset.map(take, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _validated_arrays(images, masks, info: DatasetInfo, name: str) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    masks = np.asarray(masks)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DataError(f"split {name!r}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if masks.shape != images.shape[:3]:
        raise DataError(f"split {name!r}: masks have shape {masks.shape} but images {images.shape}")
    if len(images) == 0:
        raise DataError(f"empty split {name!r}: no examples")
    bad = (masks != IGNORE_LABEL) & ((masks < 0) | (masks >= info.num_classes))
    if bad.any():
        n, y, x = np.argwhere(bad)[0]
        raise DataError(
            f"split {name!r}: example {n} has label {int(masks[n, y, x])} at row {y}, column {x}, "
            f"outside [0, {info.num_classes}) and not the ignore label {IGNORE_LABEL}"
        )
    return images, masks.astype(np.uint8)


def folder(
    image_dir: str | os.PathLike,
    mask_dir: str | os.PathLike,
    num_classes: int | None = None,
    *,
    info: DatasetInfo | None = None,
    void_values: Iterable[int] = (),
    palette: Sequence[Sequence[int]] | str | None = None,
    void_colours: Iterable[Sequence[int]] = (),
    name: str | None = None,
) -> FileSplit:
    """A split from a folder of images and a folder of masks paired by file stem.

    Args:
      image_dir: folder of images (.png, .jpg, .jpeg, .webp, .bmp).
      mask_dir: folder of masks named like their images (``a.jpg`` -> ``a.png``).
      num_classes: number of classes; give this or ``info``.
      info: full label space (names, palette); give this or ``num_classes``.
      void_values: mask values meaning "unlabelled" (mapped to 255, the ignore label; 255 itself
        is always accepted).
      palette: RGB masks: ``palette[i]`` is the colour of class ``i``; ``"info"`` means
        ``info.palette``. ``None`` (default) means single-channel index masks.
      void_colours: with ``palette``, colours meaning "unlabelled".
      name: split name; default ``"<image_dir's parent>/<image_dir>"``.

    Returns:
      A :class:`FileSplit`. Files are listed now; they are decoded when the dataset runs (use
      :func:`check` to scan them all up front).

    Raises:
      ConfigError: neither or conflicting ``num_classes``/``info``, or ``palette="info"`` without info.
      DataError: a folder is missing or empty, an image has no mask or a mask has no image.

    Example:
      >>> split = folder("data/train", "data/trainannot", num_classes=3)  # doctest: +SKIP
      >>> image, mask = next(iter(split.dataset()))                         # doctest: +SKIP
    """
    if info is None and num_classes is None:
        raise ConfigError("folder(): give num_classes or info")
    if info is not None and num_classes is not None and num_classes != info.num_classes:
        raise ConfigError(f"folder(): num_classes={num_classes} but info has {info.num_classes} classes")
    if info is None:
        if not 1 <= int(num_classes) <= IGNORE_LABEL:
            raise ConfigError(f"folder(): num_classes must be in 1..{IGNORE_LABEL}, got {num_classes}")
        info = DatasetInfo.generic(int(num_classes), name=Path(image_dir).parent.name or "folder")
    if isinstance(palette, str):
        if palette != "info":
            raise ConfigError(f"folder(): palette must be a list of RGB colours or 'info', got {palette!r}")
        palette = info.palette
    elif palette is not None and len(palette) != info.num_classes:
        raise ConfigError(f"folder(): palette has {len(palette)} colours for {info.num_classes} classes")
    if name is None:
        image_dir_path = Path(image_dir).resolve()
        name = f"{image_dir_path.parent.name}/{image_dir_path.name}"
    pairs = files.list_pairs(image_dir, mask_dir)
    return FileSplit(pairs, info, name, void_values=void_values, palette=palette, void_colours=void_colours)


def camvid_root(root: str | os.PathLike | None = None) -> Path:
    """Finds the CamVid folder: ``root``, else ``$TFSEG_CAMVID_DIR``, else ``../shared/data/camvid``.

    Raises:
      DataError: the folder is not there; the message says how to point to it.
    """
    if root is not None:
        source, path = "the root argument", Path(root)
    elif os.environ.get(CAMVID_ENV):
        source, path = f"${CAMVID_ENV}", Path(os.environ[CAMVID_ENV])
    else:
        source, path = "the default location", CAMVID_FALLBACK
    if not path.is_dir():
        raise DataError(
            f"CamVid not found at {path.resolve()} ({source}). Pass camvid(root=...) or set "
            f"{CAMVID_ENV} to the folder that holds train/, trainannot/, val/, valannot/, test/, testannot/ "
            f"(the SegNet layout, e.g. ../shared/data/camvid)."
        )
    return path


def camvid(split: str = "train", root: str | os.PathLike | None = None) -> FileSplit:
    """CamVid (SegNet's 11-class, 360x480 version): 367 train, 101 val, 233 test images.

    Args:
      split: ``"train"``, ``"val"`` or ``"test"``.
      root: the CamVid folder; default ``$TFSEG_CAMVID_DIR``, else ``../shared/data/camvid``
        relative to the current directory.

    Returns:
      A :class:`FileSplit` with ``CAMVID_INFO``; CamVid's void value 11 becomes 255.

    Raises:
      ValueError: unknown split name.
      DataError: the folder cannot be found or a file is missing.
    """
    if split not in CAMVID_SPLITS:
        raise ValueError(f"unknown CamVid split {split!r}; choose from {sorted(CAMVID_SPLITS)}")
    base = camvid_root(root)
    image_sub, mask_sub = CAMVID_SPLITS[split]
    pairs = files.list_pairs(base / image_sub, base / mask_sub)
    return FileSplit(pairs, CAMVID_INFO, f"camvid/{split}", void_values=(CAMVID_VOID,))


def check(split: Split, verbose: int = 1) -> dict:
    """Reads every example of a split now and raises the first problem, before a long run does.

    Args:
      split: a :class:`FileSplit` (every file is decoded and checked) or an in-memory split with
        an ``arrays()`` method (validated when built; its label counts are still computed).
      verbose: 1 shows a progress bar, 0 is silent.

    Returns:
      A summary: ``{"name", "examples", "sizes": {(H, W): count}, "class_pixels": [count per
      class], "ignore_pixels"}``.

    Raises:
      DataError: the first unreadable image, mismatched mask or bad label, naming the file
        and the value.
    """
    num_classes = split.info.num_classes
    class_pixels = np.zeros(num_classes, np.int64)
    ignore_pixels = 0
    sizes: dict[tuple[int, int], int] = {}
    bar = keras.utils.Progbar(len(split), verbose=verbose, unit_name="image")

    def count(mask):
        nonlocal ignore_pixels
        valid = mask != IGNORE_LABEL
        class_pixels[:] += np.bincount(mask[valid].ravel(), minlength=num_classes)[:num_classes]
        ignore_pixels += int(mask.size - valid.sum())

    if isinstance(split, FileSplit):
        for i in range(len(split)):
            image, mask = split.read(i)
            sizes[image.shape[:2]] = sizes.get(image.shape[:2], 0) + 1
            count(mask)
            bar.update(i + 1)
    elif hasattr(split, "arrays"):  # ArraySplit and other in-memory splits (scenes)
        images, masks = split.arrays()
        sizes[images.shape[1:3]] = len(images)
        for i, mask in enumerate(masks):
            count(mask.astype(np.int64))
            bar.update(i + 1)
    else:
        raise TypeError(f"check() reads file splits and in-memory splits, got {type(split).__name__}")
    return {
        "name": split.name,
        "examples": len(split),
        "sizes": sizes,
        "class_pixels": class_pixels.tolist(),
        "ignore_pixels": ignore_pixels,
    }
