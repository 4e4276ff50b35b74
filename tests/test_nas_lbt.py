"""Learning by teaching on a tiny space: the student step and the teaching term move what they should,
a spiked run stays finite, the teaching gradient matches a finite difference of the student's
validation loss after an actual step, and the state checkpoint carries the student."""

import importlib

import numpy as np
import pytest

from tfseg._keras import keras, tf
from tfseg.errors import ConfigError
from tfseg.nas.arch_params import lattice_mask
from tfseg.nas.lbt import LBTController, check_forward_mode, lbt_dataset
from tfseg.nas.space import SearchSpace
from tfseg.nas.supernet import SuperNet

SIZE = (32, 48)
CLASSES = 3
SPACE = SearchSpace(ops=("skip", "conv3x3"), num_layers=3, cell_widths=(4, 8, 8), stem_widths=(4, 4, 4),
                    head_width=4, width_ratios=(0.5, 1.0))
FIXED_WIDTHS = SearchSpace(ops=("skip", "conv3x3"), num_layers=3, cell_widths=(4, 8, 8), stem_widths=(4, 4, 4),
                           head_width=4, width_ratios=(1.0,))  # nothing sampled: a deterministic training forward


class FakeLatency:
    """Expected latency linear in the probabilities (op costs by alpha, width ratios by gamma)."""

    def __init__(self, space):
        self.exists = tf.constant(lattice_mask(space), tf.float32)
        self.op_cost = tf.constant([float(op != "skip") for op in space.ops])
        self.ratios = tf.constant(space.width_ratios, tf.float32)

    def decoupled(self, probs):
        ops = tf.reduce_sum(self.exists * tf.linalg.matvec(probs["alpha"], self.op_cost))
        widths = tf.reduce_sum(self.exists * tf.linalg.matvec(probs["gamma"], self.ratios))
        path = tf.reduce_sum(probs["beta"][..., 1])
        return {"ops": ops, "path": path, "widths": widths, "total": ops + path + widths}

    def predict(self, architecture):
        return float(sum(cell.op != "skip" for branch in architecture.branches for cell in branch))


