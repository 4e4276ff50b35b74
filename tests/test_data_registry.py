"""load() by name, the folder layouts, and CamVid (listing only; skipped where the data is absent)."""

from __future__ import annotations

import numpy as np
import pytest

from tfseg import data
from tfseg.data.splits import camvid_root
from tfseg.errors import ConfigError, DataError


def camvid_or_skip():
    try:
        return camvid_root()
    except DataError as e:
        pytest.skip(f"CamVid not available here: {e}")


def test_available_names():
    assert data.available() == ["camvid", "folder", "scenes"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'cityscapes'; known datasets: camvid, folder, scenes"):
        data.load("cityscapes", "train")


def test_load_scenes_passes_options():
    split = data.load("scenes", "val", num_images=3, image_size=(16, 24), seed=2)
    assert split.name == "scenes/val" and len(split) == 3 and split.image_sizes() == {(16, 24)}


def test_load_folder_with_the_segnet_layout(make_folder):
    image_dir, _, _ = make_folder(n=2)
    root = image_dir.parent
    split = data.load("folder", "train", root=root, num_classes=3)
    assert len(split) == 2 and split.name == f"{root.name}/train"


def test_load_folder_with_templates_and_explicit_dirs(tmp_path, make_folder):
    image_dir, mask_dir, _ = make_folder(n=2)
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir(parents=True)
    image_dir.rename(tmp_path / "ds" / "images" / "val")
    mask_dir.rename(tmp_path / "ds" / "masks" / "val")
    split = data.load(
        "folder", "val", root=tmp_path / "ds", image_subdir="images/{split}", mask_subdir="masks/{split}", num_classes=3
    )
    assert len(split) == 2 and split.name == "ds/val"
    explicit = data.load(
        "folder", "val", image_dir=tmp_path / "ds/images/val", mask_dir=tmp_path / "ds/masks/val", num_classes=3
    )
    assert explicit.pairs == split.pairs


def test_load_folder_needs_a_place():
    with pytest.raises(ConfigError, match="root="):
        data.load("folder", "train", num_classes=3)


def test_camvid_missing_root_says_how_to_point_to_it(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="TFSEG_CAMVID_DIR"):
        data.camvid("train", root=tmp_path / "nowhere")
    monkeypatch.setenv("TFSEG_CAMVID_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(DataError, match=r"elsewhere.*\$TFSEG_CAMVID_DIR"):
        data.camvid("train")


def test_camvid_env_var_is_used(tmp_path, monkeypatch, make_folder):
    image_dir, _, _ = make_folder(n=2, num_classes=12)  # the SegNet layout: train/ and trainannot/
    monkeypatch.setenv("TFSEG_CAMVID_DIR", str(image_dir.parent))
    split = data.camvid("train")
    assert len(split) == 2 and split.info is data.CAMVID_INFO and split.name == "camvid/train"
    for _, mask in split.dataset():
        assert 11 not in mask.numpy()  # void -> 255


def test_camvid_unknown_split():
    with pytest.raises(ValueError, match="unknown CamVid split 'dev'"):
        data.camvid("dev")


def test_camvid_split_counts():
    root = camvid_or_skip()
    counts = {s: len(data.load("camvid", s, root=root)) for s in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}


def test_camvid_first_example_has_void_mapped():
    root = camvid_or_skip()
    split = data.camvid("val", root=root)
    image, mask = next(iter(split.dataset()))
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
    values = set(np.unique(mask.numpy()).tolist())
    assert values <= set(range(11)) | {255} and 255 in values
