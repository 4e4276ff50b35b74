"""Losses and class weights against independent NumPy references (explicit loops)."""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.errors import ConfigError, DataError
from tfseg.losses import (
    CEDiceLoss,
    DiceLoss,
    LogitOffsetLoss,
    SegmentationCrossEntropy,
    class_pixel_counts,
    median_frequency_weights,
    sparse_cross_entropy,
)

IGNORE = 255
NONE = keras.losses.Reduction.NONE
# The project's convention: $TFSEG_CAMVID_DIR, else shared/ beside the checkout.
CAMVID_TRAINANNOT = (
    Path(os.environ.get("TFSEG_CAMVID_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid")
    / "trainannot"
)
SHAPES = [(2, 5, 7, 3), (3, 8, 6, 5), (1, 1, 1, 2), (4, 3, 3, 11)]


def random_batch(shape, seed, ignore_fraction=0.25, all_ignored_sample=None):
    """Logits (B, H, W, C) and int32 masks (B, H, W) with some ignored pixels."""
    rng = np.random.default_rng(seed)
    b, h, w, c = shape
    logits = rng.normal(scale=2.0, size=shape).astype(np.float32)
    masks = rng.integers(0, c, size=(b, h, w)).astype(np.int32)
    masks[rng.random((b, h, w)) < ignore_fraction] = IGNORE
    if all_ignored_sample is not None:
        masks[all_ignored_sample] = IGNORE
    return logits, masks


# ---------------------------------------------------------------- NumPy references


def ref_log_softmax(z):
    z = np.asarray(z, np.float64)
    m = z.max()
    return z - (m + np.log(np.sum(np.exp(z - m))))


def ref_cross_entropy(logits, masks, class_weights=None, label_smoothing=0.0):
    """Per-sample sum_i w_i ce_i / sum_i w_i over the valid pixels, by explicit loops."""
    b, h, w, c = logits.shape
    out = np.zeros(b)
    for n in range(b):
        num = den = 0.0
        for i in range(h):
            for j in range(w):
                label = masks[n, i, j]
                if label == IGNORE:
                    continue
                target = np.full(c, label_smoothing / c)
                target[label] += 1.0 - label_smoothing
                ce = -np.sum(target * ref_log_softmax(logits[n, i, j]))
                weight = 1.0 if class_weights is None else class_weights[label]
                num += weight * ce
                den += weight
        out[n] = num / den if den > 0 else 0.0
    return out


def ref_dice_loss(logits, masks, smooth=1.0):
    """Per-sample 1 - mean_c (2 I_c + s) / (P_c + T_c + s) over the valid pixels, by loops."""
    b, h, w, c = logits.shape
    out = np.zeros(b)
    for n in range(b):
        inter, psum, tsum = np.zeros(c), np.zeros(c), np.zeros(c)
        for i in range(h):
            for j in range(w):
                label = masks[n, i, j]
                if label == IGNORE:
                    continue
                p = np.exp(ref_log_softmax(logits[n, i, j]))
                for k in range(c):
                    t = 1.0 if label == k else 0.0
                    inter[k] += p[k] * t
                    psum[k] += p[k]
                    tsum[k] += t
        dice = [
            (2 * inter[k] + smooth) / (psum[k] + tsum[k] + smooth) if psum[k] + tsum[k] + smooth > 0 else 1.0
            for k in range(c)
        ]
        out[n] = 1.0 - np.mean(dice)
    return out


def ref_median_frequency(masks, num_classes):
    """SegNet median-frequency weights from a list of (H, W) masks, by explicit counting."""
    pixels = [0] * num_classes
    image_pixels = [0] * num_classes
    for mask in masks:
        for c in range(num_classes):
            n = int(np.sum(mask == c))
            if n:
                pixels[c] += n
                image_pixels[c] += mask.size
    freq = [pixels[c] / image_pixels[c] for c in range(num_classes) if pixels[c]]
    median = float(np.median(freq))
    return np.array([median / (pixels[c] / image_pixels[c]) if pixels[c] else 0.0 for c in range(num_classes)])


# ---------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_matches_reference(shape, weighted):
    logits, masks = random_batch(shape, seed=sum(shape) + weighted)
    weights = np.linspace(0.5, 3.0, shape[-1]) if weighted else None
    expected = ref_cross_entropy(logits, masks, weights)
    per_sample = SegmentationCrossEntropy(shape[-1], class_weights=weights, reduction=NONE)(masks, logits)
    np.testing.assert_allclose(per_sample.numpy(), expected, rtol=1e-5, atol=1e-6)
    # The default reduction is the mean of the per-sample values.
    reduced = SegmentationCrossEntropy(shape[-1], class_weights=weights)(masks, logits)
    np.testing.assert_allclose(float(reduced), expected.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(7, 5), (2, 6, 9, 11)])
