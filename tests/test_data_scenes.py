"""Synthetic scenes: deterministic, disjoint splits, every class present, a thin ignore band."""

from __future__ import annotations

import numpy as np
import pytest

from tfseg import data
from tfseg._keras import tf
from tfseg.data.scenes import CIRCLE, GROUND, SKY, render_scene


@pytest.fixture(scope="module")
def sample():
    return data.scenes("train", num_images=48, image_size=(64, 64), seed=0)


def test_same_seed_split_and_index_give_the_same_pixels(sample):
    again = data.scenes("train", num_images=48, image_size=(64, 64), seed=0)
    for a, b in zip(sample.arrays(), again.arrays()):
        np.testing.assert_array_equal(a, b)
    image, mask = render_scene(0, "train", 5, (64, 64))
    np.testing.assert_array_equal(image, sample.arrays()[0][5])
    np.testing.assert_array_equal(mask, sample.arrays()[1][5])


def test_a_prefix_does_not_depend_on_the_number_of_images(sample):
    short = data.scenes("train", num_images=4, image_size=(64, 64), seed=0)
    np.testing.assert_array_equal(short.arrays()[0], sample.arrays()[0][:4])


def test_seeds_and_splits_give_different_images(sample):
    images = sample.arrays()[0][:8]
    other_seed = data.scenes("train", num_images=8, image_size=(64, 64), seed=1).arrays()[0]
    val = data.scenes("val", num_images=8, image_size=(64, 64), seed=0).arrays()[0]
    test = data.scenes("test", num_images=8, image_size=(64, 64), seed=0).arrays()[0]
    for other in (other_seed, val, test):
        assert not any(np.array_equal(a, b) for a in images for b in other)


def test_masks_hold_every_class_and_only_valid_labels(sample):
    masks = sample.arrays()[1]
    values = set(np.unique(masks).tolist())
    assert values == set(range(6)) | {255}
    # Sky and ground appear in every image; objects in many.
    assert all((m == SKY).any() and (m == GROUND).any() for m in masks)
    assert np.mean([(m == CIRCLE).any() for m in masks]) > 0.2


def test_ignore_band_is_thin_and_hugs_objects(sample):
    masks = sample.arrays()[1]
    fraction = (masks == 255).mean()
    assert 0.005 < fraction < 0.1
    # Ignored pixels have an object pixel (class >= 2) within 3 pixels; a few at the tips of
    # very sharp corners, where the labelled interior is thinner than the band, may not.
    m = np.pad(masks, ((0, 0), (3, 3), (3, 3)), constant_values=0)
    near_object = np.zeros(masks.shape, bool)
    for dy in range(7):
        for dx in range(7):
            window = m[:, dy : dy + masks.shape[1], dx : dx + masks.shape[2]]
            near_object |= (window >= 2) & (window != 255)
    assert near_object[masks == 255].mean() > 0.995


def test_colour_alone_does_not_give_the_class(sample):
    images, masks = sample.arrays()
    circles = [i for i in range(len(masks)) if (masks[i] == CIRCLE).sum() > 20]
    means = np.array([images[i][masks[i] == CIRCLE].mean(0) for i in circles])
    assert len(means) >= 5 and means.std(0).min() > 30  # circles come in all colours
    sky_means = np.array([images[i][masks[i] == SKY].mean(0) for i in range(len(masks))])
    assert sky_means.std(0).min() > 30


def test_dataset_matches_the_arrays_and_the_conventions():
    split = data.scenes("val", num_images=3, image_size=(32, 40))
    assert split.name == "scenes/val" and split.info is data.SCENES_INFO
    assert split.image_sizes() == {(32, 40)}
    images, masks = split.arrays()
    got = list(split.dataset())
    assert len(got) == 3
    for (image, mask), want_image, want_mask in zip(got, images, masks):
        assert image.dtype == tf.float32 and mask.dtype == tf.int32 and image.shape == (32, 40, 3)
        np.testing.assert_array_equal(image.numpy(), want_image)
        np.testing.assert_array_equal(mask.numpy(), want_mask)


def test_default_sizes_without_generating():
    assert [len(data.scenes(s)) for s in ("train", "val", "test")] == [512, 128, 128]
    assert data.scenes("train")._arrays is None  # generated lazily, on first use


def test_check_summarises_a_scenes_split():
    summary = data.check(data.scenes("test", num_images=4, image_size=(32, 32)), verbose=0)
    assert summary["examples"] == 4 and summary["sizes"] == {(32, 32): 4}
    assert sum(summary["class_pixels"]) + summary["ignore_pixels"] == 4 * 32 * 32


@pytest.mark.parametrize(
    "kwargs", [dict(split="dev"), dict(num_images=0), dict(image_size=(4, 4)), dict(seed=-1)]
)
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        data.scenes(**kwargs)
