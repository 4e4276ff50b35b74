"""A minimal, bounds-checked FlatBuffer reader with ``struct``: the few TFLite fields tfseg-lite
needs, without TensorFlow or the flatbuffers package.

FlatBuffer layout in brief (all little-endian):

- A buffer starts with a uint32 offset to the root table, then a 4-byte file identifier
  (``TFL3`` for a TFLite model, ``M001`` for TFLite Model Metadata).
- A table starts with an int32 ``soffset``; its vtable is at ``table - soffset``. The vtable holds
  uint16 values: its own size in bytes, the table's size, then one offset per field id (0 when
  the field is absent, and fields past the vtable's end are absent too). A union field takes two
  ids: its type (ubyte), then its value (a table).
- A field that refers to a table, vector or string stores a uint32 offset relative to the
  field's own position. A vector (or string) is a uint32 element count followed by the elements;
  a vector of tables stores one such relative offset per element.

The TFLite fields read (tensorflow/lite/schema/schema.fbs)::

    Model    {subgraphs: [SubGraph] (2), buffers: [Buffer] (4), metadata: [Metadata] (6)}
    SubGraph {tensors: [Tensor] (0), inputs: [int] (1), outputs: [int] (2)}
    Tensor   {shape: [int] (0), type: TensorType byte (1)}
    Metadata {name: string (0), buffer: uint32 (1)}
    Buffer   {data: [ubyte] (0), offset: uint64 (1), size: uint64 (2)}
"""

from __future__ import annotations

import mmap
import os
import struct
from contextlib import contextmanager
from pathlib import Path

from tfseg_lite.errors import ModelError

FILE_IDENTIFIER = b"TFL3"

# Field ids in the TFLite schema, only the ones read here.
MODEL_SUBGRAPHS, MODEL_BUFFERS, MODEL_METADATA = 2, 4, 6
SUBGRAPH_TENSORS, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS = 0, 1, 2
TENSOR_SHAPE, TENSOR_TYPE = 0, 1
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2
METADATA_NAME, METADATA_BUFFER = 0, 1
# TensorType values (schema.fbs) of the types a segmentation model's image input and output may have.
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}


class Reader:
    """Bounds-checked access to a FlatBuffer; every failure raises ``error`` naming the data.

    Args:
      data: bytes, bytearray or mmap.
      name: the file the data comes from (messages start with it).
      what: what the data is, e.g. "TFLite file" or "TFLITE_METADATA buffer".
      error: the exception class raised on damaged data.
    """

    def __init__(self, data, name: str, what: str = "TFLite file", error=ModelError):
        self.data = data
        self.name = name
        self.what = what
        self.error = error

    def damaged(self, detail: str):
        return self.error(f"{self.name}: damaged {self.what} ({detail})")

    def _unpack(self, fmt: str, pos: int):
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise self.damaged(f"offset {pos} is outside its {len(self.data)} bytes")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def u8(self, pos: int) -> int:
        return self._unpack("<B", pos)

    def i8(self, pos: int) -> int:
        return self._unpack("<b", pos)

    def u16(self, pos: int) -> int:
        return self._unpack("<H", pos)

    def i32(self, pos: int) -> int:
        return self._unpack("<i", pos)

    def u32(self, pos: int) -> int:
        return self._unpack("<I", pos)

    def u64(self, pos: int) -> int:
        return self._unpack("<Q", pos)

    def f32(self, pos: int) -> float:
        return self._unpack("<f", pos)

    def identifier(self) -> bytes:
        return bytes(self.data[4:8]) if len(self.data) >= 8 else b""

    def root(self) -> int:
        return self.u32(0)

    def field_pos(self, table: int, field_id: int) -> int | None:
        """Absolute position of a field's value in ``table``, or None when the field is absent."""
        vtable = table - self.i32(table)
        vtable_size = self.u16(vtable)
        entry = 4 + 2 * field_id  # skip the two uint16 sizes at the vtable's start
        if entry + 2 > vtable_size:
            return None  # written by an older schema that did not have this field
        offset = self.u16(vtable + entry)
        return table + offset if offset else None

    def deref(self, pos: int) -> int:
        """Follows a uint32 offset stored at ``pos`` (relative to ``pos`` itself)."""
        return pos + self.u32(pos)

    def vector(self, table: int, field_id: int, element_size: int) -> tuple[int, int]:
        """(start of the elements, count) of a vector field; (0, 0) when absent."""
        pos = self.field_pos(table, field_id)
        if pos is None:
            return 0, 0
        vector = self.deref(pos)
        count = self.u32(vector)
        if vector + 4 + count * element_size > len(self.data):
            raise self.damaged("a vector runs past the end")
        return vector + 4, count

    def table_vector(self, table: int, field_id: int) -> list[int]:
        """Positions of the tables in a vector-of-tables field (empty when absent)."""
        start, count = self.vector(table, field_id, 4)
        return [self.deref(start + 4 * i) for i in range(count)]

    def table(self, table: int, field_id: int) -> int | None:
        """Position of a sub-table field, or None when absent."""
        pos = self.field_pos(table, field_id)
        return None if pos is None else self.deref(pos)

    def byte_vector(self, table: int, field_id: int) -> tuple[int, int] | None:
        """(start, length) of a ubyte-vector or string field, or None when absent."""
        if self.field_pos(table, field_id) is None:
            return None
        return self.vector(table, field_id, 1)

    def blob(self, table: int, field_id: int) -> bytes | None:
        span = self.byte_vector(table, field_id)
        return None if span is None else bytes(self.data[span[0] : span[0] + span[1]])

    def string(self, table: int, field_id: int) -> str | None:
        raw = self.blob(table, field_id)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise self.damaged(f"a string is not UTF-8: {err}") from None

    def ints(self, table: int, field_id: int) -> list[int]:
        start, count = self.vector(table, field_id, 4)
        return [self.i32(start + 4 * i) for i in range(count)]

    def floats(self, table: int, field_id: int) -> list[float]:
        start, count = self.vector(table, field_id, 4)
        return [self.f32(start + 4 * i) for i in range(count)]

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


