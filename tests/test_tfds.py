"""TFDS support: the offline CamVid builder, and the pet / Cityscapes / VOC wrappers.

The real Oxford-IIIT Pet, Cityscapes and VOC sets cannot be downloaded on the test machines (no
internet, Cityscapes needs a login), so their mappings are tested on hand-made feature dicts and
arrays, and VOC on a tiny fake devkit. CamVid is tested end to end on a tiny fake SegNet tree.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tfseg._keras import tf
import tensorflow_datasets as tfds

from tfseg.data import tfds_camvid, tfds_sets
from tfseg.data.camvid_info import CAMVID_SPLITS
from tfseg.data.info import IGNORE_LABEL
from tfseg.errors import DataError

H, W = 24, 32
# Different counts per split, so that a split mix-up changes a count.
COUNTS = {"train": 3, "val": 2, "test": 1}

tfds.disable_progress_bar()


def _write_fake_camvid(root, seed=0):
    """SegNet layout with random images (PNG and lossless WebP) and masks 0..11 (11 = void)."""
    rng = np.random.default_rng(seed)
    for split, (img_dir, mask_dir) in CAMVID_SPLITS.items():
        (root / img_dir).mkdir(parents=True)
        (root / mask_dir).mkdir(parents=True)
        for k in range(COUNTS[split]):
            stem = f"{split}_{k:03d}"
            image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            mask = rng.integers(0, 12, (H, W), dtype=np.uint8)
            mask[0, :4] = 11  # every mask has void, whatever the random draw
            if k % 2:
                Image.fromarray(image).save(root / img_dir / f"{stem}.webp", lossless=True)
            else:
                Image.fromarray(image).save(root / img_dir / f"{stem}.png")
            Image.fromarray(mask).save(root / mask_dir / f"{stem}.png")
    return root


def _source(root, split, file_name):
    img_dir, mask_dir = CAMVID_SPLITS[split]
    image = np.asarray(Image.open(root / img_dir / file_name).convert("RGB"))
    mask = np.asarray(Image.open(root / mask_dir / (os.path.splitext(file_name)[0] + ".png")))
    return image, mask


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A fake CamVid tree prepared once, with the plain ``tfds.load`` call users would write."""
    manual = _write_fake_camvid(tmp_path_factory.mktemp("camvid_manual"))
    data_dir = tmp_path_factory.mktemp("tfds_data")
    config = tfds.download.DownloadConfig(manual_dir=str(manual))
    splits = {
        split: tfds.load(
            "camvid", split=split, data_dir=str(data_dir),
            download_and_prepare_kwargs={"download_config": config},
        )
        for split in CAMVID_SPLITS
    }
    return manual, data_dir, splits


# ---------------------------------------------------------------------------- CamVid builder

def test_builder_is_registered_as_camvid():
    assert tfds.builder_cls("camvid") is tfds_camvid.CamVid
    assert str(tfds_camvid.CamVid.VERSION) == "1.0.0"
    assert "1.0.0" in tfds_camvid.CamVid.RELEASE_NOTES


def test_prepared_split_counts(prepared):
    _, data_dir, _ = prepared
    info = tfds.builder("camvid", data_dir=str(data_dir)).info
    assert {name: s.num_examples for name, s in info.splits.items()} == COUNTS


def test_features_are_lossless_copies_of_the_source(prepared):
    manual, _, splits = prepared
    for split, ds in splits.items():
        seen = []
        for ex in ds:
            name = ex["file_name"].numpy().decode()
            seen.append(name)
            assert ex["image"].dtype == tf.uint8 and ex["image"].shape == (H, W, 3)
            assert ex["segmentation_mask"].dtype == tf.uint8 and ex["segmentation_mask"].shape == (H, W, 1)
            image, mask = _source(manual, split, name)
            np.testing.assert_array_equal(ex["image"].numpy(), image)
            np.testing.assert_array_equal(ex["segmentation_mask"].numpy()[..., 0], mask)
            assert (ex["segmentation_mask"].numpy() == 11).any()  # void is stored, not remapped
        img_dir = manual / CAMVID_SPLITS[split][0]
        assert sorted(seen) == sorted(p.name for p in img_dir.iterdir())


def test_load_camvid_tfds_maps_void_to_ignore(prepared):
    manual, data_dir, _ = prepared
    ds = tfds_camvid.load_camvid_tfds("train", data_dir=data_dir)  # already prepared: no manual_dir
    assert ds.element_spec == (
        tf.TensorSpec((None, None, 3), tf.float32),
        tf.TensorSpec((None, None), tf.int32),
    )
    # Unshuffled: the order is TFDS's stored order, so match elements to files by content.
    sources = [_source(manual, "train", p.name) for p in sorted((manual / "train").iterdir())]
    n = 0
    for image, mask in ds:
        image, mask = image.numpy(), mask.numpy()
        (src_mask,) = [m for i, m in sources if np.array_equal(i, image)]
        np.testing.assert_array_equal(mask[src_mask == 11], IGNORE_LABEL)
        np.testing.assert_array_equal(mask[src_mask != 11], src_mask[src_mask != 11])
        assert 11 not in mask
        n += 1
    assert n == COUNTS["train"]
    both = tfds_camvid.load_camvid_tfds("train+val", data_dir=data_dir)
    assert sum(1 for _ in both) == COUNTS["train"] + COUNTS["val"]


