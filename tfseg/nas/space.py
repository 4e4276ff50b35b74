"""The search space: a FasterSeg-style lattice of cells over 1/8, 1/16 and 1/32, sized for CPUs.

A network of the space is a stem of three stride-2 conv stages (to 1/8), then ``num_layers`` cell
layers. Layer 0 has a cell at 1/8 only, layer 1 at 1/8 and 1/16, later layers at all three scales.
A cell takes its input from the same scale in the previous layer (stride 1) or from the next finer
scale (stride 2), applies one op from ``ops`` and has a width chosen among ``width_ratios`` of its
scale's full width. A derived network (``tfseg.nas.architecture``) keeps one or two paths through
the lattice (branches) and fuses them in a small head.

Every spatial size is computed explicitly from the input size (``feature_sizes``): 360x480 gives
45x60, 23x30 and 12x15 at 1/8, 1/16, 1/32, so sizes that do not divide by 32 need no padding.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from tfseg.errors import ConfigError

SCALES = (8, 16, 32)  # the cells' strides, finest first
# op name -> what it computes (kept beside the names so the error for an unknown op can list them)
OPS = {
    "skip": "identity (a 1x1 conv + BN + ReLU when the stride or the width changes)",
    "conv3x3": "3x3 conv + BN + ReLU",
    "conv3x3_x2": "two 3x3 conv + BN + ReLU",
    "zoomed_conv": "bilinear resize to half size, 3x3 conv + BN + ReLU, bilinear resize back",
    "sep_conv3x3": "3x3 depthwise conv + BN + ReLU, 1x1 conv + BN + ReLU",
}
MIN_INPUT_SIDE = 32  # at least one position at 1/32; fixed sizes only (every resize is explicit)


def halve(size: int) -> int:
    """The side after one stride-2 step ('same' padding, as Conv2D and the stem compute it)."""
    return math.ceil(size / 2)


def feature_sizes(input_size) -> dict:
    """``{stride: (height, width)}`` for strides 2, 4, 8, 16, 32 of an input (height, width)."""
    height, width = (int(side) for side in input_size)
    sizes = {}
    for stride in (2, 4, 8, 16, 32):
        height, width = halve(height), halve(width)
        sizes[stride] = (height, width)
    return sizes


def check_input_size(input_size) -> tuple:
    """``input_size`` as (height, width) ints, or a ConfigError saying why the space cannot take it."""
    try:
        height, width = (int(side) for side in input_size)
    except (TypeError, ValueError):
        raise ConfigError(f"input size must be (height, width), got {input_size!r}") from None
    if tuple(input_size) != (height, width) or min(height, width) < MIN_INPUT_SIDE:
        raise ConfigError(
            f"input size {tuple(input_size)} is too small for the search space: each side must be an integer "
            f">= {MIN_INPUT_SIDE} so that the 1/32 cells keep at least one position"
        )
    return height, width


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """What a search may choose from.

    Args:
      ops: candidate op names (keys of ``OPS``), in the order of the alpha logits.
      num_layers: cell layers after the stem (>= 3, so that every scale is reachable).
      cell_widths: full channel width of a cell at 1/8, 1/16, 1/32.
      width_ratios: the width choices (gamma), as fractions of a full width; each ratio times
        each full width (cells, stem, head) must be a whole number of channels.
      stem_widths: full widths of the three stride-2 stem stages (to 1/2, 1/4, 1/8).
      head_width: full width of the head (branch projections and fusion conv).
    """

    ops: tuple = tuple(OPS)
    num_layers: int = 8
    cell_widths: tuple = (32, 64, 128)
    width_ratios: tuple = (0.5, 0.75, 1.0)
    stem_widths: tuple = (16, 24, 32)
    head_width: int = 64

    def __post_init__(self):
        for key in ("ops", "cell_widths", "width_ratios", "stem_widths"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        unknown = [op for op in self.ops if op not in OPS]
        if unknown or not self.ops:
            raise ConfigError(f"unknown op {unknown[0] if unknown else None!r} in the search space; "
                              f"known ops: {', '.join(OPS)}")
        if len(set(self.ops)) != len(self.ops):
            raise ConfigError(f"the search space lists an op twice: {list(self.ops)}")
        if not isinstance(self.num_layers, int) or self.num_layers < 3:
            raise ConfigError(f"num_layers must be an integer >= 3 (to reach 1/32), got {self.num_layers!r}")
        if len(self.cell_widths) != len(SCALES) or len(self.stem_widths) != 3:
            raise ConfigError(f"cell_widths needs one width per scale {SCALES} and stem_widths one per stem stage "
                              f"(3), got {list(self.cell_widths)} and {list(self.stem_widths)}")
        if not self.width_ratios or any(not 0 < r <= 1 for r in self.width_ratios):
            raise ConfigError(f"width_ratios must be fractions in (0, 1], got {list(self.width_ratios)}")
        for what, full in [*(("cell width at 1/%d" % s, w) for s, w in zip(SCALES, self.cell_widths)),
                           *(("stem width %d" % (i + 1), w) for i, w in enumerate(self.stem_widths)),
                           ("head width", self.head_width)]:
            self.widths(full, what)

    def widths(self, full: int, what: str = "width") -> tuple:
        """The channel counts a choice can take for a full width (one per ratio), or a ConfigError."""
        choices = []
        for ratio in self.width_ratios:
            channels = full * ratio
            if not isinstance(full, int) or full < 1 or abs(channels - round(channels)) > 1e-9 or round(channels) < 1:
                raise ConfigError(f"{what} {full!r} does not divide by the width ratio {ratio}: {full} x {ratio} = "
                                  f"{channels:g} channels; choose widths that give whole channel counts")
            choices.append(int(round(channels)))
        return tuple(choices)

    def cell_exists(self, layer: int, scale: int) -> bool:
        """Layer 0 has only 1/8, layer 1 adds 1/16, later layers have all three scales."""
        return 0 <= layer < self.num_layers and SCALES.index(scale) <= layer

    def cell_width_choices(self, scale: int) -> tuple:
        return self.widths(self.cell_widths[SCALES.index(scale)])

    def stem_width_choices(self, stage: int) -> tuple:
        return self.widths(self.stem_widths[stage])

    def head_width_choices(self) -> tuple:
        return self.widths(self.head_width)

    def to_dict(self) -> dict:
        return {"ops": list(self.ops), "num_layers": self.num_layers, "cell_widths": list(self.cell_widths),
                "width_ratios": list(self.width_ratios), "stem_widths": list(self.stem_widths),
                "head_width": self.head_width}

    @classmethod
    def from_dict(cls, values: dict) -> "SearchSpace":
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown search-space key {unknown[0]!r}; keys: {', '.join(sorted(known))}")
        return cls(**values)


def space_document(text) -> dict:
    """A ``--space`` option's value: a SearchSpace as JSON text or the path of a JSON file (empty: {}, the
    default space)."""
    if not text:
        return {}
    source = Path(text).read_text() if Path(text).is_file() else text
    try:
        document = json.loads(source)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--space {text!r}: neither a JSON file nor JSON text ({error})") from None
    if not isinstance(document, dict):
        raise ConfigError(f"--space {text!r}: a search space is a JSON object, got {type(document).__name__}")
    return document


__all__ = ["MIN_INPUT_SIDE", "OPS", "SCALES", "SearchSpace", "check_input_size", "feature_sizes", "halve", "space_document"]
