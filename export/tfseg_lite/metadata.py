"""Reads a tfseg model's description (format ``tfseg/1``) without TensorFlow or the flatbuffers package.

The description is JSON, embedded in the ``.tflite`` file as a TFLite metadata entry named
``tfseg``, or next to it in a sidecar ``<file>.json`` (see ``docs/export_format.md`` in the tfseg
repository). The embedded copy wins; the sidecar is the fallback.

Only the few flatbuffer fields on one path are decoded, with ``struct``::

    Model (root table)  --field 6 "metadata"-->  [Metadata {name: string (0), buffer: uint32 (1)}]
    Model               --field 4 "buffers"--->  [Buffer {data: [ubyte] (0), offset: uint64 (1), size: uint64 (2)}]

Flatbuffer layout in brief (all little-endian):

- The file starts with a uint32 offset to the root table, then the 4-byte file identifier
  (``TFL3`` for TFLite).
- A table starts with an int32 ``soffset``; its vtable is at ``table - soffset``. The vtable holds
  uint16 values: its own size in bytes, the table's size, then one offset per field id (0 when
  the field is absent, and fields past the vtable's end are absent too).
- A field that refers to a table, vector or string stores a uint32 offset relative to the
  field's own position. A vector (or string) is a uint32 element count followed by the elements;
  a vector of tables stores one such relative offset per element.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

METADATA_NAME = "tfseg"
FORMAT = "tfseg/1"
FILE_IDENTIFIER = b"TFL3"
INPUT_DTYPES = ("uint8", "int8", "float32")
OUTPUT_KINDS = ("logits", "probabilities")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")

# Field ids in the TFLite schema (tensorflow/lite/schema/schema.fbs), only the ones read here.
_MODEL_BUFFERS = 4
_MODEL_METADATA = 6
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2
_METADATA_NAME, _METADATA_BUFFER = 0, 1


class TfsegLiteError(Exception):
    """Base class of tfseg-lite's own errors."""


class ModelError(TfsegLiteError, ValueError):
    """A file is not a usable TFLite model (not TFLite, damaged, or unsupported by the runner)."""


class MetadataError(TfsegLiteError, ValueError):
    """A model's tfseg description is missing or does not follow the ``tfseg/1`` contract."""


