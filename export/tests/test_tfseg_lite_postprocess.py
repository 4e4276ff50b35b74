"""tfseg-lite's fast paths between the camera frame and the class map (issue 20), against their references.

- ``BilinearArgmax`` (low_res_logits: upsampling only near class boundaries) against
  ``np.argmax(upsample_bilinear(...))`` on random logits: int8, uint8 and float32, odd sizes,
  non-integer strides, windows at an offset, ties, more than 256 classes;
- the pixel mapping shortcuts against the lookup table they replace;
- ``Segmenter.predict`` on a small low-resolution export (made here with tfseg, padded and
  cropped inside so that its window has an offset) against preprocessing and postprocessing
  written out independently here, for frames of the model's size and of another size.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXPORT_DIR = Path(__file__).resolve().parents[1]
if str(EXPORT_DIR) not in sys.path:
    sys.path.insert(0, str(EXPORT_DIR))

from tfseg_lite import Segmenter, metadata  # noqa: E402
from tfseg_lite.metadata import Upsampling  # noqa: E402
from tfseg_lite.postprocess import BilinearArgmax, resize_low_res_nearest, upsample_argmax, upsample_bilinear  # noqa: E402


def reference(scores, up, height, width):
    return np.argmax(upsample_bilinear(scores, up, height, width), axis=-1)


def smooth_scores(rng, low_size, classes, dtype, blob=3):
    """Logits like a network's: smooth blobs per class (regions and boundaries), plus noise."""
    h, w = low_size
    coarse = rng.normal(0, 1, (classes, h // blob + 2, w // blob + 2)).astype(np.float32)
    planes = [np.asarray(Image.fromarray(plane, "F").resize((w, h), Image.BICUBIC)) for plane in coarse]
    scores = np.stack(planes, axis=-1) * 4 + rng.normal(0, 0.3, (h, w, classes))
    if dtype == np.float32:
        return scores.astype(np.float32)
    info = np.iinfo(dtype)
    return np.clip(np.rint(scores * 8 + (info.min + info.max) / 2), info.min, info.max).astype(dtype)


# (low size, upsampling size, offset, window): the LR-ASPP and DeepLabV3+ exports' geometry, a
# padded window at an offset, odd non-integer strides, no resize at all, and a downscale.
GEOMETRIES = {
    "lraspp": ((46, 60), (368, 480), (0, 0), (360, 480)),
    "deeplab": ((92, 120), (368, 480), (0, 0), (360, 480)),
    "offset": ((12, 16), (48, 64), (4, 4), (40, 56)),
    "odd": ((7, 9), (37, 41), (3, 2), (31, 35)),
    "odd_full": ((5, 6), (23, 17), (0, 0), (23, 17)),
    "same": ((10, 12), (10, 12), (0, 0), (10, 12)),
    "down": ((20, 18), (10, 9), (1, 0), (8, 9)),
}


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float32], ids=["uint8", "int8", "float32"])
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_bilinear_argmax_equals_the_reference(geometry, dtype):
    low, size, offset, (height, width) = GEOMETRIES[geometry]
    up = Upsampling("bilinear", size, offset, low)
    rng = np.random.default_rng(len(geometry))
    fast = BilinearArgmax(low, up, height, width)
    for classes, make in [(11, "smooth"), (11, "noise"), (4, "coarse"), (2, "smooth"), (1, "noise")]:
        if make == "smooth":
            scores = smooth_scores(rng, low, classes, dtype)
        else:  # noise: every cell mixed, up to all classes candidates; coarse integers: many exact ties
            top = 4 if make == "coarse" else 100
            scores = rng.integers(0, top, (*low, classes)).astype(dtype)
        expected = reference(scores, up, height, width)
        got = fast(scores)  # the same instance, its scratch arrays reused across sizes of work
        assert got.shape == (height, width) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected, err_msg=f"{classes} classes, {make}")
    np.testing.assert_array_equal(upsample_argmax(scores, up, height, width), expected)


def test_exact_ties_go_to_the_lowest_class_as_with_argmax():
    """Integer logits at stride 8 upsample to exact multiples of 1/64: ties are real, and common here."""
    up = Upsampling("bilinear", (48, 64), (0, 0), (6, 8))
    scores = np.full((6, 8, 3), 5, np.uint8)  # class 1 never wins
    scores[:, :4, 0], scores[:, 4:, 0] = 10, 0
    scores[:, :4, 2], scores[:, 4:, 2] = 9, 15  # equal to class 0 1/16 of the way from column 3 to 4
    expected = reference(scores, up, 48, 64)
    ties = upsample_bilinear(scores, up, 48, 64)
    assert np.any(ties[..., 0] == ties[..., 2])  # the middle column of the boundary cells
    np.testing.assert_array_equal(BilinearArgmax((6, 8), up, 48, 64)(scores), expected)
    assert set(np.unique(expected)) == {0, 2}


