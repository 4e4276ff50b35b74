"""Exports that end before a model's full-resolution tail (tfseg.output_tail): the cut, its
metadata, and the runners that map the low-resolution output back onto the input pixels
(tfseg.predictors.TFLitePredictor, tfseg-lite's Segmenter, ``tfseg evaluate FILE``).

Two tiny float32 models with random weights, 40x56 inputs, 3 classes:

- ``fastseg_tiny`` of the zoo (narrowed): padded to 48x64 inside, logits at stride 8 (6x8),
  a bilinear UpSampling2D and the Cropping2D ``logits`` that drops the bottom/right padding;
- ``offset_net``: padded on all sides, stride 4, a bilinear ``Resizing`` and a crop at the
  top/left too, so that ``output.upsampling.offset`` is not (0, 0).

An int8 export checks the in-graph ARG_MAX on int8 logits; the model without such a tail fails
through the command in tests/test_cli_errors.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tfseg import export, models
from tfseg._keras import keras
from tfseg.cli import main
from tfseg.data.info import DatasetInfo
from tfseg.errors import ConfigError
from tfseg.options import EXPORT_OUTPUTS
from tfseg.output_tail import find_tail
from tfseg.predictors import TFLitePredictor
from tfseg.tflite import interpreter, read_metadata, run_tflite

EXPORT_DIR = Path(__file__).resolve().parents[1] / "export"  # tfseg-lite, not installed in tfseg's venv
if str(EXPORT_DIR) not in sys.path:
    sys.path.insert(0, str(EXPORT_DIR))

from tfseg_lite import Segmenter, metadata  # noqa: E402
from tfseg_lite.segmenter import upsample_bilinear  # noqa: E402

layers = keras.layers
SIZE = (40, 56)
INFO = DatasetInfo(name="tiny", class_names=("road", "car", "sky"), palette=((128, 64, 128), (64, 0, 128), (128, 128, 128)))
OUTPUTS = ("logits", "low_res_logits", "class_map")  # every export output (checked below), in this order


def offset_net():
    """Padding on every side, stride 4, then Resizing (bilinear) and a crop with a top/left offset."""
    inputs = keras.Input((*SIZE, 3))
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="normalize")(inputs)
    x = layers.ZeroPadding2D(((4, 4), (4, 4)))(x)                       # 48x64
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)  # 12x16
    x = layers.Conv2D(3, 1, name="classifier")(x)
    x = layers.Resizing(48, 64, interpolation="bilinear", name="logits_up")(x)
    return keras.Model(inputs, layers.Cropping2D(((4, 4), (4, 4)), name="logits")(x), name="offset_net")


NETS = {
    "fastseg_tiny": (lambda: models.build("fastseg_tiny", (*SIZE, 3), num_classes=3, widths=(8, 8, 16, 16),
                                          blocks_s8=0, dilations=(1,)),
                     {"height": 6, "width": 8, "stride": [8, 8], "size": [48, 64], "offset": [0, 0]}),
    "offset_net": (offset_net, {"height": 12, "width": 16, "stride": [4, 4], "size": [48, 64], "offset": [4, 4]}),
}


def blocky_image(seed, size=SIZE):
    """Flat colour blocks plus noise: class maps with regions and boundaries."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[0] // 8 + 1, size[1] // 8 + 1, 3))
    base = np.kron(coarse, np.ones((8, 8, 1)))[: size[0], : size[1]]
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module", params=sorted(NETS))
def exported(request, tmp_path_factory):
    """The model and its three float32 exports: ``(name, model, {output: path})``."""
    keras.utils.set_random_seed(0)
    build, _ = NETS[request.param]
    model = build()
    root = tmp_path_factory.mktemp(request.param)
    paths = {}
    for output in OUTPUTS:
        paths[output] = root / f"{output}.tflite"
        export.to_tflite(model, paths[output], "none", info=INFO, output=output)
    return request.param, model, paths