class _Reader:
    """Bounds-checked access to a flatbuffer; every failure becomes a ModelError naming the file."""

    def __init__(self, data, name: str):
        self.data = data
        self.name = name

    def _unpack(self, fmt: str, pos: int):
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise ModelError(f"{self.name}: damaged TFLite file (offset {pos} is outside its {len(self.data)} bytes)")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def u16(self, pos: int) -> int:
        return self._unpack("<H", pos)

    def u32(self, pos: int) -> int:
        return self._unpack("<I", pos)

    def u64(self, pos: int) -> int:
        return self._unpack("<Q", pos)

    def field_pos(self, table: int, field_id: int) -> int | None:
        """Absolute position of a field's value in ``table``, or None when the field is absent."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self.u16(vtable)
        entry = 4 + 2 * field_id  # skip the two uint16 sizes at the vtable's start
        if entry + 2 > vtable_size:
            return None  # written by an older schema that did not have this field
        offset = self.u16(vtable + entry)
        return table + offset if offset else None

    def deref(self, pos: int) -> int:
        """Follows a uint32 offset stored at ``pos`` (relative to ``pos`` itself)."""
        return pos + self.u32(pos)

    def table_vector(self, table: int, field_id: int) -> list[int]:
        """Positions of the tables in a vector-of-tables field (empty when absent)."""
        pos = self.field_pos(table, field_id)
        if pos is None:
            return []
        vector = self.deref(pos)
        return [self.deref(vector + 4 + 4 * i) for i in range(self.u32(vector))]

    def byte_vector(self, table: int, field_id: int) -> tuple[int, int] | None:
        """(start, length) of a ubyte-vector or string field, or None when absent."""
        pos = self.field_pos(table, field_id)
        if pos is None:
            return None
        vector = self.deref(pos)
        length = self.u32(vector)
        if vector + 4 + length > len(self.data):
            raise ModelError(f"{self.name}: damaged TFLite file (a vector runs past the end of the file)")
        return vector + 4, length

    def scalar(self, table: int, field_id: int, fmt: str, default=0):
        pos = self.field_pos(table, field_id)
        return default if pos is None else self._unpack(fmt, pos)


def is_tflite(path) -> bool:
    """True when ``path`` is a file with the TFLite flatbuffer identifier ``TFL3`` at bytes 4-8."""
    try:
        with open(path, "rb") as f:
            return f.read(8)[4:8] == FILE_IDENTIFIER
    except OSError:
        return False


def read_embedded(path, name: str = METADATA_NAME) -> bytes | None:
    """The raw bytes of the TFLite metadata entry ``name`` in the model file ``path``.

    Args:
      path: a ``.tflite`` file.
      name: the metadata entry to read.

    Returns:
      The entry's buffer contents, or None when the model has no such entry.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ModelError: ``path`` is not a TFLite flatbuffer, or it is damaged.
    """
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a directory, not a TFLite model file (give the .tflite file)")
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8 or f.read(8)[4:8] != FILE_IDENTIFIER:
            raise ModelError(
                f"{path} is not a TFLite model (no 'TFL3' flatbuffer identifier); "
                "export one with tfseg (a .tflite file)"
            )
        # mmap: large models are not read into memory just to find a few hundred bytes of JSON.
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _find_entry(_Reader(data, str(path)), name, path)


def _find_entry(reader: _Reader, name: str, path: Path) -> bytes | None:
    root = reader.u32(0)
    for entry in reader.table_vector(root, _MODEL_METADATA):
        span = reader.byte_vector(entry, _METADATA_NAME)
        if span is None or bytes(reader.data[span[0] : span[0] + span[1]]) != name.encode():
            continue
        index = reader.scalar(entry, _METADATA_BUFFER, "<I")
        buffers = reader.table_vector(root, _MODEL_BUFFERS)
        if index >= len(buffers):
            raise ModelError(f"{path}: metadata {name!r} points at buffer {index}, but the model has {len(buffers)}")
        buffer = buffers[index]
        # Models over 2 GB keep buffer contents after the flatbuffer: offset/size from the file start
        # (offset 1 is a placeholder meaning "empty", so only offsets > 1 are real).
        offset = reader.scalar(buffer, _BUFFER_OFFSET, "<Q")
        if offset > 1:
            size = reader.scalar(buffer, _BUFFER_SIZE, "<Q")
            if offset + size > len(reader.data):
                raise ModelError(f"{path}: damaged TFLite file (buffer {index} runs past the end of the file)")
            return bytes(reader.data[offset : offset + size])
        span = reader.byte_vector(buffer, _BUFFER_DATA)
        return b"" if span is None else bytes(reader.data[span[0] : span[0] + span[1]])
    return None


@dataclass(frozen=True)
class Metadata:
    """A validated ``tfseg/1`` model description.

    Attributes:
      classes: class names, index = class id.
      palette: one (r, g, b) per class.
      height, width, channels: the model's input size.
      input_dtype: ``uint8``, ``int8`` or ``float32``.
      pixel_range: (low, high) pixel values the model takes (RGB values, mapped from 0..255).
      output_kind: ``logits`` or ``probabilities`` (argmax gives the class map either way).
      quantization: ``none``, ``float16``, ``dynamic`` or ``int8``.
      model: the architecture's name (informative).
      dataset: the training data set's name (informative).
      ignore_label: the label value that means "void" in training masks, or None.
      normalization: how the model normalises pixels, as text (informative: tfseg models do it
        inside the graph, so the runner only feeds pixels in ``pixel_range``).
      source: where the description came from: ``embedded`` or the sidecar's path.
      raw: the whole JSON, unknown keys included.
    """

    classes: tuple
    palette: tuple
    height: int
    width: int
    channels: int
    input_dtype: str
    pixel_range: tuple
    output_kind: str
    quantization: str
    model: str = "unknown"
    dataset: str = "unknown"
    ignore_label: int | None = None
    normalization: str = ""
    source: str = "embedded"
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def default_palette(num_classes: int) -> list[list[int]]:
    """Distinct colours for ``num_classes`` classes (used only when a description has no palette)."""
    colours = []
    for i in range(num_classes):
        # Spread the bits of the class id over the three channels, high bits first: neighbouring
        # ids get clearly different colours, and the result never depends on a random seed.
        r = g = b = 0
        for bit in range(8):
            r |= ((i >> (3 * bit)) & 1) << (7 - bit)
            g |= ((i >> (3 * bit + 1)) & 1) << (7 - bit)
            b |= ((i >> (3 * bit + 2)) & 1) << (7 - bit)
        colours.append([r, g, b])
    return colours


def _int(value, what: str, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise MetadataError(f"{where}: {what} must be an integer >= {minimum}, got {value!r}")
    return value


def parse(description: dict, where: str = "metadata", source: str = "embedded") -> Metadata:
    """Validates a ``tfseg/1`` description and returns it as a Metadata.

    Unknown keys are ignored, as the contract asks; a ``format`` other than ``tfseg/1`` is refused.

    Args:
      description: the decoded JSON.
      where: names the model/sidecar in error messages.
      source: recorded in ``Metadata.source``.

    Returns:
      A Metadata.

    Raises:
      MetadataError: a required key is missing or a value breaks the contract.
    """
    if not isinstance(description, dict):
        raise MetadataError(f"{where}: the tfseg description must be a JSON object, got {type(description).__name__}")
    fmt = description.get("format")
    if fmt != FORMAT:
        raise MetadataError(
            f"{where}: unsupported description format {fmt!r}; this tfseg-lite reads {FORMAT!r} "
            "(a newer tfseg may need a newer tfseg-lite)"
        )
    classes = description.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise MetadataError(f"{where}: 'classes' must be a non-empty list of class names")
    palette = description.get("palette")
    if palette is None:
        palette = default_palette(len(classes))
    if (
        not isinstance(palette, list)
        or len(palette) != len(classes)
        or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette
        )
    ):
        raise MetadataError(f"{where}: 'palette' must list one [r, g, b] (0..255) per class ({len(classes)})")
    inp = description.get("input")
    if not isinstance(inp, dict):
        raise MetadataError(f"{where}: 'input' (height, width, channels, dtype) is missing")
    height = _int(inp.get("height"), "input.height", where)
    width = _int(inp.get("width"), "input.width", where)
    channels = _int(inp.get("channels", 3), "input.channels", where)
    if channels not in (1, 3):
        raise MetadataError(f"{where}: input.channels must be 1 or 3, got {channels}")
    if inp.get("layout", "NHWC") != "NHWC":
        raise MetadataError(f"{where}: only NHWC inputs are supported, got layout {inp.get('layout')!r}")
    input_dtype = inp.get("dtype")
    if input_dtype not in INPUT_DTYPES:
        raise MetadataError(f"{where}: input.dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")
    pixel_range = inp.get("pixel_range", [0, 255])
    if (
        not isinstance(pixel_range, list)
        or len(pixel_range) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pixel_range)
        or pixel_range[0] >= pixel_range[1]
    ):
        raise MetadataError(f"{where}: input.pixel_range must be [low, high] with low < high, got {pixel_range!r}")
    out = description.get("output", {})
    if not isinstance(out, dict):
        raise MetadataError(f"{where}: 'output' must be an object")
    kind = out.get("kind", "logits")
    if kind not in OUTPUT_KINDS:
        raise MetadataError(f"{where}: output.kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    if "classes" in out and out["classes"] != len(classes):
        raise MetadataError(f"{where}: output.classes is {out['classes']!r} but {len(classes)} class names are listed")
    quantization = description.get("quantization", "none")
    if quantization not in QUANTIZATIONS:
        raise MetadataError(f"{where}: quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    ignore = description.get("ignore_label")
    return Metadata(
        classes=tuple(classes),
        palette=tuple(tuple(c) for c in palette),
        height=height,
        width=width,
        channels=channels,
        input_dtype=input_dtype,
        pixel_range=(pixel_range[0], pixel_range[1]),
        output_kind=kind,
        quantization=quantization,
        model=str(description.get("model", "unknown")),
        dataset=str(description.get("dataset", "unknown")),
        ignore_label=ignore if isinstance(ignore, int) and not isinstance(ignore, bool) else None,
        normalization=str(inp.get("normalization", "")),
        source=source,
        raw=description,
    )


def sidecar_path(model_path) -> Path:
    """The sidecar description's path: ``<model file>.json`` (e.g. ``student.tflite.json``)."""
    return Path(str(model_path) + ".json")


