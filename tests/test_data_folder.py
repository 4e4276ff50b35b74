"""File-backed splits: reading, void mapping, colour masks, and bad input named in the error."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_image, write_mask
from PIL import Image

from tfseg import data
from tfseg._keras import tf
from tfseg.data.info import DatasetInfo
from tfseg.errors import ConfigError, DataError


def first_error(split) -> str:
    """Runs a split's dataset to the end and returns the text of the error it raises."""
    with pytest.raises(tf.errors.OpError) as info:
        for _ in split.dataset():
            pass
    return str(info.value)


def test_folder_yields_the_files_pixels_in_stem_order(folder_split):
    split, examples = folder_split
    assert len(split) == 4 and split.info.num_classes == 3 and split.name.endswith("/train")
    got = list(split.dataset())
    assert len(got) == 4
    for (image, mask), (want_image, want_labels) in zip(got, examples):
        assert image.dtype == tf.float32 and mask.dtype == tf.int32
        assert image.shape == (24, 32, 3) and mask.shape == (24, 32)
        np.testing.assert_array_equal(image.numpy(), want_image.astype(np.float32))
        np.testing.assert_array_equal(mask.numpy(), want_labels.astype(np.int32))
    assert 255 in np.concatenate([m.numpy().ravel() for _, m in got])


def test_dataset_has_static_channel_dims(folder_split):
    split, _ = folder_split
    image_spec, mask_spec = split.dataset().element_spec
    assert image_spec.shape.as_list() == [None, None, 3]
    assert mask_spec.shape.rank == 2


def test_shuffled_dataset_is_a_permutation_and_seeded(folder_split):
    split, examples = folder_split
    firsts = lambda ds: [int(m.numpy()[0, 0]) * 1000 + int(i.numpy()[0, 0, 0]) for i, m in ds]  # noqa: E731
    plain = firsts(split.dataset())
    shuffled = firsts(split.dataset(shuffle=True, seed=3))
    assert sorted(shuffled) == sorted(plain)
    assert firsts(split.dataset(shuffle=True, seed=3)) == shuffled


def test_void_values_become_the_ignore_label(make_folder):
    image_dir, mask_dir, examples = make_folder(n=2, num_classes=3, void_value=7)
    split = data.folder(image_dir, mask_dir, num_classes=3, void_values=(7,))
    for (_, mask), (_, labels) in zip(split.dataset(), examples):
        mask = mask.numpy()
        assert (mask[labels == 7] == 255).all()
        assert 7 not in mask
        np.testing.assert_array_equal(mask[labels != 7], labels[labels != 7])


def test_jpeg_images_and_info_give_names(make_folder):
    image_dir, mask_dir, _ = make_folder(n=2, image_suffix=".jpg")
    info = DatasetInfo.generic(3, name="toy", class_names=["a", "b", "c"])
    split = data.folder(image_dir, mask_dir, info=info, name="toy/train")
    assert split.info.class_names == ("a", "b", "c") and split.name == "toy/train"
    image, _ = next(iter(split.dataset()))
    assert image.shape == (24, 32, 3)


def test_colour_masks_are_looked_up_in_the_palette(tmp_path):
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    void = (255, 255, 255)
    labels = np.array([[0, 1, 2, 9], [2, 1, 0, 9]])
    rgb = np.array([[palette[v] if v < 3 else void for v in row] for row in labels], np.uint8)
    write_image(tmp_path / "img" / "a.png", np.zeros((2, 4, 3), np.uint8))
    write_image(tmp_path / "mask" / "a.png", rgb)
    info = DatasetInfo(name="rgb", class_names=("bg", "red", "green"), palette=tuple(palette))
    for split in (
        data.folder(tmp_path / "img", tmp_path / "mask", 3, palette=palette, void_colours=[void]),
        data.folder(tmp_path / "img", tmp_path / "mask", info=info, palette="info", void_colours=[void]),
    ):
        _, mask = next(iter(split.dataset()))
        np.testing.assert_array_equal(mask.numpy(), np.where(labels == 9, 255, labels))


def test_unknown_mask_colour_names_file_and_colour(tmp_path):
    write_image(tmp_path / "img" / "a.png", np.zeros((2, 2, 3), np.uint8))
    write_image(tmp_path / "mask" / "a.png", np.full((2, 2, 3), (1, 2, 3), np.uint8))
    split = data.folder(tmp_path / "img", tmp_path / "mask", 2, palette=[(0, 0, 0), (9, 9, 9)])
    text = first_error(split)
    assert "a.png" in text and "(1, 2, 3)" in text


def test_argument_errors():
    with pytest.raises(ConfigError, match="num_classes or info"):
        data.folder("x", "y")
    with pytest.raises(ConfigError, match="num_classes=4 but info has 3"):
        data.folder("x", "y", 4, info=DatasetInfo.generic(3))
    with pytest.raises(ConfigError, match="'info'"):
        data.folder("x", "y", 3, palette="nope")
    with pytest.raises(ConfigError, match="1..255"):
        data.folder("x", "y", 256)


