"""Other segmentation datasets in tfseg's element convention: TFDS's own, and the VOC devkit.

Every function here returns ``(dataset, info)``: an unbatched, unshuffled ``tf.data.Dataset``
of ``(image float32 (H, W, 3) in [0, 255], mask int32 (H, W))`` with classes
``0..info.num_classes-1`` and ``IGNORE_LABEL`` (255) for pixels to ignore, and the
``DatasetInfo`` that names those classes.

- ``oxford_iiit_pet``: TFDS ``oxford_iiit_pet`` (4.0.0). Its ``segmentation_mask`` is the
  trimap 1 = pet, 2 = background, 3 = border ("not classified"). tfseg maps
  2 -> 0 background, 1 -> 1 pet, 3 -> 255 ignore: the border is a thin band whose pixels
  belong to neither region, which is what the dataset's own "not classified" means.
- ``cityscapes``: TFDS ``cityscapes/semantic_segmentation`` (manual download). Its
  ``segmentation_label`` holds the 34 raw label ids (``*_gtFine_labelIds.png``); tfseg maps
  them to the 19 standard train ids, everything else to 255 (``CITYSCAPES_ID_TO_TRAIN_ID``).
- VOC: TFDS's ``voc`` builder (2007 and 2012, version 5.0.0) has **no segmentation masks** —
  only images, object boxes and image-level labels — so it cannot be used here. ``voc_folder``
  reads the VOC devkit's segmentation files directly instead.

These functions never download: the TFDS data must already be prepared in ``data_dir``
(``tfds.load(..., download=False)``), otherwise a ``DataError`` says how to prepare it. The real
sets are not available on every machine (tfseg's tests use hand-made examples).

Example::

    ds, info = oxford_iiit_pet("train", data_dir="~/tensorflow_datasets")
    ds = ds.map(lambda x, y: (tf.image.resize(x, (128, 128)), y))  # resize masks with "nearest"!
"""

from __future__ import annotations

import os
from pathlib import Path

from tfseg._keras import tf  # sets the Keras switch before TensorFlow is imported
import tensorflow_datasets as tfds  # noqa: E402  (after tfseg._keras on purpose)

from tfseg.data.files import read_pair
from tfseg.data.info import IGNORE_LABEL, DatasetInfo, default_palette
from tfseg.errors import DataError

__all__ = [
    "PET_INFO", "CITYSCAPES_INFO", "VOC_INFO", "CITYSCAPES_ID_TO_TRAIN_ID",
    "pet_trimap_to_labels", "pet_example_to_element",
    "cityscapes_ids_to_train_ids", "cityscapes_example_to_element",
    "oxford_iiit_pet", "cityscapes", "voc_pairs", "voc_folder",
]

_I = IGNORE_LABEL

# ---------------------------------------------------------------------------- Oxford-IIIT Pet

PET_INFO = DatasetInfo(
    name="oxford_iiit_pet",
    class_names=("background", "pet"),
    palette=((0, 0, 0), (128, 0, 0)),
)
# trimap value -> tfseg label (0 is not used by the trimaps; treat it as unknown too).
_PET_TRIMAP_TO_LABEL = {1: 1, 2: 0, 3: _I}

# ---------------------------------------------------------------------------- Cityscapes

# Raw Cityscapes label id (0..33) -> train id (0..18) or 255, from the `trainId` column of the
# `labels` table in cityscapesScripts, cityscapesscripts/helpers/labels.py
# (github.com/mcordts/cityscapesScripts). License plate (id -1) is never drawn into the
# *_labelIds.png files, so it needs no entry.
CITYSCAPES_ID_TO_TRAIN_ID = (
    _I, _I, _I, _I, _I, _I, _I,  # 0-6: unlabeled, ego vehicle, rectification border, out of roi, static, dynamic, ground
    0, 1,                        # 7 road, 8 sidewalk
    _I, _I,                      # 9 parking, 10 rail track
    2, 3, 4,                     # 11 building, 12 wall, 13 fence
    _I, _I, _I,                  # 14 guard rail, 15 bridge, 16 tunnel
    5, _I,                       # 17 pole, 18 polegroup
    6, 7, 8, 9, 10, 11, 12,      # 19 traffic light, 20 traffic sign, 21 vegetation, 22 terrain, 23 sky, 24 person, 25 rider
    13, 14, 15,                  # 26 car, 27 truck, 28 bus
    _I, _I,                      # 29 caravan, 30 trailer
    16, 17, 18,                  # 31 train, 32 motorcycle, 33 bicycle
)
CITYSCAPES_INFO = DatasetInfo(
    name="cityscapes",
    class_names=(
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    ),
    # The official colours of those 19 labels, from the same table.
    palette=(
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ),
)