def test_the_tail_is_found_and_recorded(exported):
    name, model, paths = exported
    expected = NETS[name][1]
    assert set(OUTPUTS) == set(EXPORT_OUTPUTS)
    tail = find_tail(model)
    assert tail.layers == ("logits_up", "logits") and tail.output_size == SIZE
    for output in ("low_res_logits", "class_map"):
        meta = read_metadata(paths[output].read_bytes())
        assert meta == json.loads(export.sidecar_path(paths[output]).read_text())
        out = meta["output"]
        assert out["kind"] == output and out["classes"] == 3 and out["source_layer"] == tail.source_layer
        assert (out["height"], out["width"], out["stride"]) == (expected["height"], expected["width"], expected["stride"])
        assert out["upsampling"] == {"method": "bilinear" if output == "low_res_logits" else "nearest",
                                     "size": expected["size"], "offset": expected["offset"]}
        # tfseg-lite reads the same mapping back
        lite = metadata.load(paths[output])
        assert lite.output_kind == output and lite.upsampling == metadata.Upsampling(
            out["upsampling"]["method"], tuple(expected["size"]), tuple(expected["offset"]),
            (expected["height"], expected["width"]), tuple(expected["stride"]))
        # MediaPipe's metadata for scores only (tfseg.tflite_metadata: it cannot read class ids)
        assert lite.tflite_metadata == (output == "low_res_logits")
    assert metadata.load(paths["logits"]).upsampling is None


def test_runners_map_low_res_logits_back_to_the_full_models_logits(exported):
    _, model, paths = exported
    full, low, ids = (interpreter(paths[output].read_bytes()) for output in OUTPUTS)
    up = metadata.load(paths["low_res_logits"]).upsampling
    images = np.stack([blocky_image(seed) for seed in range(3)]).astype(np.float32)
    for image in images:
        logits = run_tflite(full, image[None])[0]
        low_res = run_tflite(low, image[None])[0]
        np.testing.assert_allclose(upsample_bilinear(low_res, up, *SIZE), logits, atol=1e-4)
        np.testing.assert_array_equal(run_tflite(ids, image[None])[0], np.argmax(low_res, axis=-1))
    # tfseg's predictor, at the input size and at another label size
    for label_size in (SIZE, (50, 70)):
        expected = TFLitePredictor(paths["logits"]).logits(images, label_size)
        np.testing.assert_allclose(TFLitePredictor(paths["low_res_logits"]).logits(images, label_size), expected, atol=1e-4)


def boundary_band(low_ids, up, height, width):
    """Input pixels whose 2x2 bilinear neighbourhood of low-resolution samples holds more than one class.

    Outside it the four samples agree, so their logits' convex combination has the same argmax:
    the nearest-neighbour class map must equal the bilinear one there."""
    def neighbours(first, count, size, length):
        position = np.floor((np.arange(first, first + count) + 0.5) * length / size - 0.5).astype(int)
        return np.clip(position, 0, length - 1), np.clip(position + 1, 0, length - 1)

    rows = neighbours(up.offset[0], height, up.size[0], low_ids.shape[0])
    cols = neighbours(up.offset[1], width, up.size[1], low_ids.shape[1])
    corners = [low_ids[np.ix_(r, c)] for r in rows for c in cols]
    return ~np.all([corner == corners[0] for corner in corners[1:]], axis=0)


