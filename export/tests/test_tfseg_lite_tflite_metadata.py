"""tfseg-lite reads TFLite Model Metadata (TFLITE_METADATA, what MediaPipe reads) from the .tflite
file itself: class names from the label file, the pixel range from NormalizationOptions, the
output activation; with the tfseg JSON, from either alone, or from an old file's sidecar.

Its reader (struct + zipfile, no flatbuffers package) is checked against tfseg's writer and reader.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXPORT_DIR = Path(__file__).resolve().parents[1]
if str(EXPORT_DIR) not in sys.path:
    sys.path.insert(0, str(EXPORT_DIR))

from tfseg_lite import MetadataError, Segmenter, metadata, tflite_metadata  # noqa: E402

H, W = 24, 32
CLASSES = ("road", "parked car", "sky")


def small_net():
    from tfseg._keras import keras

    keras.utils.set_random_seed(1)
    layers = keras.layers
    inputs = layers.Input((H, W, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Conv2D(len(CLASSES), 1)(x)
    return keras.Model(inputs, layers.UpSampling2D(2, interpolation="bilinear")(x), name="small_net")


def images(count, seed):
    """Blocky colour images with noise, spanning 0..255."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, H // 8 + 1, W // 8 + 1, 3))
    base = np.kron(coarse, np.ones((1, 8, 8, 1)))[:, :H, :W]
    out = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.float32)
    out[0, 0, 0], out[0, 0, 1] = 0, 255
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """For float32 and int8: the full export, a TFLITE_METADATA-only file, and an old sidecar-only file."""
    from tfseg import export, tflite, tflite_metadata as writer
    from tfseg.data.info import DatasetInfo

    root = tmp_path_factory.mktemp("files")
    info = DatasetInfo(name="tiny", class_names=CLASSES, palette=((1, 2, 3), (4, 5, 6), (7, 8, 9)))
    model = small_net()
    paths = {}
    for kind, quantization in (("float", "none"), ("int8", "int8")):
        full = root / f"{kind}.tflite"
        result = export.to_tflite(model, full, quantization, info=info, model_name="small_net",
                                  representative_data=images(8, 0) if kind == "int8" else None)
        raw = tflite.to_tflite_bytes(model, None if kind == "float" else "int8", images(8, 0), io_dtype="uint8")
        # The same model as it came from the converter (no metadata of tfseg's), then only MediaPipe's metadata.
        only = root / f"{kind}_tflite_metadata_only.tflite"
        only.write_bytes(writer.populate(raw, result["metadata"]))
        old = root / f"{kind}_old.tflite"
        old.write_bytes(raw)
        metadata.sidecar_path(old).write_text(json.dumps(result["metadata"]))
        paths.update({kind: full, f"{kind}_only": only, f"{kind}_old": old, f"{kind}_description": result["metadata"]})
    return paths


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_labels_and_normalization_come_from_the_file_alone(files, kind):
    only = files[f"{kind}_only"]
    assert not metadata.sidecar_path(only).exists() and metadata.read_embedded(only) is None
    meta = metadata.load(only)
    assert meta.classes == CLASSES and meta.pixel_range == (0.0, 255.0)
    assert meta.activation == "SOFTMAX" and meta.output_kind == "logits" and meta.tflite_metadata
    assert meta.source == "TFLITE_METADATA" and meta.model == "small_net"
    assert (meta.height, meta.width, meta.channels) == (H, W, 3)
    assert meta.input_dtype == ("float32" if kind == "float" else "uint8")
    picture = Image.fromarray(images(1, 7)[0].astype(np.uint8))
    from_file_alone = Segmenter(only, num_threads=1).predict(picture)
    full = Segmenter(files[kind], num_threads=1)
    np.testing.assert_array_equal(from_file_alone, full.predict(picture))
    assert full.metadata.source == "embedded" and full.metadata.tflite_metadata
    assert full.describe()["metadata"] == "embedded + TFLITE_METADATA"
    assert len(np.unique(from_file_alone)) > 1  # a class map with something in it


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_reader_agrees_with_tfsegs_reader(files, kind):
    from tfseg import tflite_metadata as writer

    expected = writer.read(files[kind].read_bytes())
    got = tflite_metadata.read(files[kind])
    assert list(got.labels) == expected["labels"]
    assert list(got.mean) == expected["input"]["mean"] and list(got.std) == expected["input"]["std"]
    assert got.activation == expected["activation"] and got.color_space == expected["input"]["color_space"]
    assert got.input_shape == (1, H, W, 3) and got.output_shape == (1, H, W, 3) and got.num_outputs == 1


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_old_files_with_only_the_sidecar_still_work(files, kind):
    old = files[f"{kind}_old"]
    assert tflite_metadata.read(old) is None and metadata.read_embedded(old) is None
    meta = metadata.load(old)
    assert meta.source == str(metadata.sidecar_path(old)) and not meta.tflite_metadata and meta.activation is None
    assert meta.classes == CLASSES and meta.palette == ((1, 2, 3), (4, 5, 6), (7, 8, 9))
    picture = Image.fromarray(images(1, 8)[0].astype(np.uint8))
    np.testing.assert_array_equal(Segmenter(old, num_threads=1).predict(picture),
                                  Segmenter(files[kind], num_threads=1).predict(picture))