def test_sparse_cross_entropy_equals_tensorflows_op_in_value_and_gradient(shape):
    rng = np.random.default_rng(len(shape))
    # Logits far from 0 and far apart: the written-out form must stay as stable as TF's fused op.
    logits = tf.Variable(rng.normal(0.0, 30.0, shape).astype("float32") + 200.0)
    labels = tf.constant(rng.integers(0, shape[-1], shape[:-1]), tf.int32)
    upstream = tf.constant(rng.uniform(0.0, 2.0, shape[:-1]).astype("float32"))  # an uneven weighting
    results = []
    for cross_entropy in (sparse_cross_entropy, tf.nn.sparse_softmax_cross_entropy_with_logits):
        with tf.GradientTape() as tape:
            values = cross_entropy(labels, logits) if cross_entropy is sparse_cross_entropy else (
                cross_entropy(labels=labels, logits=logits))
            weighted = tf.reduce_sum(upstream * values)
        results.append((values.numpy(), tape.gradient(weighted, logits).numpy()))
    (ours, our_gradient), (theirs, their_gradient) = results
    assert np.all(np.isfinite(ours)) and ours.shape == shape[:-1]
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(our_gradient, their_gradient, rtol=1e-5, atol=1e-6)


def test_cross_entropy_class_weights_are_pytorch_style_normalised():
    # Scaling every weight by 10 must not change a weighted *mean*; unequal weights must.
    logits, masks = random_batch((2, 6, 6, 3), seed=1)
    base = SegmentationCrossEntropy(3, reduction=NONE)(masks, logits).numpy()
    scaled = SegmentationCrossEntropy(3, class_weights=[10, 10, 10], reduction=NONE)(masks, logits).numpy()
    skewed = SegmentationCrossEntropy(3, class_weights=[1, 5, 0.1], reduction=NONE)(masks, logits).numpy()
    np.testing.assert_allclose(scaled, base, rtol=1e-6)
    assert not np.allclose(skewed, base, rtol=1e-3)


def test_cross_entropy_all_ignored_sample_is_zero_with_finite_gradient():
    logits, masks = random_batch((3, 4, 5, 4), seed=2, all_ignored_sample=1)
    logits_var = tf.Variable(logits)
    loss = SegmentationCrossEntropy(4, class_weights=[1, 2, 3, 4], reduction=NONE)
    with tf.GradientTape() as tape:
        per_sample = loss(masks, logits_var)
        total = tf.reduce_sum(per_sample)
    grad = tape.gradient(total, logits_var).numpy()
    assert per_sample.numpy()[1] == 0.0
    assert np.all(np.isfinite(per_sample.numpy()))
    assert np.all(np.isfinite(grad))
    assert np.all(grad[1] == 0.0)  # ignored pixels get no gradient
    ignored = masks == IGNORE
    assert np.all(grad[ignored] == 0.0) and np.any(grad[~ignored] != 0.0)
    np.testing.assert_allclose(per_sample.numpy(), ref_cross_entropy(logits, masks, [1, 2, 3, 4]), rtol=1e-5)


