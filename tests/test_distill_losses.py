"""Distillation losses against independent NumPy references, plus the properties they promise."""

from __future__ import annotations

import inspect
import math
import re

import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.distill.losses import (
    AdaptiveCrossEntropy,
    ChannelWiseKD,
    CSCLoss,
    DistillationLoss,
    PairwiseKD,
    PixelKD,
    resize_labels_nearest,
)
from tfseg.distill.losses.base import soft_target_kl
from tfseg.errors import ConfigError
from tfseg.losses import SegmentationCrossEntropy

IGNORE = 255
B, H, W = 2, 8, 12  # map size
H0, W0 = 16, 24  # label (input image) size
C = 5


# --------------------------------------------------------------------------------------------
# NumPy references (loops and einsum only; nothing here calls the TF code)
# --------------------------------------------------------------------------------------------


def np_log_softmax(x, axis=-1):
    x = np.asarray(x, np.float64)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def np_nearest(labels, h, w):
    """Nearest-neighbour label resize, half-pixel centres: src = floor((dst + 0.5) * in / out)."""
    h0, w0 = labels.shape[1], labels.shape[2]
    rows = np.minimum(np.floor((np.arange(h) + 0.5) * h0 / h).astype(int), h0 - 1)
    cols = np.minimum(np.floor((np.arange(w) + 0.5) * w0 / w).astype(int), w0 - 1)
    return labels[:, rows][:, :, cols]


def ref_pixel_kd(t, s, y, temperature, alpha, class_weights=None, logit_offset=None):
    """t, s: (B, H, W, C) or (N, C); y at the same positions (already resized)."""
    offset = np.zeros(t.shape[-1]) if logit_offset is None else np.asarray(logit_offset)
    spatial = t.ndim == 4
    if not spatial:
        t, s, y = t[:, None, None], s[:, None, None], y[:, None, None]
    out = []
    for b in range(t.shape[0]):
        kl_sum, n, ce_sum, w_sum, ce_single = 0.0, 0, 0.0, 0.0, 0.0
        for i in range(t.shape[1]):
            for j in range(t.shape[2]):
                label = y[b, i, j]
                if label == IGNORE:
                    continue
                log_p = np_log_softmax(t[b, i, j] / temperature)
                log_q = np_log_softmax(s[b, i, j] / temperature)
                kl_sum += temperature**2 * np.sum(np.exp(log_p) * (log_p - log_q))
                n += 1
                w = 1.0 if class_weights is None else class_weights[label]
                ce = -np_log_softmax(s[b, i, j] - offset)[label]
                ce_sum += w * ce
                w_sum += w
                ce_single = w * ce
        kd = kl_sum / n if n else 0.0
        if spatial:
            ce = ce_sum / w_sum if w_sum else 0.0
        else:
            ce = ce_single
        out.append(alpha * kd + (1 - alpha) * ce)
    return np.array(out)


def ref_ace(t, s, y):
    spatial = t.ndim == 4
    if not spatial:
        t, s, y = t[:, None, None], s[:, None, None], y[:, None, None]
    out = []
    for b in range(t.shape[0]):
        total, n = 0.0, 0
        for i in range(t.shape[1]):
            for j in range(t.shape[2]):
                label = y[b, i, j]
                if label == IGNORE:
                    continue
                probs = np.exp(np_log_softmax(t[b, i, j]))
                if np.argmax(t[b, i, j]) == label:
                    target = probs
                else:
                    target = np.zeros(t.shape[-1])
                    target[label] = 1.0
                total += -np.sum(target * np_log_softmax(s[b, i, j]))
                n += 1
        out.append(total / n if n else 0.0)
    return np.array(out)


