"""Disjoint parts of a split: the weight and architecture halves of a search, and held-out images.

``partition(split, fractions, seed)`` shuffles the example indices once (reproducibly) and cuts
them into consecutive parts; each part is a ``SubsetSplit`` that decodes through its parent.
"""

from __future__ import annotations

import numpy as np

from tfseg._keras import tf
from tfseg.data.splits import Split
from tfseg.errors import ConfigError


class SubsetSplit(Split):
    """The examples of ``parent`` at ``indices`` (in that order)."""

    def __init__(self, parent: Split, indices, name: str):
        super().__init__(parent.info, name)
        self.parent = parent
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def image_sizes(self) -> set[tuple[int, int]]:
        return self.parent.image_sizes()

    def _decode(self, index_dataset: tf.data.Dataset) -> tf.data.Dataset:
        lookup = tf.constant(self.indices)
        return self.parent._decode(index_dataset.map(lambda i: tf.gather(lookup, i)))


def partition(split: Split, fractions, seed: int = 0, names=None) -> list[SubsetSplit]:
    """Cuts ``split`` into disjoint random parts of the given fractions (summing to at most 1).

    Raises:
      ConfigError: fractions that are not positive or sum above 1, or a part that would be empty.
    """
    fractions = [float(f) for f in fractions]
    if any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ConfigError(f"split fractions must be positive and sum to at most 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(len(split))
    names = names or [f"part{i}" for i in range(len(fractions))]
    bounds = np.round(np.cumsum([0.0, *fractions]) * len(split)).astype(int)
    parts = []
    for name, start, stop in zip(names, bounds[:-1], bounds[1:]):
        if stop <= start:
            raise ConfigError(f"{split.name} has {len(split)} examples: too few for a part of "
                              f"{fractions[len(parts)]:.0%} ({name})")
        parts.append(SubsetSplit(split, np.sort(order[start:stop]), f"{split.name}[{name}]"))
    return parts


__all__ = ["SubsetSplit", "partition"]
