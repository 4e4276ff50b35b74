"""Finding image/mask pairs on disk and decoding them with errors that name the file.

Decoding goes through Pillow rather than TF's decode ops because a TF decode error does not say
which file was bad; here every failure names the file and the offending value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from tfseg.data.info import IGNORE_LABEL
from tfseg.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MASK_SUFFIXES = (".png", ".bmp")


def _files_by_stem(directory: Path, suffixes: Sequence[str], what: str) -> dict[str, Path]:
    if not directory.is_dir():
        raise DataError(f"{what} directory not found: {directory}")
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() not in suffixes or not path.is_file():
            continue
        if path.stem in found:
            raise DataError(f"two {what} files share the stem {path.stem!r}: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def list_pairs(image_dir: str | os.PathLike, mask_dir: str | os.PathLike) -> list[tuple[str, str]]:
    """Pairs every image in ``image_dir`` with the mask of the same file stem in ``mask_dir``.

    Args:
      image_dir: folder of images (.png, .jpg, .jpeg, .webp, .bmp).
      mask_dir: folder of masks (.png, .bmp) named like their images.

    Returns:
      ``[(image_path, mask_path), ...]`` sorted by stem.

    Raises:
      DataError: a folder is missing or holds no images, an image has no mask, or a mask has
        no image; the message names the file.
    """
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    images = _files_by_stem(image_dir, IMAGE_SUFFIXES, "image")
    masks = _files_by_stem(mask_dir, MASK_SUFFIXES, "mask")
    if not images:
        raise DataError(f"empty split: no images ({', '.join(IMAGE_SUFFIXES)}) in {image_dir}")
    missing = sorted(set(images) - set(masks))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"image {images[missing[0]]} has no mask {mask_dir / (missing[0] + '.png')}{more}")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DataError(f"mask {masks[orphans[0]]} has no image in {image_dir}{more}")
    return [(str(images[s]), str(masks[s])) for s in sorted(images)]


def _open(path: str, what: str) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()  # decode now so that truncated/corrupt data fails here, with the name
    except FileNotFoundError:
        raise DataError(f"{what} file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode {what} {path}: {e}") from None
    return img


def read_image(path: str) -> np.ndarray:
    """Decodes an image file to ``uint8`` (H, W, 3) RGB; grayscale and RGBA are converted."""
    img = _open(path, "image")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def read_mask(
    path: str,
    num_classes: int,
    *,
    void_values: Iterable[int] = (),
    palette: Sequence[Sequence[int]] | None = None,
    void_colours: Iterable[Sequence[int]] = (),
) -> np.ndarray:
    """Decodes a mask file to ``int32`` (H, W) class indices with void mapped to ``IGNORE_LABEL``.

    Args:
      path: mask file. Index masks are single-channel (or palette-mode) PNGs holding class
        indices; colour masks are RGB PNGs whose colours are looked up in ``palette``.
      num_classes: valid labels are ``0..num_classes-1``.
      void_values: index values that mean "unlabelled" (e.g. 11 in CamVid); ``IGNORE_LABEL``
        itself is always accepted.
      palette: if given, the mask is a colour mask and ``palette[i]`` is the RGB colour of class i.
      void_colours: with ``palette``, colours that mean "unlabelled".

    Raises:
      DataError: undecodable file, or a value (or colour) that is neither a class nor void;
        the message names the file and the value.
    """
    img = _open(path, "mask")
    if palette is not None:
        return _colour_mask_to_labels(np.asarray(img.convert("RGB")), path, palette, void_colours)
    if img.mode not in ("L", "P", "I", "I;16", "1"):
        raise DataError(
            f"mask {path} has mode {img.mode!r}; index masks must be single-channel "
            f"(for RGB colour masks pass a palette)"
        )
    raw = np.asarray(img).astype(np.int32)
    labels = raw.copy()
    for v in set(void_values) | {IGNORE_LABEL}:
        labels[raw == v] = IGNORE_LABEL
    bad = (labels != IGNORE_LABEL) & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        values = np.unique(raw[bad])
        y, x = np.argwhere(bad)[0]
        raise DataError(
            f"mask {path} has label value(s) {values[:10].tolist()} outside [0, {num_classes}) "
            f"(first at row {y}, column {x}); valid labels are 0..{num_classes - 1} and the ignore "
            f"label {IGNORE_LABEL}{' or ' + str(sorted(set(void_values))) if void_values else ''}. "
            f"Is num_classes={num_classes} right?"
        )
    return labels


def _colour_mask_to_labels(
    rgb: np.ndarray, path: str, palette: Sequence[Sequence[int]], void_colours: Iterable[Sequence[int]]
) -> np.ndarray:
    # Pack RGB into one int so that the lookup is a single vectorised search.
    def pack(c):
        c = np.asarray(c, dtype=np.int64)
        return (c[..., 0] << 16) | (c[..., 1] << 8) | c[..., 2]

    codes = pack(rgb.astype(np.int64))
    keys = [int(pack(c)) for c in palette]
    if len(set(keys)) != len(keys):
        raise DataError(f"palette for {path} has duplicate colours")
    lut: Mapping[int, int] = {k: i for i, k in enumerate(keys)}
    lut.update({int(pack(c)): IGNORE_LABEL for c in void_colours})
    uniq, inverse = np.unique(codes, return_inverse=True)
    unknown = [u for u in uniq.tolist() if u not in lut]
    if unknown:
        u = unknown[0]
        colour = ((u >> 16) & 255, (u >> 8) & 255, u & 255)
        y, x = np.argwhere(codes == u)[0]
        raise DataError(
            f"colour mask {path} has colour {colour} (first at row {y}, column {x}) that is in "
            f"neither the palette nor the void colours ({len(unknown)} unknown colour(s) in all)"
        )
    return np.array([lut[u] for u in uniq.tolist()], dtype=np.int32)[inverse].reshape(codes.shape)


def read_pair(image_path: str, mask_path: str, num_classes: int, **mask_options) -> tuple[np.ndarray, np.ndarray]:
    """Reads an image and its mask and checks that their sizes agree (``DataError`` naming both)."""
    image = read_image(image_path)
    mask = read_mask(mask_path, num_classes, **mask_options)
    if image.shape[:2] != mask.shape:
        raise DataError(
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image "
            f"{image_path} is {image.shape[1]}x{image.shape[0]}"
        )
    return image, mask