@contextmanager
def open_model(path):
    """A Reader over a ``.tflite`` file, memory-mapped (large models are not read into memory
    to find a few hundred bytes of metadata).

    Raises:
      FileNotFoundError: no such file.
      ModelError: a directory, or not a TFLite flatbuffer.
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
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield Reader(data, str(path))


def metadata_buffer(reader: Reader, name: str) -> bytes | None:
    """The contents of the model's metadata entry ``name`` (``Model.metadata``), or None."""
    root = reader.root()
    for entry in reader.table_vector(root, MODEL_METADATA):
        if reader.blob(entry, METADATA_NAME) != name.encode():
            continue
        index = reader.scalar(entry, METADATA_BUFFER, "<I")
        buffers = reader.table_vector(root, MODEL_BUFFERS)
        if index >= len(buffers):
            raise reader.damaged(f"metadata {name!r} points at buffer {index}, but the model has {len(buffers)}")
        buffer = buffers[index]
        # Models over 2 GB keep buffer contents after the flatbuffer: offset/size from the file start
        # (offset 1 is a placeholder meaning "empty", so only offsets > 1 are real).
        offset = reader.scalar(buffer, BUFFER_OFFSET, "<Q")
        if offset > 1:
            size = reader.scalar(buffer, BUFFER_SIZE, "<Q")
            if offset + size > len(reader.data):
                raise reader.damaged(f"buffer {index} runs past the end of the file")
            return bytes(reader.data[offset : offset + size])
        data = reader.blob(buffer, BUFFER_DATA)
        return b"" if data is None else data
    return None


def io_tensors(reader: Reader) -> tuple[list[dict], list[dict]]:
    """The main subgraph's input and output tensors: ``[{"shape": [...], "dtype": "uint8"}]`` each."""
    subgraphs = reader.table_vector(reader.root(), MODEL_SUBGRAPHS)
    if not subgraphs:
        raise reader.damaged("the model has no subgraph")
    graph = subgraphs[0]
    tensors = reader.table_vector(graph, SUBGRAPH_TENSORS)

    def describe(index):
        if not 0 <= index < len(tensors):
            raise reader.damaged(f"tensor index {index} outside the {len(tensors)} tensors")
        code = reader.scalar(tensors[index], TENSOR_TYPE, "<b")
        return {"shape": reader.ints(tensors[index], TENSOR_SHAPE), "dtype": TENSOR_TYPES.get(code, f"type {code}")}

    return ([describe(i) for i in reader.ints(graph, SUBGRAPH_INPUTS)],
            [describe(i) for i in reader.ints(graph, SUBGRAPH_OUTPUTS)])


__all__ = ["FILE_IDENTIFIER", "Reader", "io_tensors", "is_tflite", "metadata_buffer", "open_model"]