def test_cross_entropy_whole_batch_ignored_is_zero():
    logits, masks = random_batch((2, 3, 3, 3), seed=3, ignore_fraction=1.0)
    assert float(SegmentationCrossEntropy(3)(masks, logits)) == 0.0


def test_cross_entropy_label_smoothing_and_probabilities():
    logits, masks = random_batch((2, 5, 4, 6), seed=4)
    smoothed = SegmentationCrossEntropy(6, label_smoothing=0.2, reduction=NONE)(masks, logits)
    np.testing.assert_allclose(smoothed.numpy(), ref_cross_entropy(logits, masks, label_smoothing=0.2), rtol=1e-5)
    probs = tf.nn.softmax(logits).numpy()
    from_probs = SegmentationCrossEntropy(6, from_logits=False, reduction=NONE)(masks, probs)
    np.testing.assert_allclose(from_probs.numpy(), ref_cross_entropy(logits, masks), rtol=1e-4)


def test_cross_entropy_mask_layouts():
    logits, masks = random_batch((2, 4, 4, 3), seed=5)
    loss = SegmentationCrossEntropy(reduction=NONE)  # num_classes taken from the logits
    expected = ref_cross_entropy(logits, masks)
    for layout in (masks, masks[..., None], masks.astype(np.float32), masks.astype(np.uint8)):
        np.testing.assert_allclose(loss(layout, logits).numpy(), expected, rtol=1e-5)


