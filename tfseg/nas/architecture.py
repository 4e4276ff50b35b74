"""A derived architecture: the one document that links search, latency prediction and model building.

JSON (``FORMAT``)::

    {"format": "tfseg-nas-architecture/1",
     "space": {... SearchSpace.to_dict() ...},
     "stem_widths": [16, 24, 32],            # channels of the three stem stages
     "head_width": 64,
     "branches": [                           # one or two paths, the coarsest first
       [{"scale": 8, "op": "conv3x3", "width": 32}, ... one cell per layer ...],
       ...]}

A branch starts at 1/8 in layer 0 and at each layer stays at its scale or goes one scale coarser
(a stride-2 cell); it may only use cells the space has (``SearchSpace.cell_exists``). Branches end
at different scales.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from tfseg.errors import ConfigError
from tfseg.nas.space import SCALES, SearchSpace

FORMAT = "tfseg-nas-architecture/1"


@dataclasses.dataclass(frozen=True)
class Cell:
    scale: int
    op: str
    width: int


@dataclasses.dataclass(frozen=True)
class Architecture:
    space: SearchSpace
    stem_widths: tuple
    head_width: int
    branches: tuple  # of tuples of Cell

    def __post_init__(self):
        object.__setattr__(self, "stem_widths", tuple(self.stem_widths))
        object.__setattr__(self, "branches", tuple(tuple(branch) for branch in self.branches))
        self.validate()

    def validate(self) -> None:
        """Raises a ConfigError naming the first stem stage, branch or cell the space does not allow."""
        space = self.space
        for stage, width in enumerate(self.stem_widths):
            if width not in space.stem_width_choices(stage):
                raise ConfigError(f"stem stage {stage + 1} width {width} is not a choice of the space "
                                  f"{list(space.stem_width_choices(stage))}")
        if len(self.stem_widths) != 3:
            raise ConfigError(f"stem_widths needs 3 widths, got {list(self.stem_widths)}")
        if self.head_width not in space.head_width_choices():
            raise ConfigError(f"head width {self.head_width} is not a choice of the space "
                              f"{list(space.head_width_choices())}")
        if len(self.branches) not in (1, 2):
            raise ConfigError(f"an architecture has one or two branches, got {len(self.branches)}")
        for b, branch in enumerate(self.branches):
            if len(branch) != space.num_layers:
                raise ConfigError(f"branch {b} has {len(branch)} cells; the space has {space.num_layers} layers")
            previous = SCALES[0]
            for layer, cell in enumerate(branch):
                where = f"branch {b}, layer {layer}"
                if cell.scale not in SCALES or not space.cell_exists(layer, cell.scale):
                    raise ConfigError(f"{where}: no cell at scale 1/{cell.scale} in this layer of the space")
                if cell.scale not in (previous, 2 * previous):
                    raise ConfigError(f"{where}: scale 1/{cell.scale} after 1/{previous}; a cell keeps its input's "
                                      "scale or goes one scale coarser")
                if cell.op not in space.ops:
                    raise ConfigError(f"{where}: op {cell.op!r} is not in the space's ops {list(space.ops)}")
                if cell.width not in space.cell_width_choices(cell.scale):
                    raise ConfigError(f"{where}: width {cell.width} is not a choice at 1/{cell.scale} "
                                      f"{list(space.cell_width_choices(cell.scale))}")
                previous = cell.scale
        ends = self.branch_scales
        if len(set(ends)) != len(ends):
            raise ConfigError(f"branches must end at different scales, got 1/{ends[0]} twice")
        if list(ends) != sorted(ends, reverse=True):
            raise ConfigError(f"branches are listed coarsest first, got final scales {list(ends)}")

    @property
    def branch_scales(self) -> tuple:
        """The final scale of each branch."""
        return tuple(branch[-1].scale for branch in self.branches)

    def strides(self, branch: int) -> list:
        """Each cell's stride on ``branch``: 2 where the scale changes, else 1."""
        scales = [SCALES[0], *(cell.scale for cell in self.branches[branch])]
        return [2 if scales[i + 1] != scales[i] else 1 for i in range(len(scales) - 1)]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "space": self.space.to_dict(), "stem_widths": list(self.stem_widths),
                "head_width": self.head_width,
                "branches": [[dataclasses.asdict(cell) for cell in branch] for branch in self.branches]}

    @classmethod
    def from_dict(cls, document: dict, source: str = "architecture") -> "Architecture":
        """Reads ``to_dict``'s document; errors name ``source`` (e.g. the file)."""
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            found = document.get("format") if isinstance(document, dict) else type(document).__name__
            raise ConfigError(f"{source}: not a tfseg architecture (format {found!r}, expected {FORMAT!r})")
        try:
            branches = [[Cell(int(c["scale"]), str(c["op"]), int(c["width"])) for c in branch]
                        for branch in document["branches"]]
            return cls(SearchSpace.from_dict(document["space"]), tuple(document["stem_widths"]),
                       int(document["head_width"]), tuple(branches))
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from error
        except (KeyError, TypeError, ValueError) as error:
            raise ConfigError(f"{source}: malformed architecture ({type(error).__name__}: {error})") from error

    def save(self, path) -> None:
        """Writes the JSON whole, then renames it into place (never half-written)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "Architecture":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"architecture file {path} does not exist")
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not JSON ({error})") from error
        return cls.from_dict(document, source=str(path))


def reference_architecture(space: SearchSpace | None = None) -> Architecture:
    """A hand-made point of the default space (not a search result): a 1/32 branch and a 1/16 branch
    with every op, about 0.22 GMACs at 360x480. What the zoo's ``searched`` model builds when given
    no architecture, so that every zoo check covers the searched networks' layers."""
    space = space or SearchSpace()
    if space != SearchSpace():
        raise ConfigError("the reference architecture is defined on the default search space only")
    coarse = [Cell(8, "conv3x3", 32), Cell(16, "sep_conv3x3", 64), Cell(32, "zoomed_conv", 128),
              *(Cell(32, op, 96) for op in ("skip", "conv3x3_x2", "zoomed_conv", "sep_conv3x3", "conv3x3"))]
    fine = [Cell(8, "skip", 16), Cell(8, "zoomed_conv", 24), Cell(16, "conv3x3", 48),
            *(Cell(16, "sep_conv3x3", 64) for _ in range(5))]
    return Architecture(space, (16, 24, 32), 64, (tuple(coarse), tuple(fine)))


def as_architecture(value) -> Architecture:
    """An Architecture from itself, its dict, or the path of its JSON file."""
    if isinstance(value, Architecture):
        return value
    if isinstance(value, dict):
        return Architecture.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        return Architecture.load(value)
    raise ConfigError(f"architecture must be a JSON file, its dict or an Architecture, got {type(value).__name__}")


__all__ = ["FORMAT", "Architecture", "Cell", "as_architecture", "reference_architecture"]
