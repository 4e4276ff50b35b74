"""The NAS search on a tiny space: the supernet, the controller's fit() steps, the guard against
non-finite steps, the callbacks, resuming, and the derived network training as a zoo model."""

import json

import numpy as np
import pytest

from tfseg import models
from tfseg._keras import keras, tf
from tfseg.nas.arch_params import lattice_mask
from tfseg.nas.architecture import Architecture
from tfseg.nas.controller import (
    ArchitectureLog,
    BalanceLatencyWeight,
    DerivedWidthBatchNorm,
    LatencyBand,
    SearchController,
    StopOnSkippedSteps,
    StopOnSkipTakeover,
    paired_dataset,
)
from tfseg.nas.space import SearchSpace
from tfseg.nas.supernet import SuperNet
from tfseg.train import compile_for_segmentation

SIZE = (64, 64)  # the space's smallest input side
CLASSES = 3
SPACE = SearchSpace(num_layers=3, cell_widths=(8, 16, 32), stem_widths=(4, 8, 8), head_width=8, width_ratios=(0.5, 1.0))
OP_COST = {"skip": 0.0, "conv3x3": 1.0, "conv3x3_x2": 2.0, "zoomed_conv": 0.6, "sep_conv3x3": 0.5}


class FakeLatency:
    """Expected latency linear in the probabilities: op costs by alpha, width ratios by gamma, the
    stride-2 edges by beta (the path); ``predict`` the same sum over a derived network's cells."""

    def __init__(self, space):
        self.space = space
        self.exists = tf.constant(lattice_mask(space), tf.float32)
        self.op_cost = tf.constant([OP_COST[op] for op in space.ops])
        self.ratios = tf.constant(space.width_ratios, tf.float32)

    def decoupled(self, probs):
        ops = tf.reduce_sum(self.exists * tf.linalg.matvec(probs["alpha"], self.op_cost))
        widths = (tf.reduce_sum(self.exists * tf.linalg.matvec(probs["gamma"], self.ratios))
                  + tf.reduce_sum(tf.linalg.matvec(probs["gamma_stem"], self.ratios))
                  + tf.reduce_sum(probs["gamma_head"] * self.ratios))
        path = tf.reduce_sum(probs["beta"][..., 1])
        return {"ops": ops, "path": path, "widths": widths, "total": ops + path + widths}

    def predict(self, architecture):
        return float(sum(OP_COST[cell.op] + cell.width / 32 for branch in architecture.branches for cell in branch))