def ref_cwd(t, s, valid, temperature):
    """valid: (B, H, W) bool."""
    out = []
    for b in range(t.shape[0]):
        keep = valid[b].reshape(-1)
        if not keep.any():
            out.append(0.0)
            continue
        channels = t.shape[-1]
        total = 0.0
        for c in range(channels):
            tc = t[b, ..., c].reshape(-1)[keep] / temperature
            sc = s[b, ..., c].reshape(-1)[keep] / temperature
            log_p, log_q = np_log_softmax(tc), np_log_softmax(sc)
            total += np.sum(np.exp(log_p) * (log_p - log_q))
        out.append(temperature**2 / channels * total)
    return np.array(out)


def np_pool(x, k):
    """Average of the real pixels of each k x k patch (ceil mode) of a (H, W, C) array."""
    h, w = x.shape[:2]
    out = np.zeros((math.ceil(h / k), math.ceil(w / k), x.shape[2]))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            out[i, j] = x[i * k:(i + 1) * k, j * k:(j + 1) * k].reshape(-1, x.shape[2]).mean(axis=0)
    return out


def np_pool_valid(valid, k):
    return np_pool(valid[..., None].astype(float), k)[..., 0] >= 0.5


def ref_pairwise(t, s, valid, k):
    out = []
    for b in range(t.shape[0]):
        ft = np_pool(t[b], k).reshape(-1, t.shape[-1])
        fs = np_pool(s[b], k).reshape(-1, s.shape[-1])
        keep = np_pool_valid(valid[b], k).reshape(-1)
        ft = ft / (np.linalg.norm(ft, axis=1, keepdims=True) + 1e-8)
        fs = fs / (np.linalg.norm(fs, axis=1, keepdims=True) + 1e-8)
        a_t = np.einsum("ic,jc->ij", ft, ft)
        a_s = np.einsum("ic,jc->ij", fs, fs)
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            out.append(0.0)
            continue
        diff = (a_s - a_t)[np.ix_(idx, idx)]
        out.append(np.sum(diff**2) / idx.size**2)
    return np.array(out)


def csc_matrix_by_shifts(features):
    """The paper's construction, literally: circular-shift products -> C^2 x N matrix M -> M^T M."""
    n, c = features.shape
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    m = np.zeros((c * c, n))
    for p in range(n):
        m[:, p] = np.concatenate([unit[p] * np.roll(unit[p], shift) for shift in range(c)])
    return m.T @ m


def ref_csc(t, s, valid, k):
    out = []
    for b in range(t.shape[0]):
        s_t = csc_matrix_by_shifts(np_pool(t[b], k).reshape(-1, t.shape[-1]))
        s_s = csc_matrix_by_shifts(np_pool(s[b], k).reshape(-1, s.shape[-1]))
        idx = np.flatnonzero(np_pool_valid(valid[b], k).reshape(-1))
        if idx.size == 0:
            out.append(0.0)
            continue
        out.append(np.sum((s_s - s_t)[np.ix_(idx, idx)] ** 2) / idx.size**2)
    return np.array(out)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@pytest.fixture
def data():
    """Teacher/student maps (B, 8, 12, C), labels (B, 16, 24) with ignored blocks."""
    rng = np.random.default_rng(7)
    t = rng.normal(0, 2, (B, H, W, C)).astype(np.float32)
    s = rng.normal(0, 2, (B, H, W, C)).astype(np.float32)
    labels = rng.integers(0, C, (B, H0, W0))
    labels[0, :5, :9] = IGNORE
    labels[1, 10:, 3:17] = IGNORE
    labels[rng.random((B, H0, W0)) < 0.1] = IGNORE
    y = np_nearest(labels, H, W)
    assert (y == IGNORE).any() and (y != IGNORE).any()
    return t, s, labels, y


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def all_losses():
    return [PixelKD(), PairwiseKD(), CSCLoss(), AdaptiveCrossEntropy(), ChannelWiseKD()]