def test_load_camvid_tfds_prepares_from_manual_dir(tmp_path):
    manual = _write_fake_camvid(tmp_path / "manual", seed=1)
    ds = tfds_camvid.load_camvid_tfds("val[:1]", manual_dir=manual, data_dir=tmp_path / "data")
    assert len(list(ds)) == 1
    assert (tmp_path / "data" / "camvid" / "1.0.0" / "dataset_info.json").is_file()


def test_missing_manual_dir_is_a_clear_error(tmp_path):
    builder = tfds.builder("camvid", data_dir=str(tmp_path / "data"))
    config = tfds_camvid.camvid_download_config(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"camvid.*nowhere.*does not exist") as err:
        builder.download_and_prepare(download_config=config)
    assert "trainannot" in str(err.value)  # the instructions say what to put there
    assert not builder.data_path.exists()


def test_manual_dir_without_a_split_folder_is_a_clear_error(tmp_path):
    manual = _write_fake_camvid(tmp_path / "manual")
    for f in (manual / "valannot").iterdir():
        f.unlink()
    (manual / "valannot").rmdir()
    with pytest.raises(DataError, match=r"lacks the folder\(s\) valannot/"):
        tfds_camvid.load_camvid_tfds("train", manual_dir=manual, data_dir=tmp_path / "data")
    assert not (tmp_path / "data" / "camvid" / "1.0.0").exists()


def test_not_prepared_and_no_manual_dir(tmp_path):
    with pytest.raises(DataError, match="not prepared"):
        tfds_camvid.load_camvid_tfds("train", data_dir=tmp_path)


def test_unknown_split(tmp_path):
    with pytest.raises(DataError, match="unknown CamVid split 'validation'"):
        tfds_camvid.load_camvid_tfds("validation", data_dir=tmp_path)
    with pytest.raises(DataError, match="unknown CamVid split"):
        tfds_camvid.load_camvid_tfds("train+nope[:2]", data_dir=tmp_path)