# --- bad input: each stops with an error that names the file and the value -------------------


def test_corrupt_image_is_named(make_folder):
    image_dir, mask_dir, _ = make_folder(n=3)
    (image_dir / "img01.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    split = data.folder(image_dir, mask_dir, 3)
    text = first_error(split)
    assert "img01.png" in text and "cannot decode image" in text


def test_mask_of_another_size_is_named(make_folder):
    image_dir, mask_dir, _ = make_folder(n=2, size=(24, 32))
    write_mask(mask_dir / "img01.png", np.zeros((20, 32), np.uint8))
    text = first_error(data.folder(image_dir, mask_dir, 3))
    assert "img01.png" in text and "32x20" in text and "32x24" in text


def test_image_without_mask_is_named(make_folder):
    image_dir, mask_dir, _ = make_folder(n=3)
    (mask_dir / "img02.png").unlink()
    with pytest.raises(DataError, match=r"img02\.png has no mask"):
        data.folder(image_dir, mask_dir, 3)


def test_mask_without_image_is_named(make_folder):
    image_dir, mask_dir, _ = make_folder(n=2)
    write_mask(mask_dir / "stray.png", np.zeros((24, 32), np.uint8))
    with pytest.raises(DataError, match=r"stray\.png has no image"):
        data.folder(image_dir, mask_dir, 3)


def test_label_out_of_range_is_named_with_its_value(make_folder):
    image_dir, mask_dir, _ = make_folder(n=3)
    labels = np.zeros((24, 32), np.uint8)
    labels[5, 6] = 42  # neither a class nor the ignore label
    write_mask(mask_dir / "img01.png", labels)
    text = first_error(data.folder(image_dir, mask_dir, 3))
    assert "img01.png" in text and "[42]" in text and "row 5, column 6" in text


def test_empty_split_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="empty split.*images"):
        data.folder(tmp_path / "images", tmp_path / "masks", 3)


def test_too_small_num_classes_is_named(make_folder):
    image_dir, mask_dir, _ = make_folder(n=2, num_classes=4)  # labels 0..3
    text = first_error(data.folder(image_dir, mask_dir, num_classes=2))
    assert "img00.png" in text and "[2, 3]" in text and "num_classes=2" in text


def test_error_text_survives_the_training_pipeline(make_folder):
    image_dir, mask_dir, _ = make_folder(n=4)
    labels = np.zeros((24, 32), np.uint8)
    labels[0, 0] = 99
    write_mask(mask_dir / "img03.png", labels)
    ds = data.train_pipeline(data.folder(image_dir, mask_dir, 3), (16, 16), 2, augment=True, seed=0)
    with pytest.raises(tf.errors.OpError, match=r"(?s)img03\.png.*\[99\]"):
        for _ in ds:
            pass


# --- check(): scan everything up front ----------------------------------------------------------


def test_check_counts_a_good_split(folder_split, capsys):
    split, examples = folder_split
    summary = data.check(split, verbose=1)
    labels = np.stack([labels for _, labels in examples])
    assert summary["examples"] == 4 and summary["sizes"] == {(24, 32): 4}
    assert summary["class_pixels"] == [int((labels == c).sum()) for c in range(3)]
    assert summary["ignore_pixels"] == int((labels == 255).sum())
    assert "4/4" in capsys.readouterr().out  # the progress bar ran to the end


def test_check_raises_the_first_bad_file(make_folder):
    image_dir, mask_dir, _ = make_folder(n=4)
    labels = np.zeros((24, 32), np.uint8)
    labels[3, 3] = 5
    write_mask(mask_dir / "img02.png", labels)
    (image_dir / "img03.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"img02\.png has label value\(s\) \[5\]"):
        data.check(data.folder(image_dir, mask_dir, 3), verbose=0)


def test_image_sizes_reads_headers(make_folder):
    image_dir, mask_dir, _ = make_folder(n=3, sizes=[(16, 20), (24, 32), (16, 20)])
    assert data.folder(image_dir, mask_dir, 3).image_sizes() == {(16, 20), (24, 32)}


def test_rgba_and_grey_images_become_rgb(tmp_path):
    Image.new("RGBA", (5, 4), (10, 20, 30, 128)).save(tmp_path / "a.png")
    Image.new("L", (5, 4), 77).save(tmp_path / "b.png")
    for stem in "ab":
        write_mask(tmp_path / "m" / f"{stem}.png", np.zeros((4, 5), np.uint8))
    (tmp_path / "i").mkdir()
    for stem in "ab":
        (tmp_path / f"{stem}.png").rename(tmp_path / "i" / f"{stem}.png")
    images = [i.numpy() for i, _ in data.folder(tmp_path / "i", tmp_path / "m", 1).dataset()]
    assert images[0].shape == (4, 5, 3) and tuple(images[0][0, 0]) == (10, 20, 30)
    assert tuple(images[1][0, 0]) == (77, 77, 77)