def test_a_json_description_that_contradicts_the_tflite_metadata_is_refused(files, tmp_path):
    from tfseg import tflite, tflite_metadata as writer

    description = files["float_description"]
    raw = files["float_old"].read_bytes()
    renamed = tmp_path / "renamed.tflite"
    renamed.write_bytes(writer.populate(tflite.embed_metadata(raw, description), {**description, "classes": ["a", "b", "c"]}))
    with pytest.raises(MetadataError, match=r"renamed\.tflite: the class names of its TFLITE_METADATA label file "
                                            r"\['a', 'b', 'c'\] differ .*'road', 'parked car', 'sky'"):
        metadata.load(renamed)
    other_range = {**description, "input": {**description["input"], "pixel_range": [-1, 1]}}
    rescaled = tmp_path / "rescaled.tflite"
    rescaled.write_bytes(writer.populate(tflite.embed_metadata(raw, description), other_range))
    with pytest.raises(MetadataError, match=r"rescaled\.tflite: its TFLITE_METADATA normalisation \(mean \[127\.5\], "
                                            r"std \[127\.5\]\) maps pixels onto \[-1, 1\].*\[0, 255\]"):
        metadata.load(rescaled)


def test_normalization_other_than_raw_pixels_is_applied(files, tmp_path):
    """A model that takes [-1, 1] (mean 127.5, std 127.5, as MediaPipe's own segmenters): the runner maps pixels so."""
    from tfseg import tflite_metadata as writer

    description = files["float_description"]
    path = tmp_path / "minus_one_to_one.tflite"
    raw = files["float_old"].read_bytes()
    path.write_bytes(writer.populate(raw, {**description, "input": {**description["input"], "pixel_range": [-1, 1]}}))
    seg = Segmenter(path, num_threads=1)
    assert seg.metadata.pixel_range == (-1.0, 1.0)
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)[..., None].repeat(3, axis=-1)
    tensor = seg.preprocess(Image.fromarray(pixels).resize((W, H), Image.NEAREST))
    assert tensor.dtype == np.float32
    np.testing.assert_allclose([tensor.min(), tensor.max()], [-1.0, 1.0])


def _metadata_span(data: bytes):
    """Where the TFLITE_METADATA buffer's bytes sit in the file (found by tfseg's reader)."""
    from tfseg.tflite import read_buffer

    buffer = read_buffer(data, "TFLITE_METADATA")
    return data.find(buffer), len(buffer)


@pytest.mark.parametrize("damage, words", [
    ("identifier", r"damaged TFLITE_METADATA buffer \(identifier b'XXXX', expected b'M001'\)"),
    ("root", r"damaged TFLITE_METADATA buffer \(offset \d+ is outside its \d+ bytes\)"),
    ("no_zip", r"cannot read the label file 'labels.txt' that its TFLITE_METADATA names"),
], ids=["identifier", "root-offset", "label-file-missing"])
def test_corrupted_metadata_gives_an_error_naming_the_file(files, tmp_path, damage, words):
    data = bytearray(files["int8"].read_bytes())
    start, length = _metadata_span(bytes(data))
    if damage == "identifier":
        data[start + 4 : start + 8] = b"XXXX"
    elif damage == "root":
        data[start : start + 4] = (length + 4096).to_bytes(4, "little")
    else:
        data = data[: bytes(data).rfind(b"PK\x03\x04")]
    path = tmp_path / "corrupted.tflite"
    path.write_bytes(bytes(data))
    with pytest.raises(MetadataError, match=r"corrupted\.tflite: " + words):
        Segmenter(path, num_threads=1)
