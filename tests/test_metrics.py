"""Metrics against independent NumPy references (explicit loops), streaming and in model.fit."""

import math

import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.errors import ConfigError, DataError
from tfseg.losses import SegmentationCrossEntropy
from tfseg.metrics import (
    ConfusionMatrixMetric,
    MeanDice,
    MeanIoU,
    PerClassIoU,
    PixelAccuracy,
    confusion_matrix,
    format_scores,
    scores_from_confusion,
)

IGNORE = 255
SHAPES = [(2, 5, 7, 3), (3, 8, 6, 5), (1, 1, 1, 2), (4, 9, 3, 11)]


def random_batch(shape, seed, ignore_fraction=0.25, absent_class=None):
    rng = np.random.default_rng(seed)
    b, h, w, c = shape
    logits = rng.normal(size=shape).astype(np.float32)
    masks = rng.integers(0, c, size=(b, h, w)).astype(np.int32)
    masks[rng.random((b, h, w)) < ignore_fraction] = IGNORE
    if absent_class is not None:  # never in the ground truth, never predicted
        masks[masks == absent_class] = IGNORE
        logits[..., absent_class] = -100.0
    return logits, masks


# ---------------------------------------------------------------- NumPy references


def ref_confusion(masks, pred, num_classes, weights=None):
    """cm[t, p] by an explicit loop over pixels; weights per sample (B,) or None."""
    cm = np.zeros((num_classes, num_classes))
    for n in range(masks.shape[0]):
        for t, p in zip(masks[n].ravel(), pred[n].ravel()):
            if t != IGNORE:
                cm[t, p] += 1.0 if weights is None else weights[n]
    return cm


def ref_scores(cm):
    """Per-class loops over the textbook definitions."""
    c = cm.shape[0]
    total = cm.sum()
    iou, dice, acc = [], [], []
    for k in range(c):
        tp = cm[k, k]
        fn = sum(cm[k, j] for j in range(c) if j != k)
        fp = sum(cm[j, k] for j in range(c) if j != k)
        iou.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else math.nan)
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else math.nan)
        acc.append(tp / (tp + fn) if tp + fn > 0 else math.nan)

    def mean(values):
        kept = [v for v in values if not math.isnan(v)]
        return sum(kept) / len(kept) if kept else 0.0

    fwiou = sum(cm[k].sum() / total * iou[k] for k in range(c) if cm[k].sum() > 0) if total else 0.0
    return {
        "per_class_iou": np.array(iou),
        "miou": mean(iou),
        "per_class_dice": np.array(dice),
        "mean_dice": mean(dice),
        "per_class_accuracy": np.array(acc),
        "mean_class_accuracy": mean(acc),
        "pixel_accuracy": sum(cm[k, k] for k in range(c)) / total if total else 0.0,
        "frequency_weighted_iou": fwiou,
    }


METRICS = {"miou": MeanIoU, "pixel_accuracy": PixelAccuracy, "mean_dice": MeanDice, "per_class_iou": PerClassIoU}


# ---------------------------------------------------------------- NumPy API


@pytest.mark.parametrize("shape", SHAPES)
def test_confusion_matrix_and_scores_match_reference(shape):
    logits, masks = random_batch(shape, seed=sum(shape), absent_class=0 if shape[-1] > 2 else None)
    pred = logits.argmax(-1)
    cm = confusion_matrix(masks, pred, shape[-1])
    np.testing.assert_array_equal(cm, ref_confusion(masks, pred, shape[-1]))
    assert cm.dtype == np.int64 and cm.sum() == np.sum(masks != IGNORE)
    scores = scores_from_confusion(cm)
    for key, value in ref_scores(cm.astype(float)).items():
        np.testing.assert_allclose(scores[key], value, rtol=1e-12, err_msg=key)
    if shape[-1] > 2:  # class 0 is in neither GT nor prediction: NaN, and out of the means
        assert math.isnan(scores["per_class_iou"][0]) and math.isnan(scores["per_class_dice"][0])
        assert scores["miou"] == pytest.approx(np.nanmean(scores["per_class_iou"][1:]))
    np.testing.assert_allclose(scores["class_pixel_share"].sum(), 1.0)