# --------------------------------------------------------------------------------------------
# Label resize
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(8, 12), (7, 10), (16, 24), (20, 30)])
def test_label_resize_is_nearest_with_half_pixel_centres(size):
    labels = np.random.default_rng(0).integers(0, 256, (2, 16, 24))
    ours = resize_labels_nearest(labels, size).numpy()
    np.testing.assert_array_equal(ours, np_nearest(labels, *size))
    # ... which is also what tf.image.resize does, so labels line up with resized maps.
    theirs = tf.image.resize(labels[..., None], size, method="nearest")[..., 0].numpy()
    np.testing.assert_array_equal(ours, theirs)
    # (B, H, W, 1) and float labels are accepted.
    np.testing.assert_array_equal(resize_labels_nearest(labels[..., None].astype(np.float32), size).numpy(), ours)


# --------------------------------------------------------------------------------------------
# Values against the references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.9), (20.0, 0.9), (2.0, 0.0), (3.0, 1.0)])
def test_pixel_kd_matches_reference(data, temperature, alpha):
    t, s, labels, y = data
    loss = PixelKD(temperature=temperature, alpha=alpha)(t, s, labels)
    assert loss.shape == (B,) and loss.dtype == tf.float32
    assert_close(loss, ref_pixel_kd(t, s, y, temperature, alpha))


def test_pixel_kd_t_squared_scaling(data):
    t, s, labels, y = data
    values = {}
    for temperature in (1.0, 4.0):
        values[temperature] = PixelKD(temperature=temperature, alpha=1.0)(t, s, labels).numpy()
        assert_close(values[temperature], ref_pixel_kd(t, s, y, temperature, 1.0))
    # Without the T^2 factor the soft term would shrink ~T^2-fold; with it, both are O(1).
    kl_only_t4 = values[4.0] / 16.0
    assert np.all(values[4.0] > 4 * kl_only_t4)
    assert np.all(values[4.0] > 0.1 * values[1.0])


def test_pixel_kd_class_weights(data):
    t, s, labels, y = data
    weights = [0.5, 1.0, 2.0, 0.0, 3.0]
    loss = PixelKD(temperature=2.0, alpha=0.3, class_weights=weights)(t, s, labels)
    assert_close(loss, ref_pixel_kd(t, s, y, 2.0, 0.3, weights))
    with pytest.raises(ConfigError, match="3 class_weights"):
        PixelKD(class_weights=[1.0, 1.0, 1.0])(t, s, labels)


def test_pixel_kd_logit_offset_only_shifts_the_cross_entropy(data):
    t, s, labels, y = data
    offset = [0.8, -0.5, 0.0, 0.3, -0.7]
    loss = PixelKD(temperature=2.0, alpha=0.4, class_weights=[1.0, 2.0, 1.0, 0.5, 1.0], logit_offset=offset)
    assert_close(loss(t, s, labels), ref_pixel_kd(t, s, y, 2.0, 0.4, [1.0, 2.0, 1.0, 0.5, 1.0], offset))
    soft_only = PixelKD(temperature=2.0, alpha=1.0)
    assert_close(PixelKD(temperature=2.0, alpha=1.0, logit_offset=offset)(t, s, labels), soft_only(t, s, labels).numpy())
    assert PixelKD.from_config(loss.get_config()).logit_offset == offset
    with pytest.raises(ConfigError, match="4 logit_offset"):
        PixelKD(logit_offset=offset[:4])(t, s, labels)
    with pytest.raises(ConfigError, match="logit_offset must be finite"):
        PixelKD(logit_offset=[0.0, np.inf, 0.0, 0.0, 0.0])


def test_pixel_kd_alpha_zero_is_the_house_cross_entropy(data):
    t, s, labels, y = data
    house = SegmentationCrossEntropy(reduction=keras.losses.Reduction.NONE)(y, s)
    assert_close(PixelKD(alpha=0.0)(t, s, labels), house.numpy())