# ---------------------------------------------------------------------------- PASCAL VOC

VOC_INFO = DatasetInfo(
    name="voc2012",
    class_names=(
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
        "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
        "sheep", "sofa", "train", "tvmonitor",
    ),
    # The devkit's colour map (VOCdevkit's labelcolormap.m) is the same bit-interleaving scheme
    # as tfseg's default palette: 1 = (128, 0, 0) aeroplane ... 15 = (192, 128, 128) person.
    palette=default_palette(21),
)


# ---------------------------------------------------------------------------- mapping functions

def _lut(mapping) -> tf.Tensor:
    """A 256-entry uint8 -> int32 look-up table; values not in ``mapping`` become IGNORE_LABEL."""
    table = [IGNORE_LABEL] * 256
    for raw, label in (mapping.items() if isinstance(mapping, dict) else enumerate(mapping)):
        table[raw] = label
    return tf.constant(table, dtype=tf.int32)


def _apply_lut(mask, table: tf.Tensor) -> tf.Tensor:
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank == 3:  # TFDS stores masks as (H, W, 1)
        mask = mask[..., 0]
    # Gathering with int32 indices of a uint8 mask: every value 0..255 has an entry.
    return tf.gather(table, tf.cast(mask, tf.int32))


def pet_trimap_to_labels(trimap) -> tf.Tensor:
    """Maps an Oxford-IIIT Pet trimap to tfseg labels: 2 -> 0 background, 1 -> 1 pet, 3 -> 255.

    Args:
      trimap: uint8 (H, W) or (H, W, 1) tensor or array with values 1, 2, 3.

    Returns:
      int32 (H, W) tensor; any value other than 1 and 2 becomes ``IGNORE_LABEL``.

    Example::

        pet_trimap_to_labels(np.array([[1, 2, 3]], np.uint8))  # [[1, 0, 255]]
    """
    return _apply_lut(trimap, _lut(_PET_TRIMAP_TO_LABEL))