def test_predicted_but_absent_class_counts_as_zero():
    masks = np.array([[[0, 0], [1, 1]]])
    pred = np.array([[[0, 2], [1, 1]]])  # class 2 predicted once, never in the ground truth
    scores = scores_from_confusion(confusion_matrix(masks, pred, 3))
    np.testing.assert_allclose(scores["per_class_iou"], [0.5, 1.0, 0.0])
    assert scores["miou"] == pytest.approx(0.5)
    assert math.isnan(scores["per_class_accuracy"][2])
    assert scores["mean_class_accuracy"] == pytest.approx(0.75)


def test_confusion_matrix_errors():
    masks = np.array([[[0, 1], [IGNORE, 2]]])
    with pytest.raises(DataError, match=r"y_true has labels \[11\]"):
        confusion_matrix(np.array([[[0, 11]]]), np.array([[[0, 1]]]), 3)
    with pytest.raises(DataError, match=r"y_pred_labels has labels \[3\]"):
        confusion_matrix(masks, np.array([[[0, 1], [0, 3]]]), 3)
    with pytest.raises(DataError, match="argmax"):
        confusion_matrix(masks, np.zeros((1, 2, 2, 3)), 3)
    # (B, H, W, 1) masks are accepted; the ignored pixel's prediction does not matter.
    cm = confusion_matrix(masks[..., None], np.array([[[0, 1], [2, 2]]]), 3)
    np.testing.assert_array_equal(cm, np.diag([1, 1, 1]))
    with pytest.raises(ConfigError):
        scores_from_confusion(np.zeros((2, 3)))


def test_empty_confusion_gives_zero_means_not_nan():
    scores = scores_from_confusion(np.zeros((3, 3)))
    for key in ("miou", "pixel_accuracy", "mean_dice", "mean_class_accuracy", "frequency_weighted_iou"):
        assert scores[key] == 0.0, key
    assert np.all(np.isnan(scores["per_class_iou"]))
    for cls in METRICS.values():
        assert np.all(np.nan_to_num(cls(3).result().numpy(), nan=0.0) == 0.0)
    assert float(MeanIoU(3).result()) == 0.0


def test_format_scores_table():
    masks = np.array([[[0, 0, 1, IGNORE]]])
    pred = np.array([[[0, 1, 1, 2]]])
    scores = scores_from_confusion(confusion_matrix(masks, pred, 3), class_names=["Sky", "Building", "Pole"])
    text = format_scores(scores)
    lines = text.splitlines()
    sky = next(line for line in lines if line.startswith("Sky"))
    # Sky: IoU 1/2, Dice 2/3, accuracy 1/2, 2 of 3 pixels.
    assert sky.split() == ["Sky", "0.500", "0.667", "0.500", "66.67"]
    pole = next(line for line in lines if line.startswith("Pole"))
    assert pole.split() == ["Pole", "-", "-", "-", "0.00"]  # absent class: no score
    assert "mIoU 0.500" in text and "pixel accuracy 0.667" in text
    renamed = format_scores(scores, ["a", "b", "c"])
    assert renamed.splitlines()[2].startswith("a ")
    with pytest.raises(ConfigError):
        format_scores(scores, ["a"])


# ---------------------------------------------------------------- Keras metrics