def load(model_path) -> Metadata:
    """The tfseg description of a model: the embedded ``tfseg`` entry, else the sidecar JSON.

    Args:
      model_path: a ``.tflite`` file exported by tfseg.

    Returns:
      The validated Metadata.

    Raises:
      FileNotFoundError: the model file does not exist.
      ModelError: the file is not a TFLite model, or it is damaged.
      MetadataError: there is no description (embedded or sidecar), it is not valid JSON, or it
        breaks the ``tfseg/1`` contract. Every message names the file.
    """
    path = Path(model_path)
    payload = read_embedded(path)
    if payload is not None:
        try:
            description = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MetadataError(f"{path}: the embedded '{METADATA_NAME}' metadata is not valid JSON ({err})") from err
        return parse(description, str(path), "embedded")
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            description = json.loads(sidecar.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MetadataError(f"{sidecar}: not valid JSON ({err})") from err
        return parse(description, str(sidecar), str(sidecar))
    raise MetadataError(
        f"{path} has no tfseg description: no '{METADATA_NAME}' entry in its TFLite metadata and no "
        f"sidecar {sidecar.name}. Export the model with tfseg, which embeds it "
        "(tfseg.tflite.embed_metadata on a converted model), or write the sidecar JSON described in "
        "tfseg's docs/export_format.md next to the model."
    )


__all__ = [
    "FORMAT",
    "METADATA_NAME",
    "Metadata",
    "MetadataError",
    "ModelError",
    "TfsegLiteError",
    "default_palette",
    "is_tflite",
    "load",
    "parse",
    "read_embedded",
    "sidecar_path",
]