def test_classification_logits(data):
    rng = np.random.default_rng(3)
    t = rng.normal(0, 2, (6, C)).astype(np.float32)
    s = rng.normal(0, 2, (6, C)).astype(np.float32)
    y = np.array([0, 1, IGNORE, 3, 4, 2])
    for temperature, alpha in [(4.0, 0.5), (1.0, 0.9)]:
        loss = PixelKD(temperature=temperature, alpha=alpha)(t, s, y)
        assert loss.shape == (6,)
        assert_close(loss, ref_pixel_kd(t, s, y, temperature, alpha))
    weights = [1.0, 2.0, 0.5, 1.5, 1.0]
    assert_close(PixelKD(alpha=0.4, class_weights=weights)(t, s, y), ref_pixel_kd(t, s, y, 4.0, 0.4, weights))
    assert_close(AdaptiveCrossEntropy()(t, s, y), ref_ace(t, s, y))
    assert_close(AdaptiveCrossEntropy()(t, s, y[:, None]), ref_ace(t, s, y))  # (N, 1) labels
    assert PixelKD()(t, s, y).numpy()[2] == 0.0
    for loss in (PairwiseKD(), CSCLoss(), ChannelWiseKD()):
        with pytest.raises(ConfigError, match=r"\(B, H, W, C\)"):
            loss(t, s, y)


def test_ace_matches_reference(data):
    t, s, labels, y = data
    loss = AdaptiveCrossEntropy()(t, s, labels)
    assert loss.shape == (B,)
    assert_close(loss, ref_ace(t, s, y))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cwd_matches_reference(data, temperature):
    t, s, labels, y = data
    cwd = ChannelWiseKD(temperature=temperature, pool_size=1)
    assert_close(cwd(t, s, labels), ref_cwd(t, s, y != IGNORE, temperature))
    # Without labels, every position counts (the paper's form).
    all_valid = np.ones((B, H, W), bool)
    assert_close(cwd(t, s, None), ref_cwd(t, s, all_valid, temperature))


def test_cwd_cannot_see_a_per_class_logit_offset(data):
    """CWD softmaxes each class map over space, so a constant per-class offset (a teacher's logit
    adjustment, a class prior) leaves its targets unchanged: such a teacher fix cannot reach a CWD
    student (issue 19), where it changes pixel-wise KD's."""
    t, s, labels, _ = data
    offset = np.linspace(-3.0, 3.0, t.shape[-1]).astype(t.dtype)
    cwd = ChannelWiseKD(temperature=4.0, pool_size=1)
    assert_close(cwd(t + offset, s, labels), cwd(t, s, labels))
    assert not np.allclose(PixelKD()(t + offset, s, labels), PixelKD()(t, s, labels))


