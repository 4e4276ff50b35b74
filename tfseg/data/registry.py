"""Datasets by name: ``load("scenes", "train")``, ``load("camvid", "val")``, ``load("folder", ...)``.

A plain table of loader functions; each loader stays callable directly (``tfseg.data.camvid``).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from tfseg.data.scenes import scenes
from tfseg.data.splits import camvid, folder
from tfseg.errors import ConfigError


def folder_split(
    split: str = "train",
    *,
    root: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
    mask_dir: str | os.PathLike | None = None,
    image_subdir: str = "{split}",
    mask_subdir: str = "{split}annot",
    **options,
):
    """``folder()`` addressed by a split name, for the name table and the command line.

    Args:
      split: split name, used in the folder templates and the split's name.
      root: dataset folder; images are in ``root/image_subdir`` and masks in ``root/mask_subdir``
        (the SegNet/CamVid layout by default: ``train/`` and ``trainannot/``).
      image_dir, mask_dir: explicit folders instead of ``root`` and the templates.
      image_subdir, mask_subdir: templates with ``{split}``, e.g. ``"images/{split}"``.
      **options: passed to :func:`tfseg.data.folder` (``num_classes``, ``info``, ``void_values``,
        ``palette``, ``void_colours``).

    Raises:
      ConfigError: neither ``root`` nor both ``image_dir`` and ``mask_dir`` given.
    """
    if image_dir is None or mask_dir is None:
        if root is None:
            raise ConfigError("load('folder', ...) needs root=... or both image_dir=... and mask_dir=...")
        image_dir = Path(root) / image_subdir.format(split=split)
        mask_dir = Path(root) / mask_subdir.format(split=split)
        options.setdefault("name", f"{Path(root).resolve().name}/{split}")
    else:
        options.setdefault("name", f"{Path(image_dir).resolve().parent.name}/{split}")
    try:
        inspect.signature(folder).bind(image_dir, mask_dir, **options)
    except TypeError as error:  # e.g. a misspelt --data-option
        raise ConfigError(f"dataset 'folder': {error}") from None
    return folder(image_dir, mask_dir, **options)


# name -> loader(split, **options)
LOADERS = {
    "scenes": scenes,
    "camvid": camvid,
    "folder": folder_split,
}


def available() -> list[str]:
    """Names accepted by :func:`load`."""
    return sorted(LOADERS)


def load(name: str, split: str = "train", **options):
    """A split of a dataset by name.

    Args:
      name: one of :func:`available` (``"scenes"``, ``"camvid"``, ``"folder"``).
      split: ``"train"``, ``"val"``, ``"test"`` (or any name a folder layout has).
      **options: the loader's options, e.g. ``num_images=64`` for scenes, ``root=...`` for camvid,
        ``root=..., num_classes=...`` for folder.

    Returns:
      A split object.

    Raises:
      ConfigError: unknown dataset name (the message lists the known names) or an option the
        loader does not take (a ConfigError is a ValueError).

    Example:
      >>> load("scenes", "val", num_images=4).name
      'scenes/val'
    """
    try:
        loader = LOADERS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(available())}") from None
    try:
        inspect.signature(loader).bind(split, **options)
    except TypeError as error:  # e.g. a misspelt --data-option
        raise ConfigError(f"dataset {name!r}: {error}") from None
    return loader(split, **options)
