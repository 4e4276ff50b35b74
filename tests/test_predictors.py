"""Predictors (tfseg.predictors) and the one evaluation loop (tfseg.evaluate.stream) that evaluate,
export.verify and the logit-adjustment fit share: the same images give the same confusion matrix
whichever user streams them, and an exported model is scored like its Keras model.

A 32x48 U-Net with 3 classes and lively (He-normal) weights, as in test_export.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_export import CLASSES, INFO, SIZE, lively, three_class_split

from tfseg import data, export, models
from tfseg.calibrate import fit_logit_adjustment
from tfseg.errors import ConfigError
from tfseg.evaluate import Agreement, ConfusionMatrix, evaluate, stream
from tfseg.predictors import KerasPredictor, SavedModelPredictor, TFLitePredictor, as_predictor, load_predictor
from tfseg.quantize.ptq import representative_images

# A float export computes what Keras computes up to float rounding (XNNPACK's sums in another
# order): measured 100 % argmax agreement here; a pixel whose two best logits tie within 1e-6 may flip.
MIN_FLOAT_AGREEMENT = 0.999


@pytest.fixture(scope="module")
def val():
    return three_class_split("val", 5)


@pytest.fixture(scope="module")
def unet():
    return lively(models.build("unet_small", (None, None, 3), CLASSES), seed=3)


@pytest.fixture(scope="module")
def exports(unet, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    export.to_tflite(unet, root / "float.tflite", "none", info=INFO, input_size=SIZE)
    export.to_saved_model(unet, root / "served", info=INFO, input_size=SIZE)
    return root


def test_evaluate_and_verify_count_the_same_pixels(unet, val, exports):
    keras_scores = evaluate(unet, val, image_size=SIZE, batch_size=2, verbose=0)
    tflite_scores = evaluate(exports / "float.tflite", val, batch_size=2, verbose=0)
    report = export.verify(unet, exports / "float.tflite", val)
    # The verify report's two sides are evaluate's scores of the two models.
    assert report["miou_keras"] == keras_scores["miou"]
    assert report["per_class_iou_keras"] == pytest.approx(keras_scores["per_class_iou"].tolist(), nan_ok=True, abs=0)
    assert report["miou_exported"] == tflite_scores["miou"]
    assert report["pixel_accuracy_exported"] == tflite_scores["pixel_accuracy"]
    # And the stream fed with both predictors at once gives evaluate's matrices.
    keras, tflite = KerasPredictor(unet, SIZE), TFLitePredictor(exports / "float.tflite")
    confusions = [ConfusionMatrix(p, CLASSES, INFO.ignore_label) for p in (keras, tflite)]
    agreement = Agreement(keras, tflite)
    assert stream([keras, tflite], val, [*confusions, agreement], batch_size=3) == len(val)
    np.testing.assert_array_equal(confusions[0].matrix, keras_scores["confusion_matrix"])
    np.testing.assert_array_equal(confusions[1].matrix, tflite_scores["confusion_matrix"])
    assert confusions[0].matrix.sum() == (val.arrays()[1] != 255).sum()  # every labelled pixel, once
    assert agreement.fraction == report["agreement"] >= MIN_FLOAT_AGREEMENT
    assert len(agreement.per_image) == len(val)


def test_a_float_tflite_predictor_gives_the_keras_class_map(unet, val, exports):
    images = np.stack([image for image, _ in val.dataset().as_numpy_iterator()]).astype("float32")
    label_size = (45, 61)  # not the input size: both resize their logits to the labels
    expected = KerasPredictor(unet, SIZE).class_map(images, label_size)
    for tflite in (TFLitePredictor(exports / "float.tflite"),
                   TFLitePredictor((exports / "float.tflite").read_bytes(), num_threads=2)):
        assert (tflite.input_size, tflite.num_classes, tflite.kind, tflite.quantization) == (SIZE, CLASSES, "tflite", "none")
        got = tflite.class_map(images, label_size)
        assert got.shape == expected.shape == (len(images), *label_size)
        assert (got == expected).mean() >= MIN_FLOAT_AGREEMENT
        np.testing.assert_allclose(tflite.logits(images, label_size),
                                   KerasPredictor(unet, SIZE).logits(images, label_size), atol=1e-4)


def test_a_saved_model_is_scored_at_each_images_own_size(unet, val, exports):
    served = load_predictor(exports / "served")
    assert isinstance(served, SavedModelPredictor) and served.input_size is None and served.num_classes == CLASSES
    keras_scores = evaluate(unet, val, image_size=SIZE, verbose=0)
    served_scores = evaluate(served, val, verbose=0)
    assert served_scores["miou"] == pytest.approx(keras_scores["miou"], abs=1e-3)
    # Its log-probabilities are logits up to a per-pixel constant: the same adjusted argmax.
    keras = KerasPredictor(unet, SIZE)
    confusions = {p: ConfusionMatrix(p, CLASSES, bias=np.float32([0.5, -0.5, 0.0])) for p in (keras, served)}
    stream([keras, served], val, list(confusions.values()))
    # Measured identical; rounding in the softmax may flip a pixel whose adjusted logits tie.
    assert (np.abs(confusions[keras].matrix - confusions[served].matrix).sum()
            <= 0.002 * confusions[keras].matrix.sum())


def test_the_logit_adjustment_fit_streams_any_predictor(unet, val, exports):
    weights = [0.5, 1.0, 2.0]
    fitted = fit_logit_adjustment(unet, val, weights, image_size=SIZE, strengths=(0.0, 1.0), verbose=0)
    from_tflite = fit_logit_adjustment(exports / "float.tflite", val, weights, strengths=(0.0, 1.0), verbose=0)
    assert from_tflite[0] == fitted[0] and from_tflite[1] == fitted[1]
    assert from_tflite[2] == pytest.approx(fitted[2], abs=1e-3)
    assert fitted[2][0.0] == evaluate(unet, val, image_size=SIZE, verbose=0)["miou"]


def test_an_int8_predictor_quantizes_its_input_and_dequantizes_its_logits(unet, val, tmp_path):
    calibration = representative_images(three_class_split("train", 8), SIZE, 8)
    path = tmp_path / "int8.tflite"
    export.to_tflite(unet, path, "int8", representative_data=calibration, info=INFO, input_size=SIZE)
    int8 = TFLitePredictor(path)
    assert int8.quantization == "int8"
    images = calibration[:2]
    logits = int8.logits(images, SIZE)
    expected = KerasPredictor(unet, SIZE).logits(images, SIZE)
    assert logits.dtype == np.float32
    # Dequantized to the float model's scale: measured RMS error 0.06 of the logits' spread (a
    # wrong scale or zero point would be far off).
    assert np.sqrt(np.mean((logits - expected) ** 2)) < 0.5 * expected.std()


def test_stream_takes_arrays_and_datasets_and_stops_at_max_images(unet, val):
    keras = KerasPredictor(unet, SIZE)
    images, masks = val.arrays()
    by_source = []
    for source in (val, (images, masks), val.dataset().batch(2)):
        confusion = ConfusionMatrix(keras, CLASSES)
        assert stream([keras], source, [confusion], batch_size=2, max_images=3) == 3
        by_source.append(confusion.matrix)
    np.testing.assert_array_equal(by_source[0], by_source[1])
    np.testing.assert_array_equal(by_source[0], by_source[2])


def test_predictors_refuse_what_they_cannot_score(unet, val, exports, tmp_path):
    with pytest.raises(ValueError, match="32x48 inputs, not 64x64"):
        as_predictor(exports / "float.tflite", (64, 64))
    with pytest.raises(ValueError, match="any input size"):
        as_predictor(unet)
    with pytest.raises(FileNotFoundError, match="neither a .tflite file nor a SavedModel"):
        evaluate(tmp_path / "missing.tflite", val, verbose=0)
    with pytest.raises(ConfigError, match="outputs 3 classes but the data has 6"):
        evaluate(exports / "float.tflite", data.scenes("val", num_images=2, image_size=SIZE), verbose=0)