def test_pooled_cwd_is_cwd_of_patch_means(data):
    t, s, labels, y = data

    def means(x):  # 8x12 -> 4x6 means of 2x2 patches
        return x.reshape(B, H // 2, 2, W // 2, 2, -1).mean(axis=(2, 4))

    # A pooled position is ignored when half of its pixels or more are.
    valid = means((y != IGNORE).astype(float)[..., None])[..., 0] >= 0.5
    assert_close(ChannelWiseKD(pool_size=2)(t, s, labels), ref_cwd(means(t), means(s), valid, 4.0))


@pytest.mark.parametrize("pool_size", [1, 2, 3])
def test_pairwise_matches_reference(data, pool_size):
    t, s, labels, y = data
    s_wide = np.random.default_rng(1).normal(size=(B, H, W, 7)).astype(np.float32)  # other width
    for student in (s, s_wide):
        loss = PairwiseKD(pool_size=pool_size)(t, student, labels)
        assert_close(loss, ref_pairwise(t, student, y != IGNORE, pool_size), rtol=1e-4, atol=1e-6)
    assert_close(
        PairwiseKD(pool_size=pool_size)(t, s, None),
        ref_pairwise(t, s, np.ones((B, H, W), bool), pool_size),
        rtol=1e-4,
        atol=1e-6,
    )


def test_pairwise_max_pool_mode(data):
    t, s, labels, _ = data
    # Max over 2x2 patches (8x12 divides evenly), then the same affinity loss without pooling.
    t_max = t.reshape(B, H // 2, 2, W // 2, 2, C).max(axis=(2, 4))
    s_max = s.reshape(B, H // 2, 2, W // 2, 2, C).max(axis=(2, 4))
    y = np_nearest(labels, H, W)
    valid = np.stack([np_pool_valid(y[b] != IGNORE, 2) for b in range(B)])
    expected = ref_pairwise(t_max, s_max, valid, 1)
    assert_close(PairwiseKD(pool_size=2, pool_mode="max")(t, s, labels), expected, rtol=1e-4)


@pytest.mark.parametrize("pool_size", [1, 3])
def test_csc_matches_circular_shift_reference(data, pool_size):
    t, s, labels, y = data
    loss = CSCLoss(pool_size=pool_size)(t, s, labels)
    assert_close(loss, ref_csc(t, s, y != IGNORE, pool_size), rtol=1e-4, atol=1e-7)
    assert_close(CSCLoss(pool_size=pool_size)(t, s, None), ref_csc(t, s, np.ones((B, H, W), bool), pool_size), rtol=1e-4)


def test_csc_automatic_pool_size(data):
    t, s, labels, _ = data
    auto = CSCLoss(max_positions=30)  # 8x12 = 96 positions -> k=2 gives 4x6 = 24
    assert auto.patch_size_for(tf.constant(t)) == 2
    assert_close(auto(t, s, labels), CSCLoss(pool_size=2)(t, s, labels).numpy())
    assert CSCLoss().patch_size_for(tf.zeros((1, 288, 384, 11))) == 8  # CamVid crop logits -> 36x48
    assert CSCLoss().patch_size_for(tf.zeros((1, 36, 48, 64))) == 1  # stride-8 features
    # Sizes unknown while tracing: k is chosen in the graph, with the same result.
    spec = tf.TensorSpec([None, None, None, C], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([None, None, None], tf.int64)])
    def run(t, s, labels):
        return auto(t, s, labels), auto.patch_size_for(t)

    value, k = run(tf.constant(t), tf.constant(s), tf.constant(labels))
    assert int(k) == 2
    assert_close(value, auto(t, s, labels).numpy())


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss",
    [PixelKD(alpha=1.0), PixelKD(temperature=1.0, alpha=1.0), PairwiseKD(), CSCLoss(pool_size=1),
     ChannelWiseKD(pool_size=1)],
)
def test_zero_when_student_equals_teacher(data, loss):
    t, s, labels, _ = data
    assert_close(loss(t, t.copy(), labels), np.zeros(B), atol=1e-6)
    assert np.all(loss(t, s, labels).numpy() > 1e-3)


@pytest.mark.parametrize(
    "loss",
    [PixelKD(), PairwiseKD(pool_size=1), CSCLoss(pool_size=1), AdaptiveCrossEntropy(), ChannelWiseKD(pool_size=1)],
    ids=lambda loss: loss.name,
)
def test_ignored_positions_do_not_change_the_value(data, loss):
    t, s, labels, y = data
    ignored = (y == IGNORE)[..., None]
    rng = np.random.default_rng(11)
    t2 = np.where(ignored, rng.normal(0, 50, t.shape), t).astype(np.float32)
    s2 = np.where(ignored, rng.normal(0, 50, s.shape), s).astype(np.float32)
    before = loss(t, s, labels).numpy()
    after = loss(t2, s2, labels).numpy()
    assert not np.allclose(t2, t)
    assert_close(after, before, rtol=1e-5, atol=1e-6)
    # A change at a valid position does change it.
    s3 = s.copy()
    i, j = np.argwhere(y[0] != IGNORE)[0]
    s3[0, i, j, 0] += 5.0  # one channel: a shift of all logits would not change a softmax
    assert not np.isclose(loss(t, s3, labels).numpy()[0], before[0])


@pytest.mark.parametrize("loss", all_losses(), ids=lambda loss: loss.name)
def test_all_ignored_sample_is_zero_and_finite(data, loss):
    t, s, labels, _ = data
    labels = labels.copy()
    labels[1] = IGNORE
    student = tf.Variable(s)
    teacher = tf.constant(t)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(teacher)
        value = loss(teacher, student, labels)
        total = tf.reduce_sum(value)
    assert value.numpy()[1] == 0.0 and value.numpy()[0] > 0.0
    grad = tape.gradient(total, student).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0.0) and np.any(grad[0] != 0.0)
    teacher_grad = tape.gradient(total, teacher)
    assert teacher_grad is None or not np.any(teacher_grad.numpy())


