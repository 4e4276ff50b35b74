"""TFLite Model Metadata in every .tflite export (tfseg.tflite_metadata): what MediaPipe Tasks'
ImageSegmenter reads (normalisation, RGB input, the label file, the output activation) is written
and reads back; the writer refuses what would break a segmenter; damage is reported by name.

That MediaPipe itself loads these files and gets LiteRT's class map is tests/test_mediapipe_slow.py
(opt-in: it needs mediapipe in some interpreter); tfseg-lite's reader is export/tests.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from tfseg import export, tflite_metadata
from tfseg._keras import keras
from tfseg.data.info import DatasetInfo
from tfseg.errors import ConfigError
from tfseg.tflite import read_buffer, read_metadata, to_tflite_bytes
from tfseg.tflite_metadata import MetadataFormatError

SIZE = (24, 32)
INFO = DatasetInfo(name="tiny", class_names=("road", "parked car", "sky"),
                   palette=((128, 64, 128), (64, 0, 128), (128, 128, 128)))


def small_net():
    """Conv, depthwise, bilinear upsampling behind tfseg's in-graph normalisation: converts in about a second."""
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inputs = layers.Input((*SIZE, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Conv2D(len(INFO.class_names), 1)(x)
    return keras.Model(inputs, layers.UpSampling2D(2, interpolation="bilinear")(x), name="small_net")


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"none": path, "int8": path} written by tfseg.export.to_tflite, and the model."""
    root = tmp_path_factory.mktemp("exports")
    model = small_net()
    calibration = np.random.default_rng(0).uniform(0, 255, (8, *SIZE, 3)).astype(np.float32)
    calibration[0, 0, 0], calibration[0, 0, 1] = 0, 255  # the full pixel range: uint8 input scale 1
    paths = {}
    for quantization in ("none", "int8"):
        paths[quantization] = root / f"{quantization}.tflite"
        export.to_tflite(model, paths[quantization], quantization, info=INFO, model_name="small_net",
                         representative_data=calibration if quantization == "int8" else None)
    return paths, model


def description(classes=INFO.class_names, height=SIZE[0], pixel_range=(0, 255), kind="logits"):
    """The fields of a tfseg/1 description the writer reads."""
    return {
        "model": "small_net", "dataset": "tiny", "tfseg_version": "0.1.0", "classes": list(classes),
        "input": {"height": height, "width": SIZE[1], "channels": 3, "dtype": "float32",
                  "pixel_range": list(pixel_range)},
        "output": {"kind": kind, "height": height, "width": SIZE[1]},
        "quantization": "none",
    }


@pytest.mark.parametrize("quantization, input_dtype", [("none", "float32"), ("int8", "uint8")])
def test_exports_carry_the_metadata_mediapipe_reads(exports, quantization, input_dtype):
    paths, _ = exports
    data = paths[quantization].read_bytes()
    found = tflite_metadata.read(data, str(paths[quantization]))
    assert found["labels"] == ["road", "parked car", "sky"]
    # The model takes raw [0, 255] pixels and normalises inside: (x - 0) / 1, one value for all channels.
    assert found["input"]["mean"] == [0.0] and found["input"]["std"] == [1.0]
    assert found["input"]["color_space"] == "RGB" and found["input"]["default_size"] == SIZE
    assert found["input"]["min"] == [0.0] and found["input"]["max"] == [255.0]
    # Logits out: MediaPipe applies softmax for its confidence masks (its category mask is the argmax either way).
    assert found["activation"] == "SOFTMAX"
    assert found["output"]["label_file"] == "labels.txt" and found["min_parser_version"] == "1.5.0"
    assert found["name"] == "small_net"
    assert read_buffer(data, "TFLITE_METADATA")[4:8] == b"M001"
    # The label file is stored uncompressed (MediaPipe reads it in place) in a zip after the flatbuffer.
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (member,) = archive.infolist()
        assert member.filename == "labels.txt" and member.compress_type == zipfile.ZIP_STORED
        assert archive.read(member) == b"road\nparked car\nsky\n"
    # The tfseg JSON stays embedded and beside the file.
    embedded = read_metadata(data)
    assert embedded["classes"] == list(INFO.class_names) and embedded["input"]["dtype"] == input_dtype
    assert export.sidecar_path(paths[quantization]).is_file()


def test_the_metadata_describes_a_single_output_segmenter(exports):
    paths, model = exports
    with pytest.raises(MetadataFormatError, match="input tensor .* has shape .*24, 32, 3.*description says .*25"):
        tflite_metadata.populate(to_tflite_bytes(model), description(height=25))
    two_outputs = keras.Model(model.inputs, [model.output, model.output])
    with pytest.raises(MetadataFormatError, match="one input and one output; this model has 1 subgraph.*2 output"):
        tflite_metadata.populate(to_tflite_bytes(two_outputs), description())


def test_writing_again_replaces_the_metadata_and_the_label_file(exports):
    paths, _ = exports
    data = tflite_metadata.populate(paths["none"].read_bytes(), description(classes=("a", "b", "c")))
    found = tflite_metadata.read(data)
    assert found["labels"] == ["a", "b", "c"]
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.namelist() == ["labels.txt"]
    from tensorflow.lite.tools import flatbuffer_utils

    names = [entry.name.decode() for entry in flatbuffer_utils.convert_bytearray_to_object(bytearray(data)).metadata]
    assert names.count("TFLITE_METADATA") == 1 and names.count("tfseg") == 1


@pytest.mark.parametrize("name", ["two\nlines", "", "cr\r"])
def test_class_names_that_would_shift_the_labels_are_refused(name):
    with pytest.raises(MetadataFormatError, match=r"model 'small_net': class 1 is named"):
        tflite_metadata.build(description(classes=("road", name, "sky")))


def test_normalization_options_map_pixels_onto_the_pixel_range():
    assert tflite_metadata.normalization_options([0, 255]) == (0.0, 1.0)
    assert tflite_metadata.normalization_options([-1, 1]) == (127.5, 127.5)
    assert tflite_metadata.normalization_options([0, 1]) == (0.0, 255.0)
    found = tflite_metadata.parse(tflite_metadata.build(description(pixel_range=(-1, 1), kind="probabilities")))
    assert found["input"]["mean"] == [127.5] and found["input"]["std"] == [127.5]
    assert found["activation"] == "NONE"  # probabilities already
    with pytest.raises(MetadataFormatError, match="low < high"):
        tflite_metadata.normalization_options([255, 0])


def test_damaged_metadata_is_reported_with_the_models_name(exports):
    paths, _ = exports
    data = bytearray(paths["none"].read_bytes())
    metadata = read_buffer(bytes(data), "TFLITE_METADATA")
    start = bytes(data).find(metadata)
    wrong_identifier = bytearray(data)
    wrong_identifier[start + 4 : start + 8] = b"XXXX"
    with pytest.raises(MetadataFormatError, match=r"none\.tflite: TFLITE_METADATA is not a M001 FlatBuffer"):
        tflite_metadata.read(bytes(wrong_identifier), str(paths["none"]))
    garbage = bytearray(data)
    garbage[start : start + 4] = (len(metadata) + 1000).to_bytes(4, "little")  # root offset past the end
    with pytest.raises(MetadataFormatError, match=r"none\.tflite: damaged TFLITE_METADATA FlatBuffer"):
        tflite_metadata.read(bytes(garbage), str(paths["none"]))
    no_zip = bytes(data)[: bytes(data).rfind(b"PK\x03\x04")]
    with pytest.raises(MetadataFormatError, match=r"none\.tflite: cannot read the label file 'labels.txt'"):
        tflite_metadata.read(no_zip, str(paths["none"]))


def test_uint8_input_that_is_not_raw_pixels_is_flagged(tmp_path):
    """MediaPipe feeds uint8 inputs the image bytes; calibration that misses 0..255 makes the input expect others."""
    narrow = np.random.default_rng(0).uniform(20, 200, (4, *SIZE, 3)).astype(np.float32)
    path = tmp_path / "narrow.tflite"
    with pytest.warns(UserWarning, match="scale .* not 1 and 0 .*MediaPipe feeds raw pixels") as caught:
        export.to_tflite(small_net(), path, "int8", info=INFO, representative_data=narrow)
    assert any(str(path) in str(w.message) for w in caught)  # the warning names the file
    from ai_edge_litert.interpreter import Interpreter

    scale, _ = Interpreter(model_path=str(path)).get_input_details()[0]["quantization"]
    assert path.is_file() and scale != 1.0  # still written, and its input really expects other values


def test_to_tflite_reports_unwritable_labels_as_config_errors(tmp_path):
    bad = DatasetInfo(name="bad", class_names=("road", "a\nb", "sky"), palette=INFO.palette)
    with pytest.raises(ConfigError, match=r"bad\.tflite: model 'small_net': class 1 is named 'a\\nb'"):
        export.to_tflite(small_net(), tmp_path / "bad.tflite", "none", info=bad)
    assert not (tmp_path / "bad.tflite").exists()