def test_more_than_256_classes_give_int32_ids():
    up = Upsampling("bilinear", (16, 20), (0, 0), (4, 5))
    scores = np.random.default_rng(3).normal(0, 1, (4, 5, 300)).astype(np.float32)
    got = BilinearArgmax((4, 5), up, 16, 20)(scores)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, reference(scores, up, 16, 20))
    # Every one of 300 classes a candidate in the cells between the two columns (slot ids above 255).
    up = Upsampling("bilinear", (4, 64), (0, 0), (2, 2))
    scores = np.zeros((2, 2, 300), np.float32)
    scores[:, 0], scores[:, 1] = np.arange(300), 300 - np.arange(300)
    scores[:, 0, 280] += 5  # wins in a narrow band: slot 280 of 300
    got = BilinearArgmax((2, 2), up, 4, 64)(scores)
    np.testing.assert_array_equal(got, reference(scores, up, 4, 64))
    assert set(np.unique(got)) == {0, 280, 299}
    with pytest.raises(ValueError, match="shape"):
        BilinearArgmax((2, 2), up, 4, 64)(scores[:1])


def test_nan_scores_do_not_break_it():
    up = Upsampling("bilinear", (32, 40), (0, 0), (4, 5))
    scores = np.random.default_rng(5).normal(0, 1, (4, 5, 3)).astype(np.float32)
    scores[1, 2] = np.nan
    scores[3, 0, 1] = np.nan
    got = BilinearArgmax((4, 5), up, 32, 40)(scores)
    assert got.shape == (32, 40) and got.max() < 3
    far = reference(scores, up, 32, 40)[:12, 32:]  # cells away from the NaNs are still exact
    np.testing.assert_array_equal(got[:12, 32:], far)


def test_resize_low_res_nearest_is_the_direct_gather():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 7, (12, 16)).astype(np.uint8)
    up = Upsampling("nearest", (48, 64), (4, 4), (12, 16))
    for height, width in [(40, 56), (63, 90), (7, 5), (400, 30)]:
        position = lambda count, length, offset, size, low: np.clip(  # noqa: E731
            np.floor(((np.arange(count) + 0.5) * (length / count) + offset) * (low / size)).astype(int), 0, low - 1)
        rows = position(height, 40, 4, 48, 12)
        cols = position(width, 56, 4, 64, 16)
        np.testing.assert_array_equal(resize_low_res_nearest(labels, up, (40, 56), height, width), labels[rows[:, None], cols])


# --- Segmenter on a low-resolution export --------------------------------------------------------

SIZE = (38, 50)  # padded to 40x56 inside, logits at stride 4 (10x14), window at offset (1, 3)
CLASSES = ("road", "car", "sky", "tree", "person")


