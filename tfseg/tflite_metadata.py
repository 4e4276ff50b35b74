"""TFLite Model Metadata for tfseg's ``.tflite`` exports, so MediaPipe Tasks' ``ImageSegmenter``
(Android, iOS, web, Python) loads them with their input normalisation, class names and output
activation.

What is written, from the ``tfseg/1`` description of docs/export_format.md:

- a ``TFLITE_METADATA`` buffer in the model: a ``ModelMetadata`` FlatBuffer (identifier ``M001``,
  the public ``metadata_schema.fbs`` of tflite-support / MediaPipe) with one subgraph whose
  input tensor is an RGB image (``ImageProperties``) with ``NormalizationOptions`` and whose
  single output names its label file and carries the custom metadata ``SEGMENTER_METADATA``
  (an ``ImageSegmenterOptions`` FlatBuffer, identifier ``V001``: the output activation);
- the label file ``labels.txt`` (one class name a line, index = class id), an associated file
  of type ``TENSOR_AXIS_LABELS``, in an uncompressed zip archive appended to the model, as the
  metadata schema prescribes (MediaPipe refuses compressed members). TFLite runtimes ignore
  bytes after the flatbuffer.

The values:

- NormalizationOptions: ``(x - mean) / std`` maps 0..255 onto ``input.pixel_range``; tfseg
  models normalise inside the graph and take raw [0, 255] pixels, so mean 0, std 1 (one value
  for all channels: MediaPipe refuses per-channel values). MediaPipe requires them for float32
  inputs (float32 and float16 exports) and feeds uint8 inputs raw.
- Activation: the exports output logits, so ``SOFTMAX``: MediaPipe's category mask is the
  argmax either way, and its confidence masks become probabilities (with ``NONE`` they would be
  raw logits). An output of probabilities gets ``NONE``.
- Low-resolution outputs (``tfseg.output_tail``): ``low_res_logits`` get the same metadata
  (``SOFTMAX``; the output tensor's description gives its stride). MediaPipe loads them and
  resizes the scores to the image itself, but with align-corners bilinear over the whole output
  (checked against MediaPipe 1.2.3: its category mask equals that exactly), not the model's
  half-pixel upsampling and crop of the padding (``output.upsampling`` of the tfseg JSON), so its
  masks are shifted (for the CamVid students at 360x480 by up to 5.5-6.5 pixels at the padded
  bottom edge; about 2 mIoU lost); tfseg-lite maps them exactly. ``class_map``
  exports get none (``CLASS_MAP_KINDS``): MediaPipe's segmenter wants per-class scores and, given
  class ids of shape (1, h, w), returns an all-zero mask for uint8 inputs (and refuses float32
  inputs without metadata).

Why write the FlatBuffer here (with the ``flatbuffers`` package TensorFlow already depends on)
rather than use an existing writer:

- MediaPipe's writer (``mediapipe.tasks.python.metadata.metadata_writers.image_segmenter``)
  would make tfseg depend on mediapipe at export time: a large package that pins its own
  protobuf and NumPy against TensorFlow's.
- tflite-support's writer is deprecated and has no wheels for Python 3.12+.
- The schema is public and small for what a segmenter needs (about 20 fields). The field ids
  below follow the declaration order of ``metadata_schema.fbs`` (a union takes two ids: its
  type, then its value); ``read`` parses it back independently of the builder, tfseg-lite
  reads it with its own struct-based reader, and the slow MediaPipe test
  (tests/test_mediapipe_slow.py) checks that MediaPipe loads it and gets the same class map.

Example:
  >>> flatbuffer = populate(flatbuffer, description)   # last step: the zip goes at the end
  >>> read(flatbuffer)["labels"]
  ['road', 'car', 'sky']
"""

from __future__ import annotations

import io
import struct
import zipfile

import flatbuffers
import numpy as np
from flatbuffers import number_types, table

from tfseg.tflite import embed_buffer, io_tensors, read_buffer

