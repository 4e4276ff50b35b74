"""Reads TFLite Model Metadata (the ``TFLITE_METADATA`` buffer MediaPipe Tasks reads) from a
``.tflite`` file: the class names of the output's label file, the input's normalisation and
colour space, and the segmenter's output activation.

tfseg writes it into every export (``tfseg.tflite_metadata``); MediaPipe's own metadata writers
and tflite-support's write the same schema, so their segmentation models read here too.

The metadata is a FlatBuffer (identifier ``M001``, the public ``metadata_schema.fbs``) read with
``tfseg_lite.flatbuffer``; the label file is a member of the zip archive appended to the model,
read with ``zipfile``. Fields read (ids in declaration order; a union takes two ids)::

    ModelMetadata    {name: string (0), subgraph_metadata: [SubGraphMetadata] (3)}
    SubGraphMetadata {input_tensor_metadata (2), output_tensor_metadata (3): [TensorMetadata],
                      custom_metadata: [CustomMetadata] (9)}
    TensorMetadata   {content: Content (3), process_units: [ProcessUnit] (4),
                      associated_files: [AssociatedFile] (6)}
    Content          {content_properties_type: ubyte (0), content_properties (1)}
    ImageProperties  {color_space: byte (0)}                  (ContentProperties 2)
    ProcessUnit      {options_type: ubyte (0), options (1)}
    NormalizationOptions {mean: [float] (0), std: [float] (1)}  (ProcessUnitOptions 1)
    AssociatedFile   {name: string (0), type: byte (2)}         (TENSOR_AXIS_LABELS = 2)
    CustomMetadata   {name: string (0), data: [ubyte] (1)}
    ImageSegmenterOptions {activation: byte (0)}  (the data of "SEGMENTER_METADATA", identifier V001)
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass

from tfseg_lite.errors import MetadataError
from tfseg_lite.flatbuffer import Reader, io_tensors, metadata_buffer, open_model

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
SEGMENTER_METADATA = "SEGMENTER_METADATA"
SEGMENTER_IDENTIFIER = b"V001"
ACTIVATIONS = ("NONE", "SIGMOID", "SOFTMAX")
COLOR_SPACES = ("UNKNOWN", "RGB", "GRAYSCALE")

_MODEL_NAME, _MODEL_SUBGRAPHS = 0, 3
_SUBGRAPH_INPUTS, _SUBGRAPH_OUTPUTS, _SUBGRAPH_CUSTOM = 2, 3, 9
_TENSOR_CONTENT, _TENSOR_PROCESS_UNITS, _TENSOR_FILES = 3, 4, 6
_CONTENT_TYPE, _CONTENT_PROPERTIES = 0, 1
_IMAGE_PROPERTIES = 2
_IMAGE_COLOR_SPACE = 0
_UNIT_TYPE, _UNIT_OPTIONS = 0, 1
_NORMALIZATION = 1
_MEAN, _STD = 0, 1
_FILE_NAME, _FILE_TYPE = 0, 2
_TENSOR_AXIS_LABELS = 2
_CUSTOM_NAME, _CUSTOM_DATA = 0, 1
_ACTIVATION = 0


@dataclass(frozen=True)
class ModelMetadata:
    """What a model's ``TFLITE_METADATA`` says, plus its tensors.

    Attributes:
      name: ``ModelMetadata.name`` (or None).
      labels: class names from the output's ``TENSOR_AXIS_LABELS`` file, or None without one.
      mean, std: ``NormalizationOptions`` of the input (the runner feeds ``(pixel - mean) / std``),
        or None without them.
      color_space: ``RGB``, ``GRAYSCALE``, ``UNKNOWN`` or None (no ImageProperties).
      activation: ``SEGMENTER_METADATA``'s activation (``NONE``, ``SIGMOID``, ``SOFTMAX``) or None.
      input_shape, input_dtype, output_shape: the model's first input and last output tensor
        (the ones MediaPipe's ImageSegmenter uses).
      num_outputs: how many output tensors the model has.
    """

    name: str | None
    labels: tuple | None
    mean: tuple | None
    std: tuple | None
    color_space: str | None
    activation: str | None
    input_shape: tuple
    input_dtype: str
    output_shape: tuple
    num_outputs: int

    def pixel_range(self, where: str) -> tuple[float, float] | None:
        """(low, high): where ``(x - mean) / std`` puts pixels 0 and 255; None without normalisation.

        Raises:
          MetadataError: per-channel values that differ (tfseg-lite, like MediaPipe, normalises
            all channels alike), or a zero std.
        """
        if self.mean is None:
            return None
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise MetadataError(f"{where}: NormalizationOptions must give 1 or 3 mean and std values, "
                                f"got {len(self.mean)} and {len(self.std)}")
        if len(set(self.mean)) != 1 or len(set(self.std)) != 1:
            raise MetadataError(f"{where}: per-channel NormalizationOptions (mean {list(self.mean)}, std "
                                f"{list(self.std)}) are not supported (nor by MediaPipe)")
        mean, std = self.mean[0], self.std[0]
        if abs(std) < 1e-12:
            raise MetadataError(f"{where}: NormalizationOptions std is 0")
        return (0.0 - mean) / std, (255.0 - mean) / std


def _parse(reader: Reader) -> dict:
    root = reader.root()
    subgraphs = reader.table_vector(root, _MODEL_SUBGRAPHS)
    if not subgraphs:
        raise reader.damaged("no subgraph metadata")
    graph = subgraphs[0]
    inputs, outputs = reader.table_vector(graph, _SUBGRAPH_INPUTS), reader.table_vector(graph, _SUBGRAPH_OUTPUTS)
    found = {"name": reader.string(root, _MODEL_NAME), "label_file": None, "mean": None, "std": None,
             "color_space": None, "activation": None}
    if inputs:
        content = reader.table(inputs[0], _TENSOR_CONTENT)
        if content is not None and reader.scalar(content, _CONTENT_TYPE, "<B") == _IMAGE_PROPERTIES:
            image = reader.table(content, _CONTENT_PROPERTIES)
            if image is not None:
                space = reader.scalar(image, _IMAGE_COLOR_SPACE, "<b")
                found["color_space"] = COLOR_SPACES[space] if 0 <= space < len(COLOR_SPACES) else "UNKNOWN"
        for unit in reader.table_vector(inputs[0], _TENSOR_PROCESS_UNITS):
            if reader.scalar(unit, _UNIT_TYPE, "<B") == _NORMALIZATION:
                options = reader.table(unit, _UNIT_OPTIONS)
                if options is not None:
                    found["mean"] = tuple(reader.floats(options, _MEAN))
                    found["std"] = tuple(reader.floats(options, _STD))
    if outputs:  # MediaPipe takes the labels of the last output
        for file in reader.table_vector(outputs[-1], _TENSOR_FILES):
            if reader.scalar(file, _FILE_TYPE, "<b") == _TENSOR_AXIS_LABELS:
                found["label_file"] = reader.string(file, _FILE_NAME)
                break
    for custom in reader.table_vector(graph, _SUBGRAPH_CUSTOM):
        if reader.string(custom, _CUSTOM_NAME) != SEGMENTER_METADATA:
            continue
        data = reader.blob(custom, _CUSTOM_DATA) or b""
        options = Reader(data, reader.name, f"{SEGMENTER_METADATA} of the {METADATA_NAME} buffer", MetadataError)
        if options.identifier() != SEGMENTER_IDENTIFIER:
            raise options.damaged(f"identifier {options.identifier()!r}, expected {SEGMENTER_IDENTIFIER!r}")
        value = options.scalar(options.root(), _ACTIVATION, "<b")
        if not 0 <= value < len(ACTIVATIONS):
            raise options.damaged(f"unknown activation {value}")
        found["activation"] = ACTIVATIONS[value]
    return found


def _labels(path, name: str) -> tuple:
    """The class names of the label file ``name`` in the zip archive appended to the model."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read(name).decode("utf-8")
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, OSError) as err:
        raise MetadataError(f"{path}: cannot read the label file {name!r} that its {METADATA_NAME} names ({err})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":  # a final newline ends the last line, it does not add a class
        lines.pop()
    return tuple(line.rstrip("\r") for line in lines)


def read(path) -> ModelMetadata | None:
    """The TFLite Model Metadata of a ``.tflite`` file, or None when it has none.

    Raises:
      FileNotFoundError: no such file.
      ModelError: not a TFLite model, or a damaged one.
      MetadataError: the ``TFLITE_METADATA`` buffer is damaged, or the label file it names is
        missing. Every message names the file.
    """
    with open_model(path) as model:
        data = metadata_buffer(model, METADATA_NAME)
        if data is None:
            return None
        inputs, outputs = io_tensors(model)
    if not inputs or not outputs:
        raise MetadataError(f"{path}: the model has {len(inputs)} inputs and {len(outputs)} outputs")
    reader = Reader(data, str(path), f"{METADATA_NAME} buffer", MetadataError)
    if reader.identifier() != METADATA_IDENTIFIER:
        raise reader.damaged(f"identifier {reader.identifier()!r}, expected {METADATA_IDENTIFIER!r}")
    found = _parse(reader)
    return ModelMetadata(
        name=found["name"],
        labels=None if found["label_file"] is None else _labels(path, found["label_file"]),
        mean=found["mean"],
        std=found["std"],
        color_space=found["color_space"],
        activation=found["activation"],
        input_shape=tuple(inputs[0]["shape"]),
        input_dtype=inputs[0]["dtype"],
        output_shape=tuple(outputs[-1]["shape"]),
        num_outputs=len(outputs),
    )


__all__ = ["METADATA_NAME", "ModelMetadata", "read"]