# ---------------------------------------------------------------- Dice


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("smooth", [1.0, 0.0, 1e-3])
def test_dice_matches_reference(shape, smooth):
    logits, masks = random_batch(shape, seed=sum(shape) + int(smooth * 10))
    expected = ref_dice_loss(logits, masks, smooth)
    per_sample = DiceLoss(shape[-1], smooth=smooth, reduction=NONE)(masks, logits)
    np.testing.assert_allclose(per_sample.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_dice_ignored_pixels_do_not_count_and_empty_sample_is_zero():
    logits, masks = random_batch((3, 6, 6, 4), seed=6, all_ignored_sample=2)
    loss = DiceLoss(4, reduction=NONE)
    base = loss(masks, logits).numpy()
    # Changing the logits of ignored pixels must not change the loss.
    changed = logits.copy()
    changed[masks == IGNORE] = 50.0
    np.testing.assert_allclose(loss(masks, changed).numpy(), base, rtol=1e-6)
    assert base[2] == 0.0 and np.all(np.isfinite(base))
    assert float(DiceLoss(4, smooth=0.0, reduction=NONE)(masks, logits)[2]) == 0.0


def test_dice_near_perfect_prediction_is_near_zero():
    _, masks = random_batch((2, 6, 6, 3), seed=7)
    safe = np.where(masks == IGNORE, 0, masks)
    logits = 30.0 * np.eye(3, dtype=np.float32)[safe]
    assert float(DiceLoss(3, smooth=1e-6)(masks, logits)) < 1e-5
    assert float(DiceLoss(3, smooth=1e-6)(masks, -logits)) > 0.9


# ---------------------------------------------------------------- CE + Dice


def test_ce_dice_is_weighted_sum_of_references():
    logits, masks = random_batch((3, 5, 6, 4), seed=8, all_ignored_sample=0)
    weights = [0.5, 1.0, 2.0, 4.0]
    loss = CEDiceLoss(4, class_weights=weights, ce_weight=0.7, dice_weight=1.3, reduction=NONE)
    expected = 0.7 * ref_cross_entropy(logits, masks, weights) + 1.3 * ref_dice_loss(logits, masks)
    np.testing.assert_allclose(loss(masks, logits).numpy(), expected, rtol=1e-5, atol=1e-6)
    assert loss(masks, logits).numpy()[0] == 0.0


# ---------------------------------------------------------------- config, errors


@pytest.mark.parametrize(
    "loss",
    [
        SegmentationCrossEntropy(5, ignore_label=0, class_weights=[1, 2, 3, 4, 5], label_smoothing=0.1, name="ce"),
        DiceLoss(5, ignore_label=4, smooth=0.5, from_logits=False, reduction=NONE),
        CEDiceLoss(5, class_weights=[1, 1, 2, 2, 3], ce_weight=0.3, dice_weight=2.0, smooth=0.1),
        LogitOffsetLoss(SegmentationCrossEntropy(5, class_weights=[1, 2, 3, 4, 5]), [0.5, -1.0, 0.0, 0.25, 2.0]),
    ],
    ids=["ce", "dice", "ce_dice", "logit_offset"],
)
def test_config_round_trip(loss):
    config = loss.get_config()
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    # Registered: Keras can rebuild it from its serialized form (saving compiled models).
    rebuilt = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(rebuilt) is type(loss) and rebuilt.get_config() == config
    # No 255 here: for the losses built with ignore_label 0 or 4, 255 would be an invalid label.
    logits, masks = random_batch((2, 4, 4, 5), seed=9, ignore_fraction=0.0)
    if not loss.get_config().get("from_logits", True):
        logits = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(clone(masks, logits).numpy(), loss(masks, logits).numpy(), rtol=1e-6)


@pytest.mark.parametrize("inner", [SegmentationCrossEntropy(5, class_weights=[1, 2, 3, 4, 5]), CEDiceLoss(5)],
                         ids=["ce", "ce_dice"])
def test_logit_offset_loss_scores_the_logits_minus_the_offset(inner):
    logits, masks = random_batch((2, 4, 4, 5), seed=12)
    offset = np.array([0.5, -1.0, 0.0, 0.25, 2.0], dtype="float32")
    wrapped = LogitOffsetLoss(inner, offset, reduction=NONE)
    # A model that carries the folded offset scores exactly as the unadjusted one did under the inner loss.
    np.testing.assert_allclose(wrapped(masks, logits + offset).numpy(), inner.call(masks, logits).numpy(), rtol=1e-5)
    assert not np.allclose(wrapped(masks, logits).numpy(), inner.call(masks, logits).numpy(), rtol=1e-3)
    with pytest.raises(ConfigError, match=r"5 channels.*num_classes is 4"):
        LogitOffsetLoss(inner, offset[:4])(masks, logits)
    with pytest.raises(ConfigError, match="finite"):
        LogitOffsetLoss(inner, [0.0, np.nan, 0.0, 0.0, 0.0])


def test_ignore_label_inside_class_range():
    logits, masks = random_batch((2, 4, 4, 3), seed=10, ignore_fraction=0.0)
    as_ignored = np.where(masks == 0, IGNORE, masks)
    a = SegmentationCrossEntropy(3, ignore_label=0, reduction=NONE)(masks, logits)
    b = SegmentationCrossEntropy(3, reduction=NONE)(as_ignored, logits)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


@pytest.mark.parametrize("make", [lambda: SegmentationCrossEntropy(3), lambda: DiceLoss(3), lambda: CEDiceLoss(3)])
def test_channel_mismatch_names_both_numbers(make):
    logits, masks = random_batch((1, 2, 2, 4), seed=11)
    with pytest.raises(ConfigError, match=r"4 channels.*num_classes is 3"):
        make()(masks, logits)


def test_class_weights_wrong_length():
    with pytest.raises(ConfigError, match=r"2 class_weights.*num_classes is 3"):
        SegmentationCrossEntropy(3, class_weights=[1.0, 2.0])
    with pytest.raises(ConfigError, match=r"4 class_weights.*num_classes is 3"):
        CEDiceLoss(3, class_weights=[1, 1, 1, 1])
    # Without num_classes, the weights define it, and logits must then agree.
    logits, masks = random_batch((1, 2, 2, 4), seed=12)
    with pytest.raises(ConfigError, match=r"4 channels.*num_classes is 3"):
        SegmentationCrossEntropy(class_weights=[1, 1, 1])(masks, logits)


@pytest.mark.parametrize("make", [lambda: SegmentationCrossEntropy(3), lambda: DiceLoss(3)])
def test_out_of_range_label_raises(make):
    logits, masks = random_batch((1, 3, 3, 3), seed=13)
    masks[0, 1, 1] = 11  # e.g. CamVid's void value that was never remapped
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
        make()(masks, logits)
    # Also inside a traced function, as in model.fit.
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
        tf.function(lambda y, p: make()(y, p))(tf.constant(masks), tf.constant(logits))


# ---------------------------------------------------------------- class weights


def synthetic_masks(seed=14, n=7, shape=(5, 6), num_classes=4):
    rng = np.random.default_rng(seed)
    masks = []
    for k in range(n):
        # Different class subsets per image so that "images in which c appears" matters.
        present = rng.choice(num_classes, size=rng.integers(1, num_classes + 1), replace=False)
        m = rng.choice(present, size=shape).astype(np.uint8)
        m[rng.random(shape) < 0.2] = IGNORE
        masks.append(m)
    return masks


def test_median_frequency_matches_reference_for_every_input_kind():
    masks = synthetic_masks()
    expected = ref_median_frequency(masks, 4)
    stacked = np.stack(masks)
    images = np.zeros(stacked.shape + (3,), np.float32)
    inputs = {
        "list": masks,
        "array": stacked,
        "list_hw1": [m[..., None] for m in masks],
        "batched_arrays": [stacked[:3], stacked[3:]],
        "dataset": tf.data.Dataset.from_tensor_slices(stacked),
        "dataset_batched": tf.data.Dataset.from_tensor_slices(stacked[..., None]).batch(3),  # last batch of 1
        "dataset_pairs": tf.data.Dataset.from_tensor_slices((images, stacked)).batch(2),
        "dataset_dicts": tf.data.Dataset.from_tensor_slices({"image": images, "mask": stacked}),
    }
    for name, value in inputs.items():
        np.testing.assert_allclose(median_frequency_weights(value, 4), expected, rtol=1e-12, err_msg=name)


def test_class_pixel_counts():
    masks = synthetic_masks(seed=15)
    counts = class_pixel_counts(masks, 4)
    for c in range(4):
        assert counts.class_pixels[c] == sum(int(np.sum(m == c)) for m in masks)
        assert counts.image_pixels[c] == sum(m.size for m in masks if np.any(m == c))
    assert counts.ignored_pixels == sum(int(np.sum(m == IGNORE)) for m in masks)
    assert counts.num_images == 7 and counts.total_pixels == 7 * 30


def test_median_frequency_absent_class_and_bad_labels():
    masks = [np.array([[0, 0, 1], [1, 1, IGNORE]]), np.array([[0, 2, 2], [2, 2, 2]])]
    with pytest.warns(UserWarning, match=r"classes \[3\]"):
        weights = median_frequency_weights(masks, 4)
    np.testing.assert_allclose(weights, ref_median_frequency(masks, 4))
    assert weights[3] == 0.0
    with pytest.raises(DataError, match=r"mask #1: labels \[11\]"):
        median_frequency_weights([masks[0], np.full((2, 2), 11)], 4)
    with pytest.raises(DataError, match="no labelled pixel"):
        median_frequency_weights([np.full((2, 2), IGNORE)], 4)


@pytest.mark.skipif(not CAMVID_TRAINANNOT.is_dir(), reason=f"CamVid masks not found at {CAMVID_TRAINANNOT}")
def test_median_frequency_reproduces_camvid_readme():
    from PIL import Image

    def masks():
        for path in sorted(CAMVID_TRAINANNOT.glob("*.png")):
            mask = np.array(Image.open(path))
            mask[mask == 11] = IGNORE  # CamVid void -> tfseg's ignore label
            yield mask

    expected = [0.279, 0.202, 4.787, 0.149, 1.000, 0.422, 3.847, 1.974, 0.789, 6.375, 8.859]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class appears: no warning expected
        weights = median_frequency_weights(masks(), 11)
    np.testing.assert_allclose(weights, expected, atol=5.01e-4)
    counts = class_pixel_counts(masks(), 11)
    assert counts.num_images == 367 and counts.total_pixels == 63_417_600
    assert counts.ignored_pixels == 2_503_995 and counts.class_pixels[3] == 20_076_880  # README table


# ---------------------------------------------------------------- distribution strategy

_STRATEGY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from tfseg._keras import keras, tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from tfseg.losses import CEDiceLoss, SegmentationCrossEntropy
    from tfseg.metrics import MeanIoU, confusion_matrix, scores_from_confusion

    data = json.loads(sys.stdin.read())
    logits = np.array(data["logits"], np.float32)
    masks = np.array(data["masks"], np.int32)
    batch, num_classes = logits.shape[0], logits.shape[-1]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {"replicas": strategy.num_replicas_in_sync}

    with strategy.scope():
        loss = SegmentationCrossEntropy(num_classes, class_weights=[1.0, 2.0, 0.5], reduction=keras.losses.Reduction.NONE)
    dataset = tf.data.Dataset.from_tensor_slices((logits, masks)).batch(batch)
    dist = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def step(z, y):
        def replica(z, y):
            per_sample = loss(y, z)
            return tf.nn.compute_average_loss(per_sample, global_batch_size=batch), tf.shape(per_sample)[0]
        averaged, local = strategy.run(replica, args=(z, y))
        return strategy.reduce("SUM", averaged, axis=None), strategy.experimental_local_results(local)

    for z, y in dist:
        total, local = step(z, y)
    out["loss"] = float(total)
    out["local_batches"] = [int(v) for v in local]

    # A compiled model under the strategy: default-reduction loss (Keras handles it) and MeanIoU,
    # whose SUM-aggregated confusion matrix must equal the single-pass one. (evaluate rather than
    # fit: it exercises the same compiled loss and metrics and traces much faster.)
    images = np.random.default_rng(0).normal(size=logits.shape[:3] + (3,)).astype(np.float32)
    with strategy.scope():
        inputs = keras.Input(images.shape[1:])
        model = keras.Model(inputs, keras.layers.Conv2D(num_classes, 1)(inputs))
        model.compile(optimizer="sgd", loss=CEDiceLoss(num_classes), metrics=[MeanIoU(num_classes)])
    result = model.evaluate(images, masks, batch_size=batch, verbose=0, return_dict=True)
    out["eval_loss"], out["eval_miou"] = result["loss"], result["miou"]
    pred = np.argmax(model(images).numpy(), -1)
    out["numpy_miou"] = scores_from_confusion(confusion_matrix(masks, pred, num_classes))["miou"]
    out["expected_eval_loss"] = float(CEDiceLoss(num_classes)(masks, model(images)))
    print("RESULT " + json.dumps(out))
    """
)


def test_reduction_none_under_mirrored_strategy_two_cpus():
    logits, masks = random_batch((4, 6, 5, 3), seed=16, all_ignored_sample=3)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-c", _STRATEGY_SCRIPT],
        input=json.dumps({"logits": logits.tolist(), "masks": masks.tolist()}),
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["replicas"] == 2
    assert out["local_batches"] == [2, 2]  # each replica really got half of the batch
    expected = ref_cross_entropy(logits, masks, [1.0, 2.0, 0.5]).mean()
    np.testing.assert_allclose(out["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(out["eval_loss"], out["expected_eval_loss"], rtol=1e-5)
    # The SUM-aggregated float64 confusion matrix across replicas gives the single-pass value.
    np.testing.assert_allclose(out["eval_miou"], out["numpy_miou"], rtol=1e-5)
