"""Disjoint random parts of a split (the search's weight / architecture halves and held-out images)."""

import numpy as np
import pytest

from tfseg import data
from tfseg.data.subsets import partition
from tfseg.errors import ConfigError


def test_parts_are_disjoint_reproducible_and_decode_their_parents_examples():
    split = data.load("scenes", "train", num_images=10)
    parts = partition(split, [0.4, 0.4, 0.2], seed=1, names=["weights", "arch", "unlabeled"])
    assert [len(p) for p in parts] == [4, 4, 2]
    assert parts[1].name == "scenes/train[arch]"
    indices = np.concatenate([p.indices for p in parts])
    assert sorted(indices) == list(range(10))
    assert [list(p.indices) for p in partition(split, [0.4, 0.4, 0.2], seed=1)] == [list(p.indices) for p in parts]
    masks = [m.numpy() for _, m in split.dataset()]
    for got, index in zip(parts[2].dataset(), parts[2].indices):
        np.testing.assert_array_equal(got[1].numpy(), masks[index])


@pytest.mark.parametrize("fractions, message", [([0.6, 0.6], "sum to at most 1"), ([0.5, 0.01], "too few")])
def test_bad_fractions_are_named(fractions, message):
    with pytest.raises(ConfigError, match=message):
        partition(data.load("scenes", "train", num_images=10), fractions)