@pytest.mark.parametrize("shape", SHAPES)
def test_keras_metrics_stream_equal_one_shot_equal_numpy(shape):
    num_classes = shape[-1]
    batches = [random_batch(shape, seed=10 * sum(shape) + k, absent_class=1 if num_classes > 3 else None) for k in range(3)]
    all_logits = np.concatenate([z for z, _ in batches])
    all_masks = np.concatenate([y for _, y in batches])
    expected = ref_scores(ref_confusion(all_masks, all_logits.argmax(-1), num_classes))
    numpy_scores = scores_from_confusion(confusion_matrix(all_masks, all_logits.argmax(-1), num_classes))
    for key, cls in METRICS.items():
        streamed, one_shot, from_labels = cls(num_classes), cls(num_classes), cls(num_classes)
        for logits, masks in batches:
            streamed.update_state(masks, logits)
            # Integer label maps with a channel axis, and (B, H, W, 1) masks, are accepted too.
            from_labels.update_state(masks[..., None], logits.argmax(-1)[..., None].astype(np.int64))
        one_shot.update_state(all_masks, all_logits)
        for metric in (streamed, one_shot, from_labels):
            np.testing.assert_allclose(metric.result().numpy(), expected[key], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(streamed.result().numpy(), numpy_scores[key], rtol=1e-6, err_msg=key)


def test_confusion_matrix_metric_holds_the_numpy_matrix():
    logits, masks = random_batch((3, 7, 5, 4), seed=1)
    metric = ConfusionMatrixMetric(4)
    metric.update_state(masks, tf.nn.softmax(logits))  # probabilities work like logits
    np.testing.assert_array_equal(metric.result().numpy(), confusion_matrix(masks, logits.argmax(-1), 4))
    assert metric.total_cm.dtype == tf.float64


def test_sample_weight_per_sample_and_per_pixel():
    logits, masks = random_batch((3, 4, 6, 3), seed=2)
    weights = np.array([0.5, 0.0, 2.0], np.float32)
    expected = ref_scores(ref_confusion(masks, logits.argmax(-1), 3, weights))
    metric = MeanIoU(3)
    metric.update_state(masks, logits, sample_weight=weights)
    np.testing.assert_allclose(float(metric.result()), expected["miou"], rtol=1e-6)
    per_pixel = MeanIoU(3)
    per_pixel.update_state(masks, logits, sample_weight=np.broadcast_to(weights[:, None, None], masks.shape))
    np.testing.assert_allclose(float(per_pixel.result()), expected["miou"], rtol=1e-6)
    unweighted = ref_scores(ref_confusion(masks, logits.argmax(-1), 3))["miou"]
    assert not math.isclose(expected["miou"], unweighted, rel_tol=1e-4)


def test_update_compiles_with_xla_and_counts_as_numpy():
    # compile(jit_compile=True) puts the metric update inside an XLA cluster, where every op needs
    # constant shape arguments (tf.math.bincount computes its size from the data and fails there).
    rng = np.random.default_rng(4)
    inputs = keras.Input((4, 6, 2))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    model.compile(loss=SegmentationCrossEntropy(3), metrics=[ConfusionMatrixMetric(3, name="cm")], jit_compile=True)
    x = rng.normal(size=(5, 4, 6, 2)).astype(np.float32)
    masks = rng.integers(0, 3, (5, 4, 6))
    masks[0, 0] = IGNORE
    logs = model.evaluate(x, masks, batch_size=5, verbose=0, return_dict=True)
    np.testing.assert_array_equal(logs["cm"], ref_confusion(masks, model.predict(x, verbose=0).argmax(-1), 3))


def test_counts_stay_exact_beyond_float32():
    # 2**25 + 1 is not a float32; a float32 (or int32-overflowing) matrix would lose the +1.
    metric = ConfusionMatrixMetric(2)
    masks = np.zeros((1, 1, 1), np.int32)
    labels = np.zeros((1, 1, 1), np.int32)
    metric.update_state(masks, labels, sample_weight=np.array([2.0**25]))
    metric.update_state(masks, labels)
    assert metric.total_cm.numpy()[0, 0] == 2**25 + 1


def test_reset_state():
    logits, masks = random_batch((2, 5, 5, 3), seed=3)
    other_logits, other_masks = random_batch((2, 5, 5, 3), seed=4)
    metric = MeanIoU(3)
    metric.update_state(masks, logits)
    assert float(metric.result()) > 0.0
    metric.reset_state()
    assert float(metric.result()) == 0.0 and not metric.total_cm.numpy().any()
    metric.update_state(other_masks, other_logits)
    fresh = MeanIoU(3)
    fresh.update_state(other_masks, other_logits)
    assert float(metric.result()) == pytest.approx(float(fresh.result()))


@pytest.mark.parametrize("cls", [ConfusionMatrixMetric, *METRICS.values()])
def test_metric_config_round_trip(cls):
    metric = cls(5, ignore_label=0, name="custom")
    config = metric.get_config()
    clone = cls.from_config(config)
    assert clone.get_config() == config and config["num_classes"] == 5 and config["ignore_label"] == 0
    rebuilt = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert type(rebuilt) is cls and rebuilt.get_config() == config
    logits, masks = random_batch((2, 4, 4, 5), seed=5, ignore_fraction=0.0)
    metric.update_state(masks, logits)
    rebuilt.update_state(masks, logits)
    np.testing.assert_allclose(rebuilt.result().numpy(), metric.result().numpy())
    if cls is not ConfusionMatrixMetric:  # ignore_label=0: class-0 pixels are excluded
        keep = masks != 0
        cm = confusion_matrix(np.where(keep, masks, IGNORE), logits.argmax(-1), 5)
        expected = scores_from_confusion(cm)[cls(5).name]
        np.testing.assert_allclose(metric.result().numpy(), expected, rtol=1e-6)


def test_metric_errors():
    logits, masks = random_batch((1, 3, 3, 4), seed=6)
    with pytest.raises(ConfigError, match=r"4 channels.*num_classes is 3"):
        MeanIoU(3).update_state(masks, logits)
    bad = masks.copy()
    bad[0, 0, 0] = 11
    metric = MeanIoU(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_true: labels outside"):
        metric.update_state(bad, logits)
    assert not metric.total_cm.numpy().any()  # nothing was added
    with pytest.raises(tf.errors.InvalidArgumentError, match="y_pred: labels outside"):
        metric.update_state(masks, np.full((1, 3, 3), 4, np.int32))


# ---------------------------------------------------------------- in model.fit


def test_compile_fit_with_loss_and_metrics():
    num_classes = 4
    rng = np.random.default_rng(7)
    images = rng.normal(size=(6, 8, 8, 3)).astype(np.float32)
    _, masks = random_batch((6, 8, 8, num_classes), seed=8)
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(num_classes, 3, padding="same")(inputs))
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=SegmentationCrossEntropy(num_classes, class_weights=[1.0, 2.0, 1.0, 0.5]),
        metrics=[MeanIoU(num_classes), PixelAccuracy(num_classes), MeanDice(num_classes)],
    )
    before = model.get_weights()[0].copy()
    history = model.fit(images, masks, batch_size=6, epochs=1, verbose=0)
    assert set(history.history) == {"loss", "miou", "pixel_accuracy", "mean_dice"}
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(model.get_weights()[0], before)  # one step really trained
    # Evaluation over two batches equals the NumPy API on the model's predictions.
    results = model.evaluate(images, masks, batch_size=3, verbose=0, return_dict=True)
    pred = model.predict(images, verbose=0).argmax(-1)
    expected = ref_scores(ref_confusion(masks, pred, num_classes))
    for key in ("miou", "pixel_accuracy", "mean_dice"):
        assert results[key] == pytest.approx(expected[key], rel=1e-5), key


def test_fit_with_wrong_channel_count_raises_config_error():
    # Raised while Keras traces the train step; it must stay a ConfigError (not an AutoGraph
    # StagingError) and name both numbers.
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(5, 1)(inputs))
    model.compile(optimizer="sgd", loss=SegmentationCrossEntropy(4), metrics=[MeanIoU(4)])
    with pytest.raises(ConfigError, match=r"5 channels.*num_classes is 4"):
        model.fit(np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4), np.int32), verbose=0)
    model.compile(optimizer="sgd", loss=SegmentationCrossEntropy(), metrics=[MeanIoU(4)])
    with pytest.raises(ConfigError, match=r"MeanIoU.*5 channels.*num_classes is 4"):
        model.evaluate(np.zeros((2, 4, 4, 3), np.float32), np.zeros((2, 4, 4), np.int32), verbose=0)