def padded_net():
    from tfseg._keras import keras

    keras.utils.set_random_seed(2)
    layers = keras.layers
    inputs = keras.Input((*SIZE, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = layers.ZeroPadding2D(((1, 1), (3, 3)))(x)
    x = layers.Conv2D(12, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(12, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(len(CLASSES), 1, name="classifier")(x)
    x = layers.Resizing(40, 56, interpolation="bilinear", name="logits_up")(x)
    return keras.Model(inputs, layers.Cropping2D(((1, 1), (3, 3)), name="logits")(x), name="padded_net")


def frames(count, size=SIZE, seed=0):
    """Colour blocks plus noise: class maps with regions and boundaries."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, size[0] // 6 + 1, size[1] // 6 + 1, 3))
    base = np.kron(coarse, np.ones((1, 6, 6, 1)))[:, : size[0], : size[1]]
    return np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def low_res_exports(tmp_path_factory):
    """{(quantization, output): path} of the padded net's exports."""
    from tfseg import export
    from tfseg.data.info import DatasetInfo

    info = DatasetInfo(name="tiny", class_names=CLASSES, palette=tuple((30 * i, 60, 90) for i in range(len(CLASSES))))
    model, root, paths = padded_net(), tmp_path_factory.mktemp("low_res"), {}
    for quantization, output in [("int8", "low_res_logits"), ("none", "low_res_logits"), ("int8", "class_map")]:
        paths[quantization, output] = root / f"{quantization}_{output}.tflite"
        export.to_tflite(model, paths[quantization, output], quantization, info=info, output=output,
                         representative_data=frames(8, seed=1).astype(np.float32))
    return paths


def expected_class_map(path, frame):
    """LiteRT on a tensor prepared here, then the reference upsampling, argmax and resize."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=1)
    runner.allocate_tensors()
    (inp,), (out,) = runner.get_input_details(), runner.get_output_details()
    picture = Image.fromarray(frame)
    if picture.size != (SIZE[1], SIZE[0]):
        picture = picture.resize((SIZE[1], SIZE[0]), Image.BILINEAR)
    x = np.asarray(picture, np.float32)[None]
    scale, zero = inp["quantization"]
    if inp["dtype"] != np.float32 and scale:
        x = np.round(x / scale + zero)
    runner.set_tensor(inp["index"], x.astype(inp["dtype"]))
    runner.invoke()
    raw = runner.get_tensor(out["index"])[0]
    meta = metadata.load(path)
    if meta.output_kind == "class_map":
        ids = resize_low_res_nearest(raw.astype(np.uint8), meta.upsampling, SIZE, *frame.shape[:2])
        return ids
    ids = reference(raw, meta.upsampling, *SIZE).astype(np.uint8)
    return np.asarray(Image.fromarray(ids).resize((frame.shape[1], frame.shape[0]), Image.NEAREST))


@pytest.mark.parametrize("export_kind", [("int8", "low_res_logits"), ("none", "low_res_logits"), ("int8", "class_map")],
                         ids=["int8-low_res_logits", "float-low_res_logits", "int8-class_map"])
def test_predict_on_a_low_res_export_equals_the_reference(low_res_exports, export_kind):
    path = low_res_exports[export_kind]
    seg = Segmenter(path, num_threads=1, runtime="litert")
    assert seg.metadata.upsampling.offset == (1, 3) and seg.metadata.upsampling.output_size == (10, 14)
    at_model_size = frames(3, seed=5)
    bigger = frames(2, size=(57, 83), seed=6)  # resized on the way in and out
    for frame in [*at_model_size, *bigger, np.ascontiguousarray(at_model_size[0][:, ::-1])[:, ::-1]]:
        got = seg.predict(frame)
        assert got.shape == frame.shape[:2] and got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected_class_map(path, frame))
    assert set(seg.last_times) == {"preprocess_ms", "invoke_ms", "postprocess_ms", "end_to_end_ms"}
    assert seg.last_times["end_to_end_ms"] >= seg.last_times["invoke_ms"] == seg.last_invoke_ms > 0
    seg.predict(at_model_size[0])  # the output view of the previous predict is gone: invoke() runs again


def test_a_frame_of_the_models_size_goes_in_without_a_copy(low_res_exports):
    seg = Segmenter(low_res_exports["int8", "low_res_logits"], num_threads=1)
    frame = frames(1, seed=7)[0]
    assert seg.input_dtype == "uint8"
    tensor = seg.preprocess(frame)
    assert tensor.shape == (1, *SIZE, 3) and np.shares_memory(tensor, frame)
    flipped = frame[..., ::-1]  # e.g. BGR to RGB as a view: set_tensor copies it
    np.testing.assert_array_equal(seg.preprocess(flipped)[0], flipped)


def test_pixel_mapping_shortcuts_equal_the_lookup_table(low_res_exports):
    seg = Segmenter(low_res_exports["none", "low_res_logits"], num_threads=1)
    pixels = np.random.default_rng(8).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    tables = {
        "identity": np.arange(256).astype(np.uint8),
        "minus_128": (np.arange(256) - 128).astype(np.int8),
        "float": np.arange(256, dtype=np.float32),
        "range": (-1 + np.arange(256, dtype=np.float32) * (2 / 255.0)).astype(np.float32),
        "quantized": np.clip(np.rint(np.arange(256) / 0.7 - 90), -128, 127).astype(np.int8),  # falls back to the table
    }
    seg.metadata = dataclasses.replace(seg.metadata, pixel_range=(-1.0, 1.0))  # for the "range" table
    for name, table in tables.items():
        seg._lut = table
        mapped = seg._pixel_mapping()(pixels)
        assert mapped.dtype == table.dtype, name
        np.testing.assert_array_equal(mapped, table[pixels], err_msg=name)