@pytest.mark.parametrize("axis", [-1, 1])
def test_soft_target_kl_gradient_equals_automatic_differentiation(data, axis):
    """The hand-written gradient against TF's own differentiation of the plain formula, with
    an uneven upstream gradient and a few masked (-1e9) positions, as CWD feeds it."""
    t, s, _, _ = data
    teacher = tf.reshape(tf.constant(t), [B, H * W, C])
    student = tf.reshape(tf.constant(s), [B, H * W, C])
    masked = np.zeros((B, H * W, 1), bool)
    masked[:, :7] = True
    teacher = tf.where(masked, -1e9, teacher)
    student = tf.Variable(tf.where(masked, -1e9, student))
    temperature = 3.0
    upstream = tf.constant(np.random.default_rng(1).uniform(0.5, 2.0, (B, C if axis == 1 else H * W)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        ours = soft_target_kl(teacher, student, temperature, axis=axis)
        log_p = tf.nn.log_softmax(teacher / temperature, axis=axis)
        log_q = tf.nn.log_softmax(student / temperature, axis=axis)
        plain = tf.reduce_sum(tf.exp(log_p) * (log_p - log_q), axis=axis)
        ours_total, plain_total = tf.reduce_sum(upstream * ours), tf.reduce_sum(upstream * plain)
    assert_close(ours, plain.numpy())
    ours_grad, plain_grad = tape.gradient(ours_total, student).numpy(), tape.gradient(plain_total, student).numpy()
    assert np.any(ours_grad != 0.0) and np.all(np.isfinite(ours_grad))
    assert_close(ours_grad, plain_grad, rtol=1e-4, atol=1e-7)


def test_teacher_gets_no_gradient_even_without_labels(data):
    t, s, _, _ = data
    teacher = tf.Variable(t)
    for loss in (PairwiseKD(), CSCLoss(pool_size=2), ChannelWiseKD(), PixelKD(alpha=1.0)):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(loss(teacher, s + 0.5, None))
        grad = tape.gradient(total, teacher)
        assert grad is None or not np.any(grad.numpy()), loss.name


def test_ace_does_not_follow_a_wrong_teacher(data):
    t, s, labels, y = data
    valid = y != IGNORE
    wrong = valid & (np.argmax(t, axis=-1) != np.where(valid, y, 0))
    right = valid & ~wrong
    assert wrong.any() and right.any()
    ace = AdaptiveCrossEntropy()
    before = ace(t, s, labels).numpy()
    # Make the teacher wrong in another way (still not the label) at its wrong pixels: no change.
    t2 = t.copy()
    for b, i, j in np.argwhere(wrong):
        order = [c for c in np.argsort(-t[b, i, j]) if c != y[b, i, j]]
        t2[b, i, j, order[-1]] = t[b, i, j].max() + 10.0  # a different wrong class, very confident
    assert np.all(np.argmax(t2, axis=-1)[wrong] != y[wrong])
    assert_close(ace(t2, s, labels), before)
    # A wrong teacher everywhere: ACE is the plain cross-entropy with the labels.
    t_wrong = (20.0 * np.eye(C)[(np.where(valid, y, 0) + 1) % C]).astype(np.float32)  # next class
    assert np.all(np.argmax(t_wrong, axis=-1)[valid] != y[valid])
    house = SegmentationCrossEntropy(reduction=keras.losses.Reduction.NONE)(y, s).numpy()
    assert_close(ace(t_wrong, s, labels), house)
    # A right teacher: the target is its probability map (changing its confidence changes ACE).
    t_right = t.copy()
    t_right[right] *= 3.0
    assert not np.allclose(ace(t_right, s, labels).numpy(), before)


def test_labels_required_where_needed(data):
    t, s, labels, _ = data
    with pytest.raises(ConfigError, match="labels are required"):
        AdaptiveCrossEntropy()(t, s, None)
    with pytest.raises(ConfigError, match="labels are required"):
        PixelKD(alpha=0.5)(t, s, None)
    assert_close(PixelKD(alpha=1.0)(t, s, None), ref_pixel_kd(t, s, np.zeros((B, H, W), int), 4.0, 1.0))


def test_bad_labels_and_shapes(data):
    t, s, labels, _ = data
    bad = labels.copy()
    bad[:, 1::2, 1::2] = np.where(bad[:, 1::2, 1::2] == IGNORE, 0, bad[:, 1::2, 1::2])  # the sampled pixels
    bad[0, 1, 1] = 7  # not a class, not the ignore label, and kept by the 2x nearest resize
    for loss in (PixelKD(), AdaptiveCrossEntropy()):
        with pytest.raises(tf.errors.InvalidArgumentError, match="labels outside"):
            loss(t, s, bad)
    with pytest.raises(ConfigError, match="must have equal"):
        PixelKD()(t, s[..., :3], labels)
    with pytest.raises(ConfigError, match="must have equal"):
        PairwiseKD()(t, s[:, :4], labels)


def test_graph_mode_with_unknown_sizes(data):
    t, s, labels, _ = data
    losses = all_losses()
    spec = tf.TensorSpec([None, None, None, C], tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec([None, None, None], tf.int64)])
    def run(t, s, labels):
        return [loss(t, s, labels) for loss in losses]

    for loss, value in zip(losses, run(tf.constant(t), tf.constant(s), tf.constant(labels))):
        assert_close(value, loss(t, s, labels).numpy(), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Interface, configuration, validation
# --------------------------------------------------------------------------------------------


def _tiny_model(name, output_rank):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(C, 1)(inputs)
    if output_rank == 2:
        x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name=name)


def test_interface_attributes_and_hooks():
    # name, endpoint, adapter for 8 -> 4 channels, default student loss weight, accepts classifiers
    expected = {
        PixelKD: ("pixel_kd", "logits", True, 0.0, True),
        PairwiseKD: ("pairwise_kd", "features", False, 1.0, False),
        CSCLoss: ("csc", "logits", False, 1.0, False),
        AdaptiveCrossEntropy: ("ace", "logits", True, 0.0, True),
        ChannelWiseKD: ("cwd", "logits", True, 1.0, False),
    }
    segmenters = (_tiny_model("teacher", 4), _tiny_model("student", 4))
    classifiers = (_tiny_model("teacher", 2), _tiny_model("student", 2))
    for cls, (name, endpoint, adapts, student_weight, classifies) in expected.items():
        loss = cls()
        assert isinstance(loss, DistillationLoss)
        assert (loss.name, loss.teacher_endpoint, loss.student_endpoint) == (name, endpoint, endpoint)
        assert loss.weight == 1.0 and loss.ignore_label == IGNORE
        assert loss.adapter(4, 4, name="a") is None  # same channel count: never an adapter
        adapter = loss.adapter(4, 8, name="adapter_0")
        if adapts:
            assert isinstance(adapter, keras.layers.Conv2D) and adapter.filters == 4
            assert adapter.kernel_size == (1, 1) and adapter.name == "adapter_0"
        else:
            assert adapter is None  # position x position matrices: any channel counts
        assert loss.default_student_loss_weight() == student_weight
        loss.validate(*segmenters)
        if classifies:
            loss.validate(*classifiers)
        else:
            with pytest.raises(ValueError, match=r"compares spatial maps.*\(classifiers\)"):
                loss.validate(*classifiers)
    custom = PairwiseKD(weight=0.5, teacher_endpoint="decoder", student_endpoint="features", name="pa_dec")
    got = (custom.weight, custom.teacher_endpoint, custom.student_endpoint, custom.name)
    assert got == (0.5, "decoder", "features", "pa_dec")


def test_pairwise_validate_refuses_a_signed_teacher_tap_for_a_relu_student_tap():
    inputs = keras.Input((8, 8, 3))
    relu = keras.Model(inputs, keras.layers.Conv2D(4, 1, activation="relu", name="features")(inputs), name="s")
    signed = keras.Model(inputs, keras.layers.Conv2D(4, 1, name="features")(inputs), name="t")
    PairwiseKD().validate(relu, relu)
    PairwiseKD().validate(signed, signed)
    PairwiseKD().validate(relu, signed)  # a signed student can follow a non-negative teacher
    with pytest.raises(ConfigError, match="'features' of the student 's' is never negative"):
        PairwiseKD().validate(signed, relu)


@pytest.mark.parametrize(
    "loss",
    [
        PixelKD(temperature=20.0, alpha=0.9, class_weights=[1.0, 2.0, 0.5, 1.0, 1.0], weight=2.0, name="kd20"),
        PairwiseKD(pool_size=4, pool_mode="max", teacher_endpoint="decoder", ignore_label=None),
        CSCLoss(pool_size=None, max_positions=1000, student_endpoint="features"),
        CSCLoss(pool_size=3),
        AdaptiveCrossEntropy(weight=0.7, teacher_endpoint="logits", name="ace_aux"),
        ChannelWiseKD(temperature=2.5, pool_size=4, weight=3.0),
    ],
    ids=lambda loss: loss.name,
)
def test_config_round_trip(data, loss):
    config = loss.get_config()
    # Every constructor argument is in the config (a subclass that forgets one fails here).
    assert set(config) == set(inspect.signature(type(loss).__init__).parameters) - {"self"}
    rebuilt = type(loss).from_config(config)
    assert type(rebuilt) is type(loss) and rebuilt.get_config() == config
    serialized = keras.utils.serialize_keras_object(loss)
    restored = keras.utils.deserialize_keras_object(serialized)
    assert type(restored) is type(loss) and restored.get_config() == config
    t, s, labels, _ = data
    assert_close(restored(t, s, labels), loss(t, s, labels).numpy())


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_temperature(value):
    for cls in (PixelKD, ChannelWiseKD):
        with pytest.raises(ValueError, match=re.escape(f"temperature must be finite and > 0, got {value!r}")):
            cls(temperature=value)


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_bad_alpha(value):
    with pytest.raises(ValueError, match=re.escape(f"alpha must be in [0, 1], got {value!r}")):
        PixelKD(alpha=value)


@pytest.mark.parametrize("value", [0, -2, 1.5, True])
def test_bad_pool_size(value):
    for cls in (PairwiseKD, CSCLoss):
        with pytest.raises(ValueError, match=re.escape(f"pool_size must be an integer >= 1, got {value!r}")):
            cls(pool_size=value)


def test_other_bad_arguments():
    with pytest.raises(ValueError, match="weight must be finite and >= 0, got -1"):
        PixelKD(weight=-1.0)
    with pytest.raises(ValueError, match="pool_mode"):
        PairwiseKD(pool_mode="median")
    with pytest.raises(ValueError, match="max_positions"):
        CSCLoss(max_positions=0)
    with pytest.raises(ValueError, match="teacher_endpoint"):
        CSCLoss(teacher_endpoint="")
    for bad in ("255", 2.5, True):
        with pytest.raises(ValueError, match=re.escape(f"ignore_label must be an integer or None, got {bad!r}")):
            ChannelWiseKD(ignore_label=bad)
    assert PixelKD(ignore_label=254.0).ignore_label == 254 and PixelKD(ignore_label=None).ignore_label is None
    with pytest.raises(ValueError, match="class_weights"):
        PixelKD(class_weights=[1.0, -1.0])
