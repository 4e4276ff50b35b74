"""train_pipeline and eval_pipeline: shapes, dtypes, resizing rules, order, seeds, full-size masks."""

from __future__ import annotations

import numpy as np
import pytest

from tfseg import data
from tfseg._keras import tf


@pytest.fixture(scope="module")
def tiny():
    return data.scenes("train", num_images=6, image_size=(40, 48), seed=0)


def as_numpy(ds):
    return [(i.numpy(), m.numpy()) for i, m in ds]


def test_train_batches_have_the_crop_size_and_dtypes(tiny):
    ds = data.train_pipeline(tiny, (32, 24), 4, augment=True, seed=0)
    images_spec, masks_spec = ds.element_spec
    assert images_spec.shape.as_list() == [None, 32, 24, 3] and masks_spec.shape.as_list() == [None, 32, 24]
    batches = as_numpy(ds)
    assert [len(i) for i, _ in batches] == [4, 2]
    for images, masks in batches:
        assert images.dtype == np.float32 and masks.dtype == np.int32
        assert 0 <= images.min() and images.max() <= 255 and images.max() > 1  # not normalised
        assert set(np.unique(masks)) <= set(range(6)) | {255}


def test_without_augment_examples_are_resized_not_cropped(tiny):
    ds = data.train_pipeline(tiny, 20, 6, augment=None, shuffle=False)
    (images, masks), = as_numpy(ds)
    want_images, want_masks = tiny.arrays()
    # Halving 40x48 -> 20x24 would be exact for nearest; here 20x20 squeezes the width.
    expected = tf.image.resize(want_masks[..., None].astype(np.int32), (20, 20), method="nearest")[..., 0]
    np.testing.assert_array_equal(masks, expected.numpy())
    assert images.shape == (6, 20, 20, 3)
    np.testing.assert_allclose(images.mean(), want_images.mean(), atol=3)


def test_seeded_pipelines_repeat_batches_and_epochs_differ(tiny):
    first = as_numpy(data.train_pipeline(tiny, 24, 3, augment=True, seed=5))
    ds = data.train_pipeline(tiny, 24, 3, augment=True, seed=5)
    again = as_numpy(ds)
    for (a_img, a_mask), (b_img, b_mask) in zip(first, again):
        np.testing.assert_array_equal(a_img, b_img)
        np.testing.assert_array_equal(a_mask, b_mask)
    next_epoch = as_numpy(ds)  # iterating the same dataset again: new order and augmentations
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(again, next_epoch))
    other_seed = as_numpy(data.train_pipeline(tiny, 24, 3, augment=True, seed=6))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, other_seed))


def test_unshuffled_order_is_the_split_order(tiny):
    ds = data.train_pipeline(tiny, (40, 48), 2, shuffle=False)
    masks = np.concatenate([m for _, m in as_numpy(ds)])
    np.testing.assert_array_equal(masks, tiny.arrays()[1])


def test_shuffle_visits_every_example_once_per_epoch(tiny):
    ds = data.train_pipeline(tiny, (40, 48), 1, shuffle=True, seed=1)
    got = sorted(m.tobytes() for _, m in as_numpy(ds))
    assert got == sorted(m.astype(np.int32).tobytes() for m in tiny.arrays()[1])


def test_repeat_and_drop_remainder(tiny):
    ds = data.train_pipeline(tiny, 16, 4, augment=True, seed=0, repeat=True, drop_remainder=True)
    assert ds.element_spec[0].shape.as_list() == [4, 16, 16, 3]
    assert len(as_numpy(ds.take(5))) == 5  # 20 examples out of a 6-example split


def test_train_pipeline_accepts_a_file_split(folder_split):
    split, _ = folder_split
    batches = as_numpy(data.train_pipeline(split, 16, 2, augment=data.Augment(), seed=1))
    assert [(i.shape, m.shape) for i, m in batches] == [((2, 16, 16, 3), (2, 16, 16))] * 2


def test_eval_resizes_images_and_keeps_masks_at_full_size():
    split = data.scenes("val", num_images=5, image_size=(40, 48))
    ds = data.eval_pipeline(split, (20, 24), 2)
    assert ds.element_spec[1].shape.as_list() == [None, 40, 48]
    batches = as_numpy(ds)
    assert [len(i) for i, _ in batches] == [2, 2, 1]
    images = np.concatenate([i for i, _ in batches])
    masks = np.concatenate([m for _, m in batches])
    assert images.shape == (5, 20, 24, 3)
    np.testing.assert_array_equal(masks, split.arrays()[1])  # same order, untouched labels
    resized = tf.image.resize(split.arrays()[0].astype(np.float32), (20, 24), method="bilinear")
    np.testing.assert_allclose(images, resized.numpy(), atol=1e-3)


def test_eval_without_image_size_keeps_images(folder_split):
    split, examples = folder_split
    images, masks = as_numpy(data.eval_pipeline(split, None, 4))[0]
    np.testing.assert_array_equal(images, np.stack([e[0] for e in examples]).astype(np.float32))


def test_eval_of_mixed_sizes_uses_batches_of_one(make_folder):
    image_dir, mask_dir, examples = make_folder(n=3, sizes=[(16, 20), (24, 32), (16, 20)])
    split = data.folder(image_dir, mask_dir, 3)
    with pytest.warns(UserWarning, match="batches of 1"):
        ds = data.eval_pipeline(split, (8, 8), 4)
    batches = as_numpy(ds)
    assert [m.shape for _, m in batches] == [(1, 16, 20), (1, 24, 32), (1, 16, 20)]
    assert all(i.shape == (1, 8, 8, 3) for i, _ in batches)
    for (_, mask), (_, labels) in zip(batches, examples):
        np.testing.assert_array_equal(mask[0], labels)


@pytest.mark.parametrize("crop_size", [(0, 8), (8,), -3])
def test_bad_sizes_are_refused(tiny, crop_size):
    with pytest.raises(ValueError, match="crop_size"):
        data.train_pipeline(tiny, crop_size, 2)
