"""Reads a tfseg model's description without TensorFlow or the flatbuffers package.

Two descriptions can be in a ``.tflite`` file (see ``docs/export_format.md`` in the tfseg
repository), and one beside it:

- the ``tfseg/1`` JSON, a TFLite metadata entry named ``tfseg`` (classes, palette, input size
  and dtype, quantization, ...);
- TFLite Model Metadata (``TFLITE_METADATA``, what MediaPipe Tasks reads): the class names as the
  output's label file, the input's normalisation, the output activation
  (``tfseg_lite.tflite_metadata``);
- a sidecar ``<file>.json`` with the ``tfseg/1`` JSON, for older exports.

The embedded JSON wins over the sidecar. When the file has TFLite Model Metadata, its class names
and normalisation are the ones used, and a JSON description that says otherwise is an error; a
file with TFLite Model Metadata alone (e.g. written by MediaPipe's metadata writer) is described
from it and its tensors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from tfseg_lite import tflite_metadata
from tfseg_lite.errors import MetadataError, ModelError, TfsegLiteError
from tfseg_lite.flatbuffer import is_tflite, metadata_buffer, open_model

METADATA_NAME = "tfseg"
FORMAT = "tfseg/1"
INPUT_DTYPES = ("uint8", "int8", "float32")
OUTPUT_KINDS = ("logits", "probabilities", "low_res_logits", "class_map")
# Outputs at the model's own stride (tfseg export --output): mapped onto the input by ``upsampling``.
LOW_RES_KINDS = ("low_res_logits", "class_map")
UPSAMPLING_METHODS = ("bilinear", "nearest")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# An activation applied after the model means it outputs scores before it (and NONE: final scores).
OUTPUT_KIND_OF_ACTIVATION = {"SOFTMAX": "logits", "SIGMOID": "logits", "NONE": "probabilities"}


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
    with open_model(path) as reader:
        return metadata_buffer(reader, name)


@dataclass(frozen=True)
class Upsampling:
    """How a low-resolution output lines up with the input pixels (``output.upsampling``).

    Resize the (h, w) output to ``size`` with ``method`` and half-pixel centres (as TensorFlow's
    ``tf.image.resize`` and Keras' ``UpSampling2D``), then keep the window of the input's size
    whose top-left corner is ``offset``: input pixel (y, x) sits at output coordinate
    ``((y + offset[0] + 0.5) * h / size[0] - 0.5, (x + offset[1] + 0.5) * w / size[1] - 0.5)``.

    Attributes:
      method: ``bilinear`` (logits: what the model's own final layer did) or ``nearest`` (class ids).
      size: (height, width) the output is resized to.
      offset: (top, left) of the input-sized window in it.
      output_size: (h, w) of the output tensor.
      stride: input pixels per output pixel (informative), or None.
    """

    method: str
    size: tuple
    offset: tuple
    output_size: tuple
    stride: tuple | None = None


@dataclass(frozen=True)
class Metadata:
    """A validated ``tfseg/1`` model description.

    Attributes:
      classes: class names, index = class id.
      palette: one (r, g, b) per class.
      height, width, channels: the model's input size.
      input_dtype: ``uint8``, ``int8`` or ``float32``.
      pixel_range: (low, high) pixel values the model takes (RGB values, mapped from 0..255).
      output_kind: ``logits`` or ``probabilities`` at the input size (argmax gives the class map
        either way), ``low_res_logits`` (logits at the model's stride) or ``class_map`` (class ids
        at the model's stride, shape (1, h, w)).
      quantization: ``none``, ``float16``, ``dynamic`` or ``int8``.
      model: the architecture's name (informative).
      dataset: the training data set's name (informative).
      ignore_label: the label value that means "void" in training masks, or None.
      normalization: how the model normalises pixels, as text (informative: tfseg models do it
        inside the graph, so the runner only feeds pixels in ``pixel_range``).
      source: where the description came from: ``embedded`` (the tfseg JSON in the file), the
        sidecar's path, or ``TFLITE_METADATA`` (TFLite Model Metadata alone).
      activation: the output activation of the file's TFLite Model Metadata (``NONE``,
        ``SIGMOID``, ``SOFTMAX``), or None.
      tflite_metadata: whether the file has TFLite Model Metadata (then ``classes`` and
        ``pixel_range`` come from it).
      upsampling: for ``low_res_logits`` and ``class_map``, how the output maps onto the input
        pixels (``Upsampling``); None for outputs at the input size.
      raw: the whole JSON, unknown keys included (empty when described by TFLite Model Metadata alone).
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
    activation: str | None = None
    tflite_metadata: bool = False
    upsampling: Upsampling | None = None
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


def _int_pair(value, what: str, where: str, minimum: int) -> tuple:
    if not isinstance(value, list) or len(value) != 2:
        raise MetadataError(f"{where}: {what} must be [height, width] (or [top, left]), got {value!r}")
    return tuple(_int(v, what, where, minimum) for v in value)


def _upsampling(out: dict, kind: str, height: int, width: int, where: str) -> Upsampling | None:
    """The checked ``output.upsampling`` of a low-resolution output (None for the others)."""
    if kind not in LOW_RES_KINDS:
        return None
    up = out.get("upsampling")
    if not isinstance(up, dict):
        raise MetadataError(f"{where}: a {kind} output needs output.upsampling (method, size, offset): "
                            "how its pixels map onto the input")
    method = up.get("method")
    if method not in UPSAMPLING_METHODS:
        raise MetadataError(f"{where}: output.upsampling.method must be one of {UPSAMPLING_METHODS}, got {method!r}")
    size = _int_pair(up.get("size"), "output.upsampling.size", where, 1)
    offset = _int_pair(up.get("offset", [0, 0]), "output.upsampling.offset", where, 0)
    if offset[0] + height > size[0] or offset[1] + width > size[1]:
        raise MetadataError(f"{where}: output.upsampling: a {height}x{width} window at offset {list(offset)} "
                            f"does not fit in size {list(size)}")
    output_size = (_int(out.get("height"), "output.height", where), _int(out.get("width"), "output.width", where))
    stride = out.get("stride")
    return Upsampling(method, size, offset, output_size, tuple(stride) if isinstance(stride, list) else None)


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
    upsampling = _upsampling(out, kind, height, width, where)
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
        upsampling=upsampling,
        raw=description,
    )


def sidecar_path(model_path) -> Path:
    """The sidecar description's path: ``<model file>.json`` (e.g. ``student.tflite.json``)."""
    return Path(str(model_path) + ".json")


def _color_space_fits(channels: int, standard, where: str):
    expected = {3: "RGB", 1: "GRAYSCALE"}[channels]
    if standard.color_space not in (None, "UNKNOWN", expected):
        raise MetadataError(f"{where}: its TFLITE_METADATA says the input is {standard.color_space}, "
                            f"but the input has {channels} channel(s)")


def _agree(described: Metadata, standard, where: str) -> Metadata:
    """The JSON description, checked against the file's TFLite Model Metadata (the two must agree)."""
    if standard.labels is not None and standard.labels != described.classes:
        raise MetadataError(
            f"{where}: the class names of its TFLITE_METADATA label file {list(standard.labels)} differ from "
            f"those of its tfseg description ({described.source}) {list(described.classes)}"
        )
    pixel_range = standard.pixel_range(where)
    if pixel_range is not None:
        low, high = described.pixel_range
        tolerance = 1e-4 * (high - low)
        if abs(pixel_range[0] - low) > tolerance or abs(pixel_range[1] - high) > tolerance:
            raise MetadataError(
                f"{where}: its TFLITE_METADATA normalisation (mean {list(standard.mean)}, std {list(standard.std)}) "
                f"maps pixels onto [{pixel_range[0]:g}, {pixel_range[1]:g}], its tfseg description "
                f"({described.source}) says pixel_range [{low:g}, {high:g}]"
            )
    _color_space_fits(described.channels, standard, where)
    return replace(described, activation=standard.activation, tflite_metadata=True)


def from_tflite_metadata(standard, where: str) -> Metadata:
    """A description from TFLite Model Metadata and the model's tensors alone (no tfseg JSON).

    Classes come from the label file (``class_0``, ``class_1``, ... without one), the pixel range
    from NormalizationOptions (a uint8 input without them takes raw pixels, as in MediaPipe), the
    size and dtype from the input tensor; the palette is the default one and ``quantization`` is
    inferred from the input dtype (``int8`` for integer inputs, else ``none``: informative only).

    Raises:
      MetadataError: tensors a segmenter cannot have, or metadata that contradicts them.
    """
    shape, out = standard.input_shape, standard.output_shape
    if len(shape) != 4 or shape[0] != 1 or min(shape) < 1:
        raise MetadataError(f"{where}: the input tensor has shape {shape}, not (1, height, width, channels)")
    if len(out) != 4 or out[0] != 1 or min(out) < 1:
        raise MetadataError(f"{where}: the output tensor has shape {out}, not (1, height, width, classes)")
    height, width, channels = (int(d) for d in shape[1:])
    if channels not in (1, 3):
        raise MetadataError(f"{where}: the input has {channels} channels; 1 or 3 are supported")
    if standard.input_dtype not in INPUT_DTYPES:
        raise MetadataError(f"{where}: the input tensor is {standard.input_dtype}; one of {INPUT_DTYPES} is supported")
    _color_space_fits(channels, standard, where)
    num_classes = int(out[-1])
    classes = standard.labels if standard.labels is not None else tuple(f"class_{i}" for i in range(num_classes))
    if len(classes) != num_classes:
        raise MetadataError(f"{where}: its TFLITE_METADATA label file names {len(classes)} classes, "
                            f"the output has {num_classes}")
    pixel_range = standard.pixel_range(where)
    if pixel_range is None:
        if standard.input_dtype == "float32":
            raise MetadataError(f"{where}: a float32 input without NormalizationOptions in its TFLITE_METADATA: "
                                "the pixel range it takes is unknown (MediaPipe refuses such models too)")
        pixel_range, text = (0.0, 255.0), "none in the metadata: raw pixels"
    else:
        text = f"(x - {standard.mean[0]:g}) / {standard.std[0]:g} from TFLite Model Metadata"
    return Metadata(
        classes=tuple(classes),
        palette=tuple(tuple(c) for c in default_palette(num_classes)),
        height=height,
        width=width,
        channels=channels,
        input_dtype=standard.input_dtype,
        pixel_range=pixel_range,
        output_kind=OUTPUT_KIND_OF_ACTIVATION.get(standard.activation, "logits"),
        quantization="int8" if standard.input_dtype in ("uint8", "int8") else "none",
        model=standard.name or "unknown",
        normalization=text,
        source=tflite_metadata.METADATA_NAME,
        activation=standard.activation,
        tflite_metadata=True,
    )


def load(model_path) -> Metadata:
    """The description of a model: its tfseg JSON (embedded, else the sidecar) and its TFLite Model Metadata.

    Args:
      model_path: a ``.tflite`` file exported by tfseg (or one with TFLite Model Metadata).

    Returns:
      The validated Metadata. With TFLite Model Metadata in the file, its class names and
      normalisation are used (checked against the JSON when there is one).

    Raises:
      FileNotFoundError: the model file does not exist.
      ModelError: the file is not a TFLite model, or it is damaged.
      MetadataError: there is no description at all, a description is damaged or not valid
        JSON, it breaks the ``tfseg/1`` contract, or the two descriptions disagree. Every
        message names the file.
    """
    path = Path(model_path)
    payload = read_embedded(path)
    standard = tflite_metadata.read(path)
    described = None
    sidecar = sidecar_path(path)
    if payload is not None:
        try:
            description = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MetadataError(f"{path}: the embedded '{METADATA_NAME}' metadata is not valid JSON ({err})") from err
        described = parse(description, str(path), "embedded")
    elif sidecar.is_file():
        try:
            description = json.loads(sidecar.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise MetadataError(f"{sidecar}: not valid JSON ({err})") from err
        described = parse(description, str(sidecar), str(sidecar))
    if standard is not None:
        return from_tflite_metadata(standard, str(path)) if described is None else _agree(described, standard, str(path))
    if described is not None:
        return described
    raise MetadataError(
        f"{path} has no tfseg description: no '{METADATA_NAME}' entry and no TFLITE_METADATA (TFLite Model Metadata) "
        f"in the file, and no sidecar {sidecar.name}. Export the model with tfseg, which embeds both "
        "(tfseg.export.to_tflite; tfseg.tflite.embed_metadata on a converted model), or write the sidecar "
        "JSON described in tfseg's docs/export_format.md next to the model."
    )


__all__ = [
    "FORMAT",
    "METADATA_NAME",
    "Metadata",
    "MetadataError",
    "ModelError",
    "TfsegLiteError",
    "Upsampling",
    "default_palette",
    "from_tflite_metadata",
    "is_tflite",
    "load",
    "parse",
    "read_embedded",
    "sidecar_path",
]