def test_segmenter_gives_the_full_exports_class_map_except_near_class_boundaries(exported):
    _, _, paths = exported
    full = Segmenter(paths["logits"], num_threads=1)
    bilinear = Segmenter(paths["low_res_logits"], num_threads=1)
    nearest = Segmenter(paths["low_res_logits"], num_threads=1, logits_upsampling="nearest")
    class_map = Segmenter(paths["class_map"], num_threads=1)
    assert "low_res_logits at stride" in bilinear.describe()["output"]
    up = bilinear.metadata.upsampling
    disagree = band = 0
    for seed in range(4):
        image = blocky_image(seed)
        expected = full.predict(image)
        assert (bilinear.predict(image) == expected).mean() > 0.999  # float rounding only
        ids = class_map.predict(image)
        np.testing.assert_array_equal(ids, nearest.predict(image))  # the same argmax, in or out of the graph
        near = boundary_band(np.argmax(bilinear.run(bilinear.preprocess(image))[0], axis=-1), up, *SIZE)
        assert not np.any((ids != expected) & ~near)  # differences only where the samples disagree
        disagree, band = disagree + int((ids != expected).sum()), band + int(near.sum())
        # Any image size: the mapping composed with the resize to the image adds few differences.
        other = np.asarray(keras.utils.array_to_img(image).resize((90, 63)))
        assert class_map.predict(other).shape == (63, 90)
        assert (class_map.predict(other) == full.predict(other)).mean() > (ids == expected).mean() - 0.05
    # Measured: 1.2 % of the pixels differ in a band of 7.5 % (fastseg_tiny); 16 % in 67 % for
    # offset_net, whose random weights at stride 4 make a noisy map of small regions.
    assert 0 < disagree < 0.5 * band and band < 0.8 * 4 * SIZE[0] * SIZE[1]


def test_evaluate_an_export_through_the_command(exported, make_folder, tmp_path, capsys):
    _, _, paths = exported
    image_dir, mask_dir, _ = make_folder(n=2, size=SIZE, num_classes=3)
    data = ["--dataset", "folder", "--data-option", f"image_dir={image_dir}", "--data-option", f"mask_dir={mask_dir}",
            "--data-option", "num_classes=3", "--split", "train", "--overlays", "0"]
    scores = {}
    for output in ("logits", "low_res_logits"):
        assert main(["evaluate", str(paths[output]), *data, "--out", str(tmp_path / output)]) == 0
        scores[output] = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"output {output}" in scores[output]
    assert scores["logits"].split("(")[0] == scores["low_res_logits"].split("(")[0]  # the same mIoU
    assert (tmp_path / "logits" / "scores.json").exists()


def test_a_model_without_an_upsampling_tail_is_named():
    inputs = keras.Input((*SIZE, 3))
    x = layers.Conv2D(3, 1, name="classifier")(layers.Rescaling(1 / 255, name="normalize")(inputs))
    model = keras.Model(inputs, layers.Activation("linear", name="logits")(x), name="flat_net")
    with pytest.raises(ConfigError, match=r"model 'flat_net'.*'classifier' \(Conv2D\).*output 'logits'"):
        find_tail(model)
    nearest = keras.Model(inputs, layers.UpSampling2D(1, name="up")(x), name="nearest_net")
    with pytest.raises(ConfigError, match=r"'up' \(UpSampling2D\) uses 'nearest'"):
        find_tail(nearest)


def test_an_int8_class_map_is_the_argmax_of_the_int8_low_res_logits(tmp_path):
    keras.utils.set_random_seed(0)
    model = NETS["fastseg_tiny"][0]()
    images = np.stack([blocky_image(seed) for seed in range(8)]).astype(np.float32)
    runners, results = {}, {}
    for output in ("low_res_logits", "class_map"):
        path = tmp_path / f"{output}.tflite"
        results[output] = export.to_tflite(model, path, "int8", representative_data=images, info=INFO, output=output)
        runners[output] = interpreter(path.read_bytes())
    detail = runners["class_map"].get_output_details()[0]
    assert detail["dtype"] == np.uint8 and tuple(detail["shape"]) == (1, 6, 8)
    assert results["class_map"]["metadata"]["output"]["dtype"] == "uint8"
    for image in images[:3]:  # the same calibration, the same int8 logits: ARG_MAX in the graph changes nothing
        ids = run_tflite(runners["class_map"], image[None])[0]
        np.testing.assert_array_equal(ids, np.argmax(run_tflite(runners["low_res_logits"], image[None])[0], axis=-1))
    # The collapse check on calibration images compares class ids with Keras' argmax (measured 0.977 for both).
    agreements = {output: result["calibration_agreement"] for output, result in results.items()}
    assert agreements["class_map"] == agreements["low_res_logits"] > 0.9