METADATA_NAME = "TFLITE_METADATA"  # the model metadata entry MediaPipe looks for
METADATA_IDENTIFIER = b"M001"
SEGMENTER_METADATA = "SEGMENTER_METADATA"  # the custom metadata MediaPipe's ImageSegmenter reads
SEGMENTER_IDENTIFIER = b"V001"
LABELS_FILE = "labels.txt"
# custom_metadata (SubGraphMetadata) was added in metadata schema 1.5.0; nothing newer is used.
MIN_PARSER_VERSION = "1.5.0"
SEGMENTER_MIN_PARSER_VERSION = "1.0.0"
ACTIVATIONS = ("NONE", "SIGMOID", "SOFTMAX")  # ImageSegmenterOptions.activation, by value
ACTIVATION_OF_OUTPUT = {"logits": "SOFTMAX", "probabilities": "NONE", "low_res_logits": "SOFTMAX"}
# Output kinds of tfseg/1 that get no TFLite Model Metadata: not per-class scores (see above).
CLASS_MAP_KINDS = ("class_map",)
COLOR_SPACES = ("UNKNOWN", "RGB", "GRAYSCALE")  # ColorSpaceType, by value
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
CONTENT_IMAGE_PROPERTIES = 2  # ContentProperties union: FeatureProperties 1, ImageProperties 2, ...
PROCESS_NORMALIZATION = 1  # ProcessUnitOptions union: NormalizationOptions 1, ...

# Field ids (declaration order in metadata_schema.fbs; a union field takes its type's id and the next).
MODEL_NAME, MODEL_DESCRIPTION, MODEL_VERSION, MODEL_SUBGRAPHS, MODEL_AUTHOR = 0, 1, 2, 3, 4
MODEL_MIN_PARSER_VERSION = 7
MODEL_FIELDS = 8
SUBGRAPH_NAME, SUBGRAPH_DESCRIPTION, SUBGRAPH_INPUTS, SUBGRAPH_OUTPUTS = 0, 1, 2, 3
SUBGRAPH_CUSTOM_METADATA = 9
SUBGRAPH_FIELDS = 10
TENSOR_NAME, TENSOR_DESCRIPTION, TENSOR_CONTENT, TENSOR_PROCESS_UNITS, TENSOR_STATS, TENSOR_FILES = 0, 1, 3, 4, 5, 6
TENSOR_FIELDS = 7
CONTENT_PROPERTIES_TYPE, CONTENT_PROPERTIES, CONTENT_RANGE = 0, 1, 2
IMAGE_COLOR_SPACE, IMAGE_DEFAULT_SIZE = 0, 1
SIZE_WIDTH, SIZE_HEIGHT = 0, 1
RANGE_MIN, RANGE_MAX = 0, 1
PROCESS_OPTIONS_TYPE, PROCESS_OPTIONS = 0, 1
NORMALIZATION_MEAN, NORMALIZATION_STD = 0, 1
STATS_MAX, STATS_MIN = 0, 1
FILE_NAME, FILE_DESCRIPTION, FILE_TYPE = 0, 1, 2
CUSTOM_NAME, CUSTOM_DATA = 0, 1
SEGMENTER_ACTIVATION, SEGMENTER_MIN_VERSION = 0, 1


class MetadataFormatError(ValueError):
    """A model's TFLite Model Metadata cannot be written or read (the message names the model)."""


# ------------------------------------------------------------------------------ values


def normalization_options(pixel_range) -> tuple[float, float]:
    """``(mean, std)`` such that ``(x - mean) / std`` maps pixels 0..255 onto ``pixel_range``.

    Example:
      >>> normalization_options([0, 255])
      (0.0, 1.0)
      >>> normalization_options([-1, 1])
      (127.5, 127.5)
    """
    low, high = (float(v) for v in pixel_range)
    if not high > low:
        raise MetadataFormatError(f"pixel_range must be [low, high] with low < high, got {list(pixel_range)}")
    std = 255.0 / (high - low)
    return -low * std + 0.0, std  # + 0.0: no "-0.0" for low = 0


def label_file(classes, where: str = "model") -> bytes:
    """The ``TENSOR_AXIS_LABELS`` file: one class name a line, UTF-8.

    Raises:
      MetadataFormatError: a name that is empty or holds a line break (it would shift the
        class ids of every later line), naming the class index.
    """
    for index, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip() or "\n" in name or "\r" in name:
            raise MetadataFormatError(
                f"{where}: class {index} is named {name!r}; label files need non-empty names without line breaks"
            )
    return ("\n".join(classes) + "\n").encode("utf-8")