def pet_example_to_element(example: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """Turns a TFDS ``oxford_iiit_pet`` example dict into ``(image float32, mask int32)``.

    Args:
      example: dict with ``"image"`` uint8 (H, W, 3) and ``"segmentation_mask"`` uint8 (H, W, 1).

    Returns:
      ``(image, mask)`` in tfseg's element convention (see ``pet_trimap_to_labels``).
    """
    return tf.cast(example["image"], tf.float32), pet_trimap_to_labels(example["segmentation_mask"])


def cityscapes_ids_to_train_ids(label_ids) -> tf.Tensor:
    """Maps raw Cityscapes label ids (0..33) to the 19 train ids; all other values -> 255.

    Args:
      label_ids: uint8 (H, W) or (H, W, 1), the content of a ``*_gtFine_labelIds.png``.

    Returns:
      int32 (H, W) tensor with values 0..18 and ``IGNORE_LABEL``.

    Example::

        cityscapes_ids_to_train_ids(np.array([[7, 26, 0]], np.uint8))  # [[0, 13, 255]]
    """
    return _apply_lut(label_ids, _lut(CITYSCAPES_ID_TO_TRAIN_ID))


def cityscapes_example_to_element(example: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """Turns a TFDS ``cityscapes`` example dict into ``(image float32, mask int32)``.

    Args:
      example: dict with ``"image_left"`` uint8 (H, W, 3) and ``"segmentation_label"`` uint8
        (H, W, 1).

    Returns:
      ``(image, mask)`` in tfseg's element convention (see ``cityscapes_ids_to_train_ids``).
    """
    return (
        tf.cast(example["image_left"], tf.float32),
        cityscapes_ids_to_train_ids(example["segmentation_label"]),
    )


# ---------------------------------------------------------------------------- TFDS loaders

def _split_names(split: str) -> list[str]:
    # "train[:10%]+validation" -> ["train", "validation"]
    return [part.split("[")[0].strip() for part in split.split("+")]


def _load_prepared(name: str, split: str, data_dir, how_to_prepare: str, prepare_kwargs=None):
    """``tfds.load`` of a prepared dataset, with a ``DataError`` instead of TFDS's assertion."""
    data_dir = os.fspath(Path(data_dir).expanduser()) if data_dir is not None else None
    builder = tfds.builder(name, data_dir=data_dir)
    # data_path.exists(), not is_prepared(): the latter logs a warning whenever it says no.
    prepared = builder.data_path.exists()
    if not prepared and prepare_kwargs is None:
        raise DataError(
            f"TFDS dataset {name!r} is not prepared in data_dir {builder.data_dir_root} "
            f"(looked for {builder.data_path}). {how_to_prepare}"
        )
    if prepared:
        unknown = [s for s in _split_names(split) if s not in builder.info.splits]
        if unknown:
            raise DataError(
                f"TFDS dataset {name!r} has no split {unknown[0]!r}; its splits are "
                f"{sorted(builder.info.splits)}"
            )
    return tfds.load(
        name,
        split=split,
        data_dir=data_dir,
        download=not prepared,
        shuffle_files=False,
        try_gcs=False,
        download_and_prepare_kwargs=prepare_kwargs,
    )


def oxford_iiit_pet(split: str = "train", data_dir: str | os.PathLike | None = None):
    """The Oxford-IIIT Pet segmentation (trimaps) from a prepared TFDS ``oxford_iiit_pet``.

    Args:
      split: ``"train"`` (3680 images) or ``"test"`` (3669); TFDS slicing works.
      data_dir: TFDS data directory that holds ``oxford_iiit_pet/4.0.0``
        (``None``: TFDS's default, ``~/tensorflow_datasets``).

    Returns:
      ``(dataset, PET_INFO)``; see the module docstring for the element convention and the
      trimap mapping (2 -> background 0, 1 -> pet 1, border 3 -> 255).

    Raises:
      DataError: the dataset is not prepared in ``data_dir``, or ``split`` does not exist.

    Example::

        ds, info = oxford_iiit_pet("test", data_dir="/data/tfds")
    """
    ds = _load_prepared(
        "oxford_iiit_pet", split, data_dir,
        "Prepare it on a machine with internet access with "
        "`tfds build oxford_iiit_pet --data_dir DIR` (or tfds.load(..., download=True)) and copy "
        "DIR/oxford_iiit_pet here.",
    )
    return ds.map(pet_example_to_element, num_parallel_calls=tf.data.AUTOTUNE), PET_INFO


def cityscapes(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
):
    """Cityscapes fine annotations as 19 train ids, from TFDS ``cityscapes/semantic_segmentation``.

    Args:
      split: ``"train"`` (2975), ``"validation"`` (500) or ``"test"`` (1525; its public labels
        are placeholders, so every pixel comes out as 255).
      data_dir: TFDS data directory (``None``: TFDS's default).
      manual_dir: folder holding ``leftImg8bit_trainvaltest.zip`` and ``gtFine_trainvaltest.zip``
        (from cityscapes-dataset.com, registration required). Only used when the dataset is not
        prepared yet: TFDS then extracts and prepares it offline, which takes a long time.

    Returns:
      ``(dataset, CITYSCAPES_INFO)`` with 1024x2048 images and masks mapped by
      ``CITYSCAPES_ID_TO_TRAIN_ID``.

    Raises:
      DataError: the dataset is not prepared and no ``manual_dir`` was given, or ``split`` does
        not exist.

    Example::

        ds, info = cityscapes("validation", data_dir="/data/tfds", manual_dir="/data/cityscapes_zips")
    """
    name = "cityscapes/semantic_segmentation"
    prepare_kwargs = None
    if manual_dir is not None:
        prepare_kwargs = {
            "download_config": tfds.download.DownloadConfig(
                manual_dir=os.fspath(Path(manual_dir).expanduser()), try_download_gcs=False
            )
        }
    ds = _load_prepared(
        name, split, data_dir,
        "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
        "https://www.cityscapes-dataset.com (registration required) into a folder and pass it "
        "as manual_dir, or run `tfds build cityscapes/semantic_segmentation --manual_dir FOLDER "
        "--data_dir DIR`.",
        prepare_kwargs,
    )
    return ds.map(cityscapes_example_to_element, num_parallel_calls=tf.data.AUTOTUNE), CITYSCAPES_INFO


# ---------------------------------------------------------------------------- VOC devkit folder

def _voc_root(root: Path) -> Path:
    # Accept the VOC2012 folder itself or one of its parents as unpacked from the tar.
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "SegmentationClass").is_dir():
            return candidate
    raise DataError(
        f"no VOC devkit segmentation data in {root}: expected JPEGImages/, SegmentationClass/ and "
        f"ImageSets/Segmentation/ there (or in VOC2012/ or VOCdevkit/VOC2012/ below it), as "
        f"unpacked from VOCtrainval_11-May-2012.tar"
    )


def voc_pairs(root: str | os.PathLike, split: str = "train") -> list[tuple[str, str]]:
    """The (image, mask) file pairs of a VOC devkit segmentation split.

    Args:
      root: the ``VOC2012`` folder (or ``VOCdevkit`` / its parent).
      split: a list in ``ImageSets/Segmentation/``: ``"train"`` (1464), ``"val"`` (1449),
        ``"trainval"``.

    Returns:
      ``[(JPEGImages/ID.jpg, SegmentationClass/ID.png), ...]`` in list-file order.

    Raises:
      DataError: the layout, the split list or a listed file is missing (named in the message).
    """
    base = _voc_root(Path(root).expanduser())
    lists = base / "ImageSets" / "Segmentation"
    list_file = lists / f"{split}.txt"
    if not list_file.is_file():
        available = sorted(p.stem for p in lists.glob("*.txt")) if lists.is_dir() else []
        raise DataError(f"VOC split list {list_file} not found; available splits: {available}")
    ids = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"VOC split list {list_file} is empty")
    pairs = []
    for image_id in ids:
        image = base / "JPEGImages" / f"{image_id}.jpg"
        mask = base / "SegmentationClass" / f"{image_id}.png"
        for path in (image, mask):
            if not path.is_file():
                raise DataError(f"{path} is listed in {list_file} but does not exist")
        pairs.append((str(image), str(mask)))
    return pairs