def student_model(size=SIZE):
    """A tiny student: a stride-2 conv, batch norm, a 1x1 classifier, a bilinear resize back."""
    inputs = keras.Input((*size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(6, 3, strides=2, padding="same")(x)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    x = keras.layers.Conv2D(CLASSES, 1)(x)
    return keras.Model(inputs, keras.layers.Resizing(*size, interpolation="bilinear")(x), name="student")


def examples(num, seed):
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (num, *SIZE, 3)).astype("float32")
    labels = (images[..., 0] // (256 / CLASSES)).astype("int32")  # something to learn
    labels[:, :3] = 255
    return images, labels


def data(steps=3, batch=2, spikes=None):
    """``steps`` batches; ``spikes`` {step: factor or nan} multiplies that step's U batch."""
    pair = lambda seed: tf.data.Dataset.from_tensor_slices(examples(2 * batch, seed)).batch(batch).repeat()  # noqa: E731
    unlabeled, _ = examples(steps * batch, seed=2)
    for step, factor in (spikes or {}).items():
        unlabeled[step * batch:(step + 1) * batch] *= factor
    ds_u = tf.data.Dataset.from_tensor_slices((unlabeled, np.zeros(unlabeled.shape[:3], "int32"))).batch(batch)
    return lbt_dataset(pair(0), pair(1), ds_u)  # U's labels are dropped; U decides the length


def controller(space=SPACE, seed=0, student_optimizer=None, arch_lr=0.01, **kwargs):
    keras.utils.set_random_seed(seed)
    search = LBTController(SuperNet(space, SIZE, CLASSES), FakeLatency(space), student_model(),
                           student_optimizer=student_optimizer, **kwargs)
    search.compile(arch_optimizer=keras.optimizers.Adam(arch_lr, beta_1=0.5, jit_compile=False))
    return search


def values(variables):
    return [v.numpy().copy() for v in variables]


def moved(before, variables):
    return [not np.array_equal(old, v.numpy()) for old, v in zip(before, variables)]


def all_finite(variables):
    return all(np.isfinite(v.numpy()).all() for v in variables)


def test_student_trains_in_warmup_then_teaches():
    search = controller(warmup_steps=1)
    arch, student = search.supernet.arch.variables, search.student.trainable_variables
    before_arch, before_student = values(arch), values(student)
    history = search.fit(data(steps=1), epochs=1, verbose=0).history  # the warm-up step
    assert not any(moved(before_arch, arch)) and all(moved(before_student, student))
    assert history["teaching_norm"] == [0.0] and np.isfinite(history["student_loss"]).all()

    before_arch, before_student = values(arch), values(student)
    history = search.fit(data(steps=3), epochs=1, verbose=0).history
    for key in ("seg_loss", "arch_loss", "student_loss", "student_val_loss", "teaching_norm", "latency"):
        assert np.isfinite(history[key]).all(), key
    assert history["teaching_norm"][0] > 0 and history["skipped_steps"] == [0.0]
    assert all(moved(before_arch, arch)[:3]) and all(moved(before_student, student))


class SkippedBatches(keras.callbacks.Callback):
    """The batches whose step counted as skipped."""

    def __init__(self):
        super().__init__()
        self.batches, self._seen = [], 0.0

    def on_train_batch_end(self, batch, logs=None):
        if logs["skipped_steps"] > self._seen:
            self.batches.append(batch)
        self._seen = logs["skipped_steps"]


def test_spiked_run_of_100_steps_stays_finite():
    # U batches times NaN (in the warm-up and after), 1e30 (overflows the student's batch statistics
    # while its batch-normalised loss stays finite) and 1e6 (normalised away, applied)
    spikes = {3: np.nan, 40: np.nan, 60: 1e30, 80: 1e6}
    search = controller(warmup_steps=5)
    skipped = SkippedBatches()
    history = search.fit(data(steps=100, spikes=spikes), epochs=1, verbose=0, callbacks=[skipped]).history
    assert int(search.search_step.numpy()) == 100
    assert skipped.batches == [3, 40, 60] and int(search.skipped_total.numpy()) == 3
    net = search.supernet
    assert all_finite(net.weights) and all_finite(net.arch.variables) and all_finite(search.student.weights)
    assert all_finite(search.optimizer.variables) and all_finite(search.student_optimizer.variables)
    for key in ("seg_loss", "arch_loss", "student_loss", "student_val_loss", "teaching_norm"):
        assert np.isfinite(history[key]).all(), key


def test_lbt_dataset_drops_the_labels_of_u():
    pair = tf.data.Dataset.from_tensor_slices(examples(2, 0)).batch(1)
    images = tf.data.Dataset.from_tensor_slices(examples(3, 2)[0]).batch(1)
    for ds_u in (images, tf.data.Dataset.zip((images, images))):
        spec = lbt_dataset(pair, pair, ds_u).element_spec
        assert isinstance(spec[2], tf.TensorSpec) and spec[2].shape.as_list() == [None, *SIZE, 3]
    assert len(list(lbt_dataset(pair, pair, images))) == 2  # the shortest


def test_teaching_gradient_matches_a_finite_difference_of_the_students_validation_loss():
    """d L_val(S') / dA of ``teach`` against L_val after an actual SGD step of the student (no momentum,
    no clipping) from the pseudo-labels of A +- eps along the gradient."""
    xi = 0.5
    search = controller(FIXED_WIDTHS, student_optimizer=keras.optimizers.SGD(xi, jit_compile=False), clip_norm=1e9)
    (images_u, _), (images_b, labels_b) = examples(2, seed=2), examples(2, seed=1)
    arch, student = search.arch_variables, search.student.trainable_variables
    rng = np.random.default_rng(0)
    for variable in arch:  # away from the uniform start
        variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    start_arch, start_student = values(arch), values(student)

    def reset(arch_values):
        for variable, value in zip(arch + student, arch_values + start_student):
            variable.assign(value)

    student_ok, _, gradients = search.teach(images_u, images_b, labels_b)
    assert bool(student_ok)
    gradients = [g.numpy() for g in gradients]
    norm = np.sqrt(sum(float((g ** 2).sum()) for g in gradients))
    assert norm > 0

    def val_loss_after_step(eps):
        reset([a + eps * g / norm for a, g in zip(start_arch, gradients)])
        assert bool(search._student_step(search._pseudo_labels(images_u), images_u))
        return float(search._student_validation(images_b, labels_b)[0])

    eps = 0.01  # the central difference converges to within 0.1% from 0.02 down; 0.05 is 6% low already
    finite_difference = (val_loss_after_step(eps) - val_loss_after_step(-eps)) / (2 * eps)
    # along the unit gradient direction the directional derivative is +norm: sign and size
    assert finite_difference == pytest.approx(norm, rel=0.02), (finite_difference, norm)


def test_state_round_trip_includes_the_student(tmp_path):
    search = controller()
    rng = np.random.default_rng(0)
    for variable in search.student.weights + search.supernet.arch.variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    search.student_optimizer.iterations.assign(5)
    search.save_state(tmp_path, epoch=2)

    other = controller(seed=1)
    assert other.restore_state(tmp_path) == 2
    for mine, theirs in zip(search.student.weights + search.supernet.arch.variables,
                            other.student.weights + other.supernet.arch.variables):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert int(other.student_optimizer.iterations.numpy()) == 5


def test_forward_mode_check_catches_a_silent_zero(monkeypatch):
    assert check_forward_mode(student_model(), tf.random.uniform((2, *SIZE, 3), maxval=255.0)) > 0.99
    # TensorFlow's own rule: a zero JVP through the bilinear resize. TF caches the forward rule it
    # traced per op and shapes, so this takes a size used nowhere else.
    forwardprop = importlib.import_module(tf.autodiff.ForwardAccumulator.__module__)
    monkeypatch.delitem(forwardprop._SPECIAL_CASES, "ResizeBilinear")
    with pytest.raises(ConfigError, match="forward-mode"):
        check_forward_mode(student_model((40, 56)), tf.random.uniform((2, 40, 56, 3), maxval=255.0))


def test_student_must_match_the_supernet():
    inputs = keras.Input((*SIZE, 3))
    wrong = keras.Model(inputs, keras.layers.Conv2D(CLASSES + 1, 1)(inputs))
    with pytest.raises(ConfigError, match="student outputs"):
        LBTController(SuperNet(SPACE, SIZE, CLASSES), FakeLatency(SPACE), wrong)