# ------------------------------------------------------------------------------ building


def _offset_vector(builder, offsets):
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _float_vector(builder, values):
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(float(value))
    return builder.EndVector()


def _aligned_bytes(builder, data: bytes, alignment: int = 16):
    """A [ubyte] vector whose first element is ``alignment``-aligned (CustomMetadata.data is
    ``force_align: 16``: it holds a nested FlatBuffer that is read in place)."""
    builder.StartVector(1, len(data), alignment)
    builder.head = builder.Head() - len(data)
    builder.Bytes[builder.Head() : builder.Head() + len(data)] = data
    return builder.EndVector()


def _table(builder, count, fields):
    """A table from ``(kind, field id, value)``; kinds: ``offset``, ``int8``, ``uint8``, ``int32``, ``uint32``.

    Scalars are written even when they equal the schema default, so readers never depend on
    the default being known.
    """
    builder.StartObject(count)
    for kind, field_id, value in fields:
        if value is None:
            continue
        if kind == "offset":
            builder.PrependUOffsetTRelativeSlot(field_id, value, 0)
        else:
            prepend = {"int8": builder.PrependInt8Slot, "uint8": builder.PrependUint8Slot,
                       "int32": builder.PrependInt32Slot, "uint32": builder.PrependUint32Slot}[kind]
            builder.ForceDefaults(True)
            prepend(field_id, int(value), 0)
            builder.ForceDefaults(False)
    return builder.EndObject()


def segmenter_options(activation: str) -> bytes:
    """The ``ImageSegmenterOptions`` FlatBuffer (identifier ``V001``) of ``SEGMENTER_METADATA``."""
    if activation not in ACTIVATIONS:
        raise MetadataFormatError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    builder = flatbuffers.Builder(64)
    version = builder.CreateString(SEGMENTER_MIN_PARSER_VERSION)
    root = _table(builder, 2, [("int8", SEGMENTER_ACTIVATION, ACTIVATIONS.index(activation)),
                               ("offset", SEGMENTER_MIN_VERSION, version)])
    builder.Finish(root, file_identifier=SEGMENTER_IDENTIFIER)
    return bytes(builder.Output())


def _stats_range(dtype: str, pixel_range) -> tuple[float, float]:
    """Min and max of the input tensor's values: the pixel range for float inputs, the integer
    range for quantized ones (they are quantized with the tensor's own scale and zero point)."""
    if dtype in ("uint8", "int8"):
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return float(pixel_range[0]), float(pixel_range[1])


def _fields(description: dict) -> tuple[str, dict]:
    """``(where, fields)``: the checked values of a ``tfseg/1`` description the metadata needs."""
    where = f"model {description.get('model', '?')!r}" if isinstance(description, dict) else "model"
    try:
        inp, out = description["input"], description["output"]
        fields = {
            "classes": list(description["classes"]),
            "height": int(inp["height"]), "width": int(inp["width"]), "channels": int(inp.get("channels", 3)),
            "pixel_range": list(inp.get("pixel_range", [0, 255])), "dtype": str(inp["dtype"]),
            "kind": out.get("kind", "logits"),
            "out_height": int(out.get("height") or inp["height"]), "out_width": int(out.get("width") or inp["width"]),
        }
    except (KeyError, TypeError, ValueError) as error:
        raise MetadataFormatError(f"{where}: the tfseg description lacks or misstates {error} (see docs/export_format.md)") from None
    if fields["kind"] not in ACTIVATION_OF_OUTPUT:
        raise MetadataFormatError(f"{where}: output.kind must be one of {tuple(ACTIVATION_OF_OUTPUT)}, got {fields['kind']!r}")
    if fields["channels"] not in (1, 3):
        raise MetadataFormatError(f"{where}: input.channels must be 1 or 3, got {fields['channels']}")
    label_file(fields["classes"], where)  # checks the names
    return where, fields