def test_prepare_does_not_touch_gcs(tmp_path):
    # TensorFlow prints google_auth_provider warnings (after a DNS time-out) when anything opens a
    # gs:// path; a fresh process is needed to see TF's C++ log on stderr.
    _write_fake_camvid(tmp_path / "manual")
    code = textwrap.dedent(f"""
        from tfseg.data.tfds_camvid import load_camvid_tfds
        ds = load_camvid_tfds("test", manual_dir={str(tmp_path / "manual")!r}, data_dir={str(tmp_path / "data")!r})
        print("n =", len(list(ds)))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "n = 1" in run.stdout
    assert "google_auth" not in run.stderr and "gs://" not in run.stderr


# ---------------------------------------------------------------------------- pet / Cityscapes

def test_pet_trimap_mapping():
    trimap = np.array([[1, 2, 3], [2, 1, 0]], np.uint8)[..., None]
    image = np.full((2, 3, 3), 200, np.uint8)
    out_image, out_mask = tfds_sets.pet_example_to_element({"image": image, "segmentation_mask": trimap})
    assert out_image.dtype == tf.float32 and out_image.shape == (2, 3, 3)
    assert float(out_image[0, 0, 0]) == 200.0
    assert out_mask.dtype == tf.int32
    np.testing.assert_array_equal(out_mask.numpy(), [[1, 0, 255], [0, 1, 255]])
    assert tfds_sets.PET_INFO.class_names == ("background", "pet")


def test_cityscapes_id_table():
    table = tfds_sets.CITYSCAPES_ID_TO_TRAIN_ID
    assert len(table) == 34
    train_ids = [t for t in table if t != IGNORE_LABEL]
    assert sorted(train_ids) == list(range(19))  # each train id exactly once
    names = tfds_sets.CITYSCAPES_INFO.class_names
    # Spot checks against cityscapesScripts' labels.py.
    expected = {7: "road", 8: "sidewalk", 11: "building", 17: "pole", 19: "traffic light",
                23: "sky", 24: "person", 26: "car", 31: "train", 33: "bicycle"}
    for raw_id, name in expected.items():
        assert names[table[raw_id]] == name
    for void_id in (0, 1, 4, 6, 9, 10, 14, 15, 16, 18, 29, 30):
        assert table[void_id] == IGNORE_LABEL


def test_cityscapes_example_mapping():
    ids = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    image = np.zeros((16, 16, 3), np.uint8)
    out_image, out_mask = tfds_sets.cityscapes_example_to_element(
        {"image_left": image, "segmentation_label": ids}
    )
    assert out_image.dtype == tf.float32 and out_mask.dtype == tf.int32 and out_mask.shape == (16, 16)
    flat = out_mask.numpy().ravel()
    np.testing.assert_array_equal(flat[:34], tfds_sets.CITYSCAPES_ID_TO_TRAIN_ID)
    assert (flat[34:] == IGNORE_LABEL).all()  # anything beyond the 34 raw ids is ignored


@pytest.mark.parametrize(
    "loader, name",
    [(tfds_sets.oxford_iiit_pet, "oxford_iiit_pet"), (tfds_sets.cityscapes, "cityscapes")],
)
def test_tfds_wrappers_explain_missing_data(tmp_path, loader, name):
    with pytest.raises(DataError) as err:
        loader("train", data_dir=tmp_path)
    message = str(err.value)
    assert name in message and str(tmp_path) in message and "not prepared" in message
    assert "tfds build" in message  # and how to prepare it


# ---------------------------------------------------------------------------- VOC

def test_voc_info_matches_the_devkit():
    info = tfds_sets.VOC_INFO
    assert info.num_classes == 21
    assert info.class_names[0] == "background" and info.class_names[15] == "person"
    # Colours from the VOC devkit colour map.
    assert info.palette[0] == (0, 0, 0)
    assert info.palette[1] == (128, 0, 0)
    assert info.palette[15] == (192, 128, 128)
    assert info.palette[20] == (0, 64, 128)


def _write_fake_voc(root):
    base = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    rng = np.random.default_rng(2)
    palette = [c for colour in tfds_sets.VOC_INFO.palette for c in colour]
    palette += [0] * (768 - len(palette))
    palette[255 * 3: 256 * 3] = [224, 224, 192]  # the devkit's boundary colour
    masks = {}
    for image_id in ("2007_000032", "2007_000039", "2007_000063"):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            base / "JPEGImages" / f"{image_id}.jpg", quality=95
        )
        mask = rng.integers(0, 21, (H, W), dtype=np.uint8)
        mask[5, :] = 255  # a boundary line
        png = Image.fromarray(mask, mode="P")
        png.putpalette(palette)
        png.save(base / "SegmentationClass" / f"{image_id}.png")
        masks[image_id] = mask
    (base / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n2007_000039\n")
    (base / "ImageSets/Segmentation/val.txt").write_text("2007_000063\n")
    return base, masks


def test_voc_folder_reads_palette_indices(tmp_path):
    base, masks = _write_fake_voc(tmp_path)
    ds, info = tfds_sets.voc_folder(tmp_path / "VOCdevkit", "train")  # a parent folder works too
    assert info is tfds_sets.VOC_INFO
    assert len(ds) == 2
    elements = list(ds)
    for (image, mask), image_id in zip(elements, ("2007_000032", "2007_000039")):
        assert image.dtype == tf.float32 and image.shape == (H, W, 3)
        jpeg = np.asarray(Image.open(base / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        np.testing.assert_array_equal(image.numpy(), jpeg.astype(np.float32))
        assert mask.dtype == tf.int32
        np.testing.assert_array_equal(mask.numpy(), masks[image_id])  # indices, 255 kept as ignore
        assert (mask.numpy()[5] == IGNORE_LABEL).all()
    ds_val, _ = tfds_sets.voc_folder(base, "val")
    assert len(list(ds_val)) == 1


def test_voc_folder_errors(tmp_path):
    base, _ = _write_fake_voc(tmp_path)
    with pytest.raises(DataError, match=r"trainval\.txt not found; available splits: \['train', 'val'\]"):
        tfds_sets.voc_folder(base, "trainval")
    (base / "SegmentationClass" / "2007_000063.png").unlink()
    with pytest.raises(DataError, match=r"2007_000063\.png is listed in .*val\.txt"):
        tfds_sets.voc_folder(base, "val")
    with pytest.raises(DataError, match="no VOC devkit segmentation data"):
        tfds_sets.voc_folder(tmp_path / "empty", "train")


def test_voc_folder_bad_label_names_the_file(tmp_path):
    base, _ = _write_fake_voc(tmp_path)
    bad = np.full((H, W), 30, np.uint8)  # 30 is neither a class (0..20) nor 255
    png = Image.fromarray(bad, mode="P")
    png.putpalette([0] * 768)  # without a palette Pillow re-indexes the colours when saving
    png.save(base / "SegmentationClass" / "2007_000063.png")
    ds, _ = tfds_sets.voc_folder(base, "val")
    with pytest.raises(Exception, match=r"2007_000063\.png.*30"):
        list(ds)


def test_missing_importlib_resources_is_explained(tmp_path, monkeypatch):
    # tensorflow-datasets 4.9.10 needs it to prepare but does not install it (tensorflow/datasets#11212).
    real_find_spec = tfds_camvid.importlib.util.find_spec
    monkeypatch.setattr(
        tfds_camvid.importlib.util, "find_spec",
        lambda name, *a: None if name == "importlib_resources" else real_find_spec(name, *a),
    )
    manual = _write_fake_camvid(tmp_path / "manual")
    with pytest.raises(ImportError, match=r"pip install importlib_resources"):
        tfds_camvid.load_camvid_tfds("train", manual_dir=manual, data_dir=tmp_path / "data")