def batches(num=4, batch=2, seed=0, nan=False):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (num, *SIZE, 3)).astype("float32")
    labels = (images[..., 0] // (256 / CLASSES)).astype("int32")  # something to learn
    labels[:, :4] = 255
    if nan:
        images[0, 5, 5, 0] = np.nan
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def data(nan_a=False, nan_b=False, num=4):
    return paired_dataset(batches(num, seed=0, nan=nan_a), batches(num, seed=1, nan=nan_b))


def controller(arch_lr=3e-4, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    search = SearchController(SuperNet(SPACE, SIZE, CLASSES), FakeLatency(SPACE), **kwargs)
    search.compile(arch_optimizer=keras.optimizers.Adam(arch_lr, beta_1=0.5, beta_2=0.999, jit_compile=False))
    return search


def values(variables):
    return [v.numpy().copy() for v in variables]


def moved(before, variables):
    return [not np.array_equal(old, v.numpy()) for old, v in zip(before, variables)]


def test_supernet_shapes_and_separate_variables():
    net = SuperNet(SPACE, SIZE, CLASSES)
    arch_ids = {id(v) for v in net.arch.variables}
    assert not arch_ids & {id(v) for v in net.weights}
    images = tf.zeros((1, *SIZE, 3))
    assert net(images, training=True).shape == (1, *SIZE, CLASSES)
    assert net(images, training=False).shape == (1, *SIZE, CLASSES)


def test_arch_frozen_during_warmup_then_moves_and_logs(tmp_path):
    search = controller(warmup_steps=2)  # one epoch of 2 steps
    arch, weights = search.supernet.arch, search.supernet.weight_variables
    before_arch, before_weights = values(arch.variables), values(weights)
    search.fit(data(), epochs=1, verbose=0)
    assert not any(moved(before_arch, arch.variables)) and int(search.search_step.numpy()) == 2
    assert sum(moved(before_weights, weights)) > len(weights) // 2

    log = ArchitectureLog(tmp_path / "arch{epoch}.json", tmp_path / "history.jsonl")
    history = search.fit(data(), epochs=1, verbose=0, callbacks=[log]).history
    for key in ("seg_loss", "arch_loss", "latency", "w", "skipped_steps"):
        assert np.isfinite(history[key]).all(), key
    assert history["skipped_steps"] == [0.0]
    changed = dict(zip(["alpha", "beta", "gamma"], moved(before_arch, arch.variables)))
    assert all(changed.values()), changed
    assert isinstance(Architecture.load(tmp_path / "arch1.json"), Architecture)
    record = json.loads((tmp_path / "history.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 1 and record["skipped_share"] == 0.0 and len(record["branches"]) == 2


def test_large_latency_weight_lowers_expected_latency():
    search = controller(arch_lr=0.05)
    expected = lambda: float(search.latency_model.decoupled(search.supernet.arch.probabilities())["total"])  # noqa: E731
    state = search.variables + search.optimizer.variables + search.arch_optimizer.variables
    start, initial = expected(), values(state)
    latency = {}
    for w in (0.0, 100.0):  # the same traced step: w is a variable
        for variable, value in zip(state, initial):
            variable.assign(value)
        search.latency_weight.assign(w)
        search.fit(data(), epochs=2, verbose=0)
        latency[w] = expected()
    assert latency[100.0] < start - 0.1
    assert latency[100.0] < latency[0.0] - 0.1


def test_non_finite_step_is_skipped_and_counted():
    search = controller(warmup_steps=0)
    net = search.supernet
    weights, arch = net.weights, net.arch.variables  # weights include the batch-norm statistics
    before_weights, before_arch = values(weights), values(arch)
    # A NaN pixel in the first A batch: the weight step is skipped, the arch step on B applies.
    history = search.fit(data(nan_a=True, num=2), epochs=1, verbose=0).history
    assert history["skipped_steps"] == [1.0] and int(search.skipped_total.numpy()) == 1
    assert not any(moved(before_weights, weights))
    assert all(moved(before_arch, arch)[:3])
    assert np.isfinite(history["seg_loss"]).all()
    # A NaN in B: the arch step is skipped, the weights move.
    before_weights, before_arch = values(weights), values(arch)
    history = search.fit(data(nan_b=True, num=2), epochs=1, verbose=0).history
    assert history["skipped_steps"] == [1.0]
    assert not any(moved(before_arch, arch))
    assert any(moved(before_weights, weights))


def test_distillation_from_a_frozen_teacher_and_validation():
    inputs = keras.Input((*SIZE, 3))
    teacher = keras.Model(inputs, keras.layers.Conv2D(CLASSES, 1)(inputs))
    before = values(teacher.weights)
    keras.utils.set_random_seed(0)
    search = SearchController(SuperNet(SPACE, SIZE, CLASSES), FakeLatency(SPACE), teacher=teacher)
    search.compile(run_eagerly=True)  # two steps: faster than tracing
    history = search.fit(data(), validation_data=batches(num=2), epochs=1, verbose=0).history
    for key in ("kd_loss", "seg_loss", "val_seg_loss", "val_miou"):
        assert np.isfinite(history[key]).all(), key
    assert not any(moved(before, teacher.weights))


def test_derived_architecture_builds_and_trains():
    search = controller()
    architecture = search.supernet.arch.derive()
    model = models.build("searched", (*SIZE, 3), CLASSES, architecture=architecture)
    compile_for_segmentation(model, CLASSES)
    history = model.fit(batches(num=2), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_save_and_restore_state_round_trip(tmp_path):
    search = controller()
    rng = np.random.default_rng(0)
    for variable in search.supernet.arch.variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    search.latency_weight.assign(0.123)
    search.search_step.assign(7)
    search.save_state(tmp_path, epoch=3)

    other = controller(seed=1)
    assert other.restore_state(tmp_path / "empty") == 0  # nothing to restore: a fresh start
    assert other.restore_state(tmp_path) == 3
    for mine, theirs in zip(search.supernet.arch.variables, other.supernet.arch.variables):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    for mine, theirs in zip(search.supernet.weights, other.supernet.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert float(other.latency_weight.numpy()) == pytest.approx(0.123)
    assert int(other.search_step.numpy()) == 7


def test_latency_band_and_skip_takeover_callbacks():
    search = controller(latency_weight=1.0)
    search.search_step.assign(1)  # past the warm-up (0 steps)
    ms = search.predicted_latency()
    for (low, high), expected in (((0.0, ms / 2), 2.0), ((ms * 2, ms * 4), 1.0), ((ms / 2, ms * 2), 1.0)):
        band = LatencyBand(low, high)
        band.set_model(search)
        band.on_epoch_end(0, {})
        assert float(search.latency_weight.numpy()) == expected

    skipped = StopOnSkippedSteps(0.25)
    skipped.set_model(search)
    skipped.set_params({"steps": 8})
    skipped.on_epoch_begin(0)
    skipped.on_train_batch_end(0, {"skipped_steps": 2.0})
    assert not search.stop_training
    skipped.on_train_batch_end(1, {"skipped_steps": 3.0})
    assert search.stop_training
    search.stop_training = False

    stop = StopOnSkipTakeover(0.5)
    stop.set_model(search)
    # skips first (the tie at the end of the warm-up): not a take-over; then conv; then skips again: one
    for op, stops in (("skip", False), ("conv3x3", False), ("skip", True)):
        alpha = np.zeros(search.supernet.arch.alpha.shape, "float32")
        alpha[..., SPACE.ops.index(op)] = 5.0
        search.supernet.arch.alpha.assign(alpha)
        stop.on_epoch_end(0, {})
        assert search.stop_training == stops, op


def test_precise_bn_for_validation_uses_the_argmax_widths_and_restores_sampling(monkeypatch):
    supernet = SuperNet(SPACE, SIZE, CLASSES)
    seen = []
    sample = supernet.width_weights
    monkeypatch.setattr(supernet, "width_weights", lambda training: seen.append(supernet.sample_widths) or sample(training))
    stem_bn = next(layer for layer in supernet.stem_blocks[0].layers if isinstance(layer, keras.layers.BatchNormalization))
    before = stem_bn.moving_mean.numpy().copy()
    callback = DerivedWidthBatchNorm(supernet, batches(num=4, batch=2), num_batches=2)
    callback.on_test_begin()
    assert seen == [False, False] and supernet.sample_widths  # two batches at argmax widths, then sampling again
    assert not np.allclose(stem_bn.moving_mean.numpy(), before)
    supernet.sample_widths = False  # training mode with sampling off: the argmax widths
    assert all(np.array_equal(a, b) for a, b in zip(supernet.width_weights(True).values(),
                                                  supernet.width_weights(False).values()))


def test_latency_weight_is_balanced_once_at_the_first_architecture_step():
    search = controller(warmup_steps=2, latency_weight=1e-4, latency_coefficients=(1, 1, 1))
    search.supernet.sample_widths = False  # deterministic forward passes for the check below
    images, labels = next(iter(batches(4, seed=1)))
    w = search.balanced_latency_weight(images, labels, balance=2.0)
    with tf.GradientTape(persistent=True) as tape:
        seg = tf.reduce_mean(search._seg_loss(labels, search.supernet(images, training=True)))
        latency = search._latency_term(search.supernet.arch.probabilities())
    norm = lambda value: float(tf.linalg.global_norm([g for g in tape.gradient(value, search.arch_variables)  # noqa: E731
                                                      if g is not None]))
    assert w * norm(latency) == pytest.approx(2.0 * norm(seg), rel=1e-4)

    callback = BalanceLatencyWeight(batches(4, seed=1), balance=2.0, num_batches=1)
    search.fit(data(), epochs=1, verbose=0, callbacks=[callback])  # the warm-up: w untouched
    assert callback.calibrated is None and float(search.latency_weight.numpy()) == pytest.approx(1e-4)
    search.fit(data(), epochs=1, verbose=0, callbacks=[callback])
    assert callback.calibrated > 0 and float(search.latency_weight.numpy()) == pytest.approx(callback.calibrated)
    resumed = BalanceLatencyWeight(batches(4, seed=1), balance=2.0, num_batches=1)
    search.fit(data(), epochs=1, verbose=0, callbacks=[resumed])  # past the first architecture step: kept
    assert resumed.calibrated is None