def _output_text(description: dict, fields: dict) -> str:
    """The output tensor's description: what it holds, and for low-resolution logits their mapping."""
    classes, size = len(fields["classes"]), f"{fields['out_height']}x{fields['out_width']}x{len(fields['classes'])}"
    if fields["kind"] != "low_res_logits":
        return f"Per-pixel {fields['kind']} of {classes} classes, {size}; the argmax over the last axis is the class map."
    out = description["output"]
    up = out.get("upsampling", {})
    return (f"Logits of {classes} classes at stride {out.get('stride')}, {size}: upsample them (bilinear, half-pixel "
            f"centres) to {up.get('size')} and keep the {fields['height']}x{fields['width']} window at offset "
            f"{up.get('offset')} to line them up with the input pixels; then the argmax over the last axis.")


def build(description: dict, *, input_name: str = "image", output_name: str = "logits") -> bytes:
    """The ``ModelMetadata`` FlatBuffer (identifier ``M001``) for a ``tfseg/1`` description.

    Args:
      description: the dict ``tfseg.export.model_metadata`` returns.
      input_name, output_name: tensor names recorded in the metadata (informative).

    Returns:
      The FlatBuffer bytes (stored as the model's ``TFLITE_METADATA`` buffer by ``populate``).

    Raises:
      MetadataFormatError: a description without the fields needed, or class names that cannot
        go in a label file.
    """
    where, fields = _fields(description)
    classes, inp, kind = fields["classes"], description["input"], fields["kind"]
    height, width, channels = fields["height"], fields["width"], fields["channels"]
    pixel_range, dtype = fields["pixel_range"], fields["dtype"]
    mean, std = normalization_options(pixel_range)
    low, high = _stats_range(dtype, pixel_range)

    b = flatbuffers.Builder(1024)
    # Input: an image, its normalisation, the range of its values.
    size = _table(b, 2, [("uint32", SIZE_WIDTH, width), ("uint32", SIZE_HEIGHT, height)])
    image = _table(b, 2, [("int8", IMAGE_COLOR_SPACE, COLOR_SPACES.index("RGB" if channels == 3 else "GRAYSCALE")),
                          ("offset", IMAGE_DEFAULT_SIZE, size)])
    content = _table(b, 3, [("uint8", CONTENT_PROPERTIES_TYPE, CONTENT_IMAGE_PROPERTIES),
                            ("offset", CONTENT_PROPERTIES, image)])
    norm = _table(b, 2, [("offset", NORMALIZATION_MEAN, _float_vector(b, [mean])),
                         ("offset", NORMALIZATION_STD, _float_vector(b, [std]))])
    unit = _table(b, 2, [("uint8", PROCESS_OPTIONS_TYPE, PROCESS_NORMALIZATION), ("offset", PROCESS_OPTIONS, norm)])
    stats = _table(b, 2, [("offset", STATS_MAX, _float_vector(b, [high])), ("offset", STATS_MIN, _float_vector(b, [low]))])
    input_tensor = _table(b, TENSOR_FIELDS, [
        ("offset", TENSOR_NAME, b.CreateString(input_name)),
        ("offset", TENSOR_DESCRIPTION, b.CreateString(
            f"{'RGB' if channels == 3 else 'Grayscale'} image, {height}x{width}, pixel values 0..255 "
            f"mapped by (x - {mean:g}) / {std:g} ({inp.get('normalization') or 'normalised inside the model'}).")),
        ("offset", TENSOR_CONTENT, content),
        ("offset", TENSOR_PROCESS_UNITS, _offset_vector(b, [unit])),
        ("offset", TENSOR_STATS, stats),
    ])
    # Output: per-pixel class scores; dimensions 1-2 are the image (Content.range), the label file names axis 3.
    labels = _table(b, 3, [
        ("offset", FILE_NAME, b.CreateString(LABELS_FILE)),
        ("offset", FILE_DESCRIPTION, b.CreateString("Class names, one a line; line i names class id i.")),
        ("int8", FILE_TYPE, TENSOR_AXIS_LABELS),
    ])
    mask = _table(b, 2, [("int8", IMAGE_COLOR_SPACE, COLOR_SPACES.index("GRAYSCALE"))])
    value_range = _table(b, 2, [("int32", RANGE_MIN, 1), ("int32", RANGE_MAX, 2)])
    out_content = _table(b, 3, [("uint8", CONTENT_PROPERTIES_TYPE, CONTENT_IMAGE_PROPERTIES),
                                ("offset", CONTENT_PROPERTIES, mask), ("offset", CONTENT_RANGE, value_range)])
    output_tensor = _table(b, TENSOR_FIELDS, [
        ("offset", TENSOR_NAME, b.CreateString(output_name)),
        ("offset", TENSOR_DESCRIPTION, b.CreateString(_output_text(description, fields))),
        ("offset", TENSOR_CONTENT, out_content),
        ("offset", TENSOR_FILES, _offset_vector(b, [labels])),
    ])
    custom = _table(b, 2, [("offset", CUSTOM_NAME, b.CreateString(SEGMENTER_METADATA)),
                           ("offset", CUSTOM_DATA, _aligned_bytes(b, segmenter_options(ACTIVATION_OF_OUTPUT[kind])))])
    subgraph = _table(b, SUBGRAPH_FIELDS, [
        ("offset", SUBGRAPH_NAME, b.CreateString("ImageSegmenter")),
        ("offset", SUBGRAPH_INPUTS, _offset_vector(b, [input_tensor])),
        ("offset", SUBGRAPH_OUTPUTS, _offset_vector(b, [output_tensor])),
        ("offset", SUBGRAPH_CUSTOM_METADATA, _offset_vector(b, [custom])),
    ])
    version = f" {description['tfseg_version']}" if description.get("tfseg_version") else ""
    root = _table(b, MODEL_FIELDS, [
        ("offset", MODEL_NAME, b.CreateString(str(description.get("model", "tfseg_model")))),
        ("offset", MODEL_DESCRIPTION, b.CreateString(
            f"Semantic segmentation of {len(classes)} classes ({description.get('dataset', 'unknown')}), "
            f"{description.get('quantization', 'none')} TFLite exported by tfseg{version}.")),
        ("offset", MODEL_SUBGRAPHS, _offset_vector(b, [subgraph])),
        ("offset", MODEL_AUTHOR, b.CreateString("tfseg")),
        ("offset", MODEL_MIN_PARSER_VERSION, b.CreateString(MIN_PARSER_VERSION)),
    ])
    b.Finish(root, file_identifier=METADATA_IDENTIFIER)
    return bytes(b.Output())


