"""What travels with a dataset: class names, display palette and the ignore label."""

from __future__ import annotations

import dataclasses
from typing import Sequence

# Every reader maps its dataset's void/unlabelled value(s) to this one label, so that losses,
# metrics and reports never need to know a dataset's own convention.
IGNORE_LABEL = 255


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Description of a segmentation dataset's label space.

    Attributes:
      name: short dataset name, e.g. ``"camvid"``.
      class_names: one name per class index ``0..num_classes-1``.
      palette: one RGB colour (0-255 ints) per class, used for colour masks and overlays.
      ignore_label: label value excluded from losses and metrics (always ``IGNORE_LABEL`` after
        a tfseg reader has remapped the dataset's own void value).
    """

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_label: int = IGNORE_LABEL

    def __post_init__(self):
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"DatasetInfo {self.name!r}: {len(self.class_names)} class names but "
                f"{len(self.palette)} palette colours"
            )
        if not self.class_names:
            raise ValueError(f"DatasetInfo {self.name!r}: no classes")
        for name, colour in zip(self.class_names, self.palette):
            if len(colour) != 3 or any(not 0 <= int(c) <= 255 for c in colour):
                raise ValueError(f"DatasetInfo {self.name!r}: colour {colour} of class {name!r} is not RGB 0-255")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def generic(cls, num_classes: int, name: str = "dataset", class_names: Sequence[str] | None = None):
        """An info with default names (``class_0``...) and a distinct palette for ``num_classes``."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        names = tuple(class_names) if class_names is not None else tuple(f"class_{i}" for i in range(num_classes))
        return cls(name=name, class_names=names, palette=default_palette(num_classes))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "ignore_label": self.ignore_label,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetInfo":
        return cls(
            name=d["name"],
            class_names=tuple(d["class_names"]),
            palette=tuple(tuple(int(v) for v in c) for c in d["palette"]),
            ignore_label=int(d.get("ignore_label", IGNORE_LABEL)),
        )


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours by the bit-interleaving scheme of the PASCAL VOC palette."""
    colours = []
    for label in range(num_classes):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)