def voc_folder(root: str | os.PathLike, split: str = "train"):
    """PASCAL VOC 2012 segmentation read from the devkit layout (TFDS's ``voc`` has no masks).

    ``SegmentationClass/*.png`` are palette PNGs whose *indices* are the class ids 0..20 and
    255 marks object boundaries and difficult regions; they are read as indices (the colours are
    ignored), so 255 stays ``IGNORE_LABEL``.

    Args:
      root: the ``VOC2012`` folder (or ``VOCdevkit`` / its parent).
      split: ``"train"``, ``"val"`` or ``"trainval"`` (a file in ``ImageSets/Segmentation/``).

    Returns:
      ``(dataset, VOC_INFO)``. Files are decoded with Pillow as the dataset is iterated.

    Raises:
      DataError: missing layout, list or file (named in the message) — at call time; a bad
        file or an out-of-range label — when iterating, naming the file.

    Example::

        ds, info = voc_folder("/data/VOCdevkit/VOC2012", "val")
        ds = ds.map(...).batch(8)
    """
    pairs = voc_pairs(root, split)
    num_classes = VOC_INFO.num_classes

    def generate():
        for image_path, mask_path in pairs:
            image, mask = read_pair(image_path, mask_path, num_classes)
            yield image.astype("float32"), mask

    ds = tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            tf.TensorSpec((None, None, 3), tf.float32),
            tf.TensorSpec((None, None), tf.int32),
        ),
    )
    # from_generator cannot know its length; telling tf.data lets len(ds) and progress bars work.
    ds = ds.apply(tf.data.experimental.assert_cardinality(len(pairs)))
    return ds, VOC_INFO