def associated_files_zip(files: dict) -> bytes:
    """An uncompressed zip archive of ``{name: bytes}`` (MediaPipe reads members in place, so stored)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # fixed: same model, same bytes
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def populate(tflite_bytes: bytes, description: dict) -> bytes:
    """Adds ``TFLITE_METADATA`` and the label file to a TFLite model (replacing earlier ones).

    The model must be what MediaPipe's ImageSegmenter runs: one subgraph, one input
    (1, H, W, channels) and one output (1, H, W, classes) matching ``description``.

    Args:
      tflite_bytes: the model (other metadata buffers, e.g. tfseg's JSON, are kept; bytes after
        the flatbuffer, such as an earlier label archive, are not).
      description: its ``tfseg/1`` description.

    Returns:
      The model with the metadata buffer, then the zip archive of ``labels.txt``.

    Raises:
      MetadataFormatError: the model's tensors do not fit the description or the segmenter contract.
    """
    where, fields = _fields(description)
    tensors = io_tensors(tflite_bytes)
    inputs, outputs = tensors["inputs"], tensors["outputs"]
    if tensors["subgraphs"] != 1 or len(inputs) != 1 or len(outputs) != 1:
        raise MetadataFormatError(
            f"{where}: MediaPipe's ImageSegmenter needs one subgraph with one input and one output; this model has "
            f"{tensors['subgraphs']} subgraph(s), {len(inputs)} input(s) and {len(outputs)} output(s)"
        )
    expected_in = [1, fields["height"], fields["width"], fields["channels"]]
    expected_out = [1, fields["out_height"], fields["out_width"], len(fields["classes"])]
    for what, tensor, expected in (("input", inputs[0], expected_in), ("output", outputs[0], expected_out)):
        if tensor["shape"] != expected:
            raise MetadataFormatError(
                f"{where}: {what} tensor {tensor['name']!r} has shape {tensor['shape']}, its description says {expected}"
            )
    metadata = build(description, input_name=inputs[0]["name"], output_name=outputs[0]["name"])
    model = embed_buffer(tflite_bytes, METADATA_NAME, metadata)
    return model + associated_files_zip({LABELS_FILE: label_file(fields["classes"], where)})


# ------------------------------------------------------------------------------ reading back


class _Table:
    """A FlatBuffer table read by field id through ``flatbuffers.table.Table``.

    Reads past the end of damaged data raise ``struct.error`` / ``IndexError``; ``parse`` turns
    them into a ``MetadataFormatError``.
    """

    def __init__(self, data: bytearray, position: int):
        self.data, self.table = data, table.Table(data, position)

    def _offset(self, field_id):
        return self.table.Offset(4 + 2 * field_id)  # the vtable: two uint16 sizes, then one per field

    def scalar(self, field_id, flags, default=0):
        offset = self._offset(field_id)
        return self.table.Get(flags, self.table.Pos + offset) if offset else default

    def _span(self, field_id, element_size):
        offset = self._offset(field_id)
        if not offset:
            return 0, 0
        start, count = self.table.Vector(offset), self.table.VectorLen(offset)
        if start + count * element_size > len(self.data):
            raise IndexError(f"a vector of {count} elements at {start} runs past the end")
        return start, count

    def string(self, field_id):
        offset = self._offset(field_id)
        if not offset:
            return None
        start, length = self._span(field_id, 1)
        return bytes(self.data[start : start + length]).decode("utf-8")

    def tables(self, field_id):
        start, count = self._span(field_id, 4)
        return [_Table(self.data, self.table.Indirect(start + 4 * i)) for i in range(count)]

    def child(self, field_id):
        offset = self._offset(field_id)
        return _Table(self.data, self.table.Indirect(self.table.Pos + offset)) if offset else None

    def floats(self, field_id):
        start, count = self._span(field_id, 4)
        return [float(v) for v in np.frombuffer(self.data, "<f4", count, start)] if count else []

    def raw(self, field_id):
        start, count = self._span(field_id, 1)
        return bytes(self.data[start : start + count])


def _root(data, identifier: bytes, what: str, where: str) -> _Table:
    if len(data) < 8 or bytes(data[4:8]) != identifier:
        raise MetadataFormatError(
            f"{where}: {what} is not a {identifier.decode()} FlatBuffer (identifier {bytes(data[4:8])!r})"
        )
    return _Table(bytearray(data), int.from_bytes(bytes(data[:4]), "little"))


def parse(metadata: bytes, where: str = "model") -> dict:
    """Reads a ``ModelMetadata`` FlatBuffer (what ``build`` writes) into a dict.

    Returns:
      ``{"name", "description", "min_parser_version", "input": {"name", "color_space",
      "default_size", "mean", "std", "min", "max"}, "output": {"name", "label_file"},
      "activation"}``; ``activation`` is None without ``SEGMENTER_METADATA``.

    Raises:
      MetadataFormatError: not a ``M001`` FlatBuffer, or damaged (naming ``where``).
    """
    try:
        return _parse(_root(metadata, METADATA_IDENTIFIER, METADATA_NAME, where), where)
    except (struct.error, IndexError, UnicodeDecodeError) as error:
        raise MetadataFormatError(f"{where}: damaged {METADATA_NAME} FlatBuffer ({type(error).__name__}: {error})") from None


def _parse(root: _Table, where: str) -> dict:
    subgraphs = root.tables(MODEL_SUBGRAPHS)
    if not subgraphs:
        raise MetadataFormatError(f"{where}: {METADATA_NAME} has no subgraph metadata")
    graph = subgraphs[0]
    inputs, outputs = graph.tables(SUBGRAPH_INPUTS), graph.tables(SUBGRAPH_OUTPUTS)
    if len(inputs) != 1 or len(outputs) != 1:
        raise MetadataFormatError(f"{where}: {METADATA_NAME} describes {len(inputs)} inputs and {len(outputs)} outputs, not 1 and 1")
    result = {
        "name": root.string(MODEL_NAME),
        "description": root.string(MODEL_DESCRIPTION),
        "min_parser_version": root.string(MODEL_MIN_PARSER_VERSION),
        "input": {"name": inputs[0].string(TENSOR_NAME), "color_space": None, "default_size": None,
                  "mean": None, "std": None, "min": None, "max": None},
        "output": {"name": outputs[0].string(TENSOR_NAME), "label_file": None},
        "activation": None,
    }
    content = inputs[0].child(TENSOR_CONTENT)
    if content is not None and content.scalar(CONTENT_PROPERTIES_TYPE, number_types.Uint8Flags) == CONTENT_IMAGE_PROPERTIES:
        image = content.child(CONTENT_PROPERTIES)
        space = image.scalar(IMAGE_COLOR_SPACE, number_types.Int8Flags)
        result["input"]["color_space"] = COLOR_SPACES[space] if 0 <= space < len(COLOR_SPACES) else f"unknown ({space})"
        size = image.child(IMAGE_DEFAULT_SIZE)
        if size is not None:
            result["input"]["default_size"] = (size.scalar(SIZE_HEIGHT, number_types.Uint32Flags),
                                               size.scalar(SIZE_WIDTH, number_types.Uint32Flags))
    for unit in inputs[0].tables(TENSOR_PROCESS_UNITS):
        if unit.scalar(PROCESS_OPTIONS_TYPE, number_types.Uint8Flags) == PROCESS_NORMALIZATION:
            options = unit.child(PROCESS_OPTIONS)
            result["input"]["mean"], result["input"]["std"] = options.floats(NORMALIZATION_MEAN), options.floats(NORMALIZATION_STD)
    stats = inputs[0].child(TENSOR_STATS)
    if stats is not None:
        result["input"]["min"], result["input"]["max"] = stats.floats(STATS_MIN), stats.floats(STATS_MAX)
    for file in outputs[0].tables(TENSOR_FILES):
        if file.scalar(FILE_TYPE, number_types.Int8Flags) == TENSOR_AXIS_LABELS:
            result["output"]["label_file"] = file.string(FILE_NAME)
            break
    for custom in graph.tables(SUBGRAPH_CUSTOM_METADATA):
        if custom.string(CUSTOM_NAME) == SEGMENTER_METADATA:
            options = _root(custom.raw(CUSTOM_DATA), SEGMENTER_IDENTIFIER, SEGMENTER_METADATA, where)
            value = options.scalar(SEGMENTER_ACTIVATION, number_types.Int8Flags)
            result["activation"] = ACTIVATIONS[value] if 0 <= value < len(ACTIVATIONS) else f"unknown ({value})"
    return result


def read(tflite_bytes: bytes, where: str = "model") -> dict | None:
    """The TFLite Model Metadata of a model, with its label file's class names.

    Returns:
      ``parse``'s dict plus ``"labels"`` (the class names, or None without a label file), or
      None when the model has no ``TFLITE_METADATA``.

    Raises:
      MetadataFormatError: the metadata is damaged, or names a label file the model's zip
        archive does not hold (naming ``where``).
    """
    metadata = read_buffer(tflite_bytes, METADATA_NAME)
    if metadata is None:
        return None
    result = parse(metadata, where)
    result["labels"] = None
    name = result["output"]["label_file"]
    if name is not None:
        try:
            with zipfile.ZipFile(io.BytesIO(tflite_bytes)) as archive:
                text = archive.read(name).decode("utf-8")
        except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as error:
            raise MetadataFormatError(f"{where}: cannot read the label file {name!r} that {METADATA_NAME} names ({error})") from None
        result["labels"] = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
    return result


__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_OF_OUTPUT",
    "CLASS_MAP_KINDS",
    "LABELS_FILE",
    "METADATA_NAME",
    "MIN_PARSER_VERSION",
    "MetadataFormatError",
    "SEGMENTER_METADATA",
    "associated_files_zip",
    "build",
    "label_file",
    "normalization_options",
    "parse",
    "populate",
    "read",
    "segmenter_options",
]
