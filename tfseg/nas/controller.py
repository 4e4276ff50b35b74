"""The search loop: a Keras model whose ``fit`` alternates weight and architecture steps (FasterSeg,
first order).

``SearchController(supernet, latency_model)`` is compiled and fitted on ``paired_dataset(a, b)``:
each element is ``((images_a, labels_a), (images_b, labels_b))``, half A of the training set for
the network's weights, half B for the architecture. Each step:

1. weight step on A: segmentation loss (plus pixel-wise KD from a frozen teacher, if any), the
   compiled optimizer (default SGD 0.02, momentum 0.9), gradients clipped by global norm;
2. after ``warmup_steps`` (weights only until then), architecture step on B::

       seg loss + w * (c_ops * lat_ops + c_path * lat_path + c_widths * lat_widths)

   with the decoupled expected latencies of ``latency_model.decoupled`` (FasterSeg's coefficients
   1/500, 497/500, 2/500) and Adam (3e-4, beta_1 0.5) on the arch variables only, clipped.

An update whose loss or gradient norm is not finite is not applied (also not to the batch-norm
statistics its forward pass changed) and the step counts in ``skipped_steps``; under a
``tf.distribute`` strategy all replicas decide alike. The architecture step never changes the
network (its batch-norm statistics are put back).

The latency model has ``decoupled(probs) -> {"ops", "path", "widths", "total"}`` (tf scalars, ms;
``probs = ArchParameters.probabilities()``) and ``predict(architecture) -> float`` ms.

Callbacks: ``LatencyBand`` (adapts w to a latency band), ``ArchitectureLog`` (the derived
architecture and a JSONL history every epoch), ``StopOnSkippedSteps``, ``StopOnSkipTakeover``
(DARTS+) and ``SearchCheckpoint`` (``save_state`` every epoch; ``restore_state`` gives the epoch
to resume at). ``search_callbacks`` puts them together.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np

from tfseg._keras import keras, tf
from tfseg.batchnorm import PreciseBatchNorm
from tfseg.distill.losses import DistillationLoss, PixelKD
from tfseg.errors import ConfigError
from tfseg.losses import SegmentationCrossEntropy
from tfseg.train import per_sample_loss, segmentation_metrics, tracked_metrics

LATENCY_COEFFICIENTS = (1 / 500, 497 / 500, 2 / 500)  # FasterSeg's (ops, path, widths)


def paired_dataset(ds_a, ds_b) -> tf.data.Dataset:
    """``((images_a, labels_a), (images_b, labels_b))`` batches from two batched datasets of
    (images, labels); as long as the shorter one."""
    return tf.data.Dataset.zip((ds_a, ds_b))


def _counter(name: str, dtype=tf.int64):
    return tf.Variable(tf.zeros([], dtype), trainable=False, name=name,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def _on_all_replicas(ok):
    """``ok`` and-ed over the replicas, so that every replica skips or applies the same update."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return ok
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(ok), tf.float32)) == 0.0


class _Wrapped:
    """Keeps variables from being unwrapped between cross-replica and replica context."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _apply_if(ok, optimizer, gradients, variables):
    """``optimizer.apply_gradients`` of already aggregated gradients when ``ok``. Where the optimizer
    needs ``merge_call`` (MirroredStrategy on CPUs) a cond around it must run in cross-replica
    context, as Keras' LossScaleOptimizer does."""

    def apply(grads, wrapped):
        optimizer.apply_gradients(zip(grads, wrapped.value), skip_gradients_aggregation=True)

    def cond(ok, run):
        tf.cond(ok, lambda: run() or tf.constant(True), lambda: tf.constant(False))

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        cond(ok, lambda: apply(gradients, _Wrapped(variables)))
        return

    def cross_replica(distribution, ok, grads, wrapped):
        run = lambda: distribution.extended.call_for_each_replica(apply, args=(grads, wrapped))  # noqa: E731
        cond(distribution.experimental_local_results(ok)[0], run)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(ok, gradients, _Wrapped(variables)))


class SearchController(keras.Model):
    """Searches ``supernet.arch`` and trains ``supernet``'s weights through ``compile()`` + ``fit()``.

    Args:
      supernet: a ``tfseg.nas.supernet.SuperNet``.
      latency_model: ``decoupled(probs)`` and ``predict(architecture)`` (see the module docstring).
      latency_weight: initial w (FasterSeg: 1e-2 for a student, 0 for an unconstrained search);
        a tf.Variable (``controller.latency_weight``), adapted by ``LatencyBand``.
      warmup_steps: steps of weight training before the first architecture step (FasterSeg: 20 of
        50 epochs).
      latency_coefficients: (ops, path, widths) weights of the decoupled latencies, normalised to sum 1.
      clip_norm: global-norm clipping of both steps' gradients.
      teacher: optional frozen keras model giving logits (B, H, W, C) at the input size; its
        ``distillation`` loss (default ``PixelKD()``, which contains the ground-truth CE, so the
        plain CE then weighs 0) is added to the weight step.

    Logs ``seg_loss`` (A), ``arch_loss`` (B, once the architecture steps start), ``latency``
    (expected ms), ``w``, ``skipped_steps`` (per epoch), ``kd_loss`` with a teacher. Validation
    (plain (images, labels) batches) scores the supernet at its argmax widths: ``val_seg_loss`` and
    the compiled metrics (default mIoU, pixel accuracy).
    """

    def __init__(self, supernet, latency_model, *, latency_weight: float = 1e-2, warmup_steps: int = 0,
                 latency_coefficients=LATENCY_COEFFICIENTS, clip_norm: float = 5.0, teacher=None,
                 distillation: DistillationLoss | None = None, name: str = "search", **kwargs):
        super().__init__(name=name, **kwargs)
        coefficients = [float(c) for c in latency_coefficients]
        if len(coefficients) != 3 or min(coefficients) < 0 or sum(coefficients) <= 0:
            raise ConfigError(f"latency_coefficients must be 3 numbers >= 0 (ops, path, widths), got {latency_coefficients!r}")
        self.supernet = supernet
        self.latency_model = latency_model
        self.latency_coefficients = tuple(c / sum(coefficients) for c in coefficients)
        self.warmup_steps = int(warmup_steps)
        self.clip_norm = float(clip_norm)
        # State a resumed search needs besides the weights (all tracked, so Keras' BackupAndRestore keeps it too)
        self.arch_variables = list(supernet.arch.variables)
        self.latency_weight = tf.Variable(float(latency_weight), trainable=False, name="latency_weight")
        self.search_step = _counter("search_step")
        self.skipped_total = _counter("skipped_total")
        self.finished_epochs = _counter("finished_epochs")
        self.teacher, self.distillation = None, None
        if teacher is not None:
            self._set_teacher(teacher, distillation or PixelKD())
        self.seg_loss_fn = None
        self.arch_optimizer = None
        self._trackers = {}
        self.built = True

    def _set_teacher(self, teacher, distillation):
        if not isinstance(distillation, DistillationLoss):
            raise ConfigError(f"distillation must be a tfseg.distill.losses object, got {type(distillation).__name__}")
        if (distillation.teacher_endpoint, distillation.student_endpoint) != ("logits", "logits"):
            raise ConfigError("the search distils logits only: give the distillation loss teacher_endpoint and "
                              "student_endpoint 'logits'")
        expected = (*self.supernet.input_size, self.supernet.num_classes)
        if tuple(teacher.output_shape[1:]) != expected:
            raise ConfigError(f"the teacher outputs {tuple(teacher.output_shape[1:])} but the supernet {expected}: "
                              "build the teacher for the proxy input size and the same classes")
        teacher.trainable = False
        self.teacher, self.distillation = teacher, distillation

    def compile(self, optimizer=None, arch_optimizer=None, loss=None, metrics=None, **kwargs):
        """Configures the search.

        Args:
          optimizer: the weight optimizer; default SGD(0.02, momentum 0.9) (FasterSeg).
          arch_optimizer: default Adam(3e-4, beta_1=0.5, beta_2=0.999) (FasterSeg).
          The defaults do not XLA-compile their updates: that compiles one update per variable shape
          at the first step (a supernet has hundreds), seconds to minutes on a CPU, for a tiny share
          of a step's time.
          loss: per-sample segmentation loss; default ``SegmentationCrossEntropy`` (ignores 255).
          metrics: validation metrics; default mIoU and pixel accuracy.
        """
        num_classes = self.supernet.num_classes
        super().compile(optimizer=optimizer or keras.optimizers.SGD(0.02, momentum=0.9, jit_compile=False),
                        metrics=segmentation_metrics(num_classes) if metrics is None else metrics, **kwargs)
        self.arch_optimizer = arch_optimizer or keras.optimizers.Adam(3e-4, beta_1=0.5, beta_2=0.999, jit_compile=False)
        # Built now: their slots must not be created inside the tf.cond that skips bad steps.
        self.optimizer.build(self.supernet.weight_variables)
        self.arch_optimizer.build(self.arch_variables)
        self.seg_loss_fn = loss or SegmentationCrossEntropy(num_classes=num_classes)
        names = ["seg_loss", "arch_loss", "latency", "w", *(["kd_loss"] if self.teacher is not None else [])]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self._trackers["skipped_steps"] = keras.metrics.Sum(name="skipped_steps")

    @property
    def metrics(self):
        return tracked_metrics(self)

    @property
    def deployable_model(self):
        return self.supernet

    @property
    def searching(self) -> bool:
        """True once an architecture step has run (the warm-up is over)."""
        return int(self.search_step.numpy()) > self.warmup_steps

    def predicted_latency(self, architecture=None) -> float:
        """The latency model's prediction (ms) for ``architecture`` (default: the one derived now)."""
        return float(self.latency_model.predict(architecture or self.supernet.arch.derive()))

    def call(self, inputs, training=False):
        return self.supernet(inputs, training=training)

    # ---------------------------------------------------------------- the step

    def _check_compiled(self):
        if self.seg_loss_fn is None:
            raise RuntimeError("call controller.compile() before fit() or evaluate()")

    def _seg_loss(self, labels, logits):
        """Per-sample segmentation loss (B,)."""
        return per_sample_loss(self.seg_loss_fn, labels, logits)

    def _latency_term(self, probs):
        latency = self.latency_model.decoupled(probs)
        c_ops, c_path, c_widths = self.latency_coefficients
        return c_ops * latency["ops"] + c_path * latency["path"] + c_widths * latency["widths"]

    def _guarded_update(self, optimizer, objective, gradients, variables, state, keep_state=True, enabled=True):
        """Applies the aggregated, clipped gradients if ``enabled`` and the objective, their norm and
        the new values of ``state`` are finite, else puts ``state`` (variable, value before the forward pass) back;
        ``keep_state=False`` puts it back in any case. Returns whether all was finite."""
        gradients = [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, variables)]
        gradients = [g for g, _ in optimizer.aggregate_gradients(list(zip(gradients, variables)))]
        gradients, norm = tf.clip_by_global_norm(gradients, self.clip_norm)
        finite = [tf.math.is_finite(objective), tf.math.is_finite(norm)]
        # The forward pass's new batch-norm statistics too: a huge input is normalised away in the
        # loss but leaves inf in a moving variance.
        finite += [tf.reduce_all(tf.math.is_finite(variable)) for variable, _ in state if variable.dtype.is_floating]
        ok = _on_all_replicas(tf.reduce_all(tf.stack(finite)))
        _apply_if(tf.logical_and(ok, enabled), optimizer, gradients, variables)
        for variable, value in state:  # batch-norm statistics: per replica, no cond needed
            variable.assign(tf.where(ok, variable, value) if keep_state else value)
        return ok

    def _track(self, name, value, ok):
        """A scalar into a Mean tracker, unless its step was skipped (a NaN would poison the mean)."""
        self._trackers[name].update_state(tf.where(ok, value, 0.0), sample_weight=tf.cast(ok, tf.float32))

    def _network_state(self):
        return [(v, tf.identity(v)) for v in self.supernet.non_trainable_variables]

    def _weight_step(self, images, labels):
        teacher_logits = None if self.teacher is None else self.teacher(images, training=False)
        state = self._network_state()
        variables = self.supernet.weight_variables
        with tf.GradientTape() as tape:
            logits = self.supernet(images, training=True)
            seg_weight = 1.0 if self.teacher is None else self.distillation.default_student_loss_weight()
            seg = self._seg_loss(labels, logits if seg_weight else tf.stop_gradient(logits))
            per_sample = seg_weight * seg
            if self.teacher is not None:
                kd = self.distillation(teacher_logits, logits, labels)
                per_sample += self.distillation.weight * kd
            objective = tf.nn.compute_average_loss(per_sample)
            if self.supernet.losses:
                objective += tf.nn.scale_regularization_loss(tf.add_n(self.supernet.losses))
        ok = self._guarded_update(self.optimizer, objective, tape.gradient(objective, variables), variables, state)
        self._track("seg_loss", tf.reduce_mean(seg), ok)
        if self.teacher is not None:
            self._track("kd_loss", tf.reduce_mean(kd), ok)
        return ok

    def _arch_objective(self, images, labels):
        """The architecture step's objective on B and its gradients: ``(objective, gradients, seg, latency,
        state)`` (``state``: the network's batch-norm statistics before the forward pass)."""
        state = self._network_state()
        with tf.GradientTape() as tape:
            logits = self.supernet(images, training=True)
            seg = self._seg_loss(labels, logits)
            latency = self.latency_weight * self._latency_term(self.supernet.arch.probabilities())
            # Scaled by the replica count, so that summing over replicas counts it once.
            objective = tf.nn.compute_average_loss(seg) + tf.nn.scale_regularization_loss(latency)
        return objective, tape.gradient(objective, self.arch_variables), seg, latency, state

    def balanced_latency_weight(self, images, labels, balance: float = 1.0) -> float:
        """The w at which the latency term's gradient on the architecture parameters is ``balance``
        times as large (global norm) as the segmentation loss's on this batch; the network's
        batch-norm statistics are left as they were."""
        state = self._network_state()
        with tf.GradientTape(persistent=True) as tape:
            seg = tf.reduce_mean(self._seg_loss(labels, self.supernet(images, training=True)))
            latency = self._latency_term(self.supernet.arch.probabilities())
        norms = [float(tf.linalg.global_norm([g for g in tape.gradient(value, self.arch_variables) if g is not None]))
                 for value in (seg, latency)]
        del tape
        for variable, value in state:
            variable.assign(value)
        if not all(math.isfinite(n) for n in norms) or norms[1] == 0:
            raise ConfigError(f"cannot balance the latency weight: gradient norms {norms} (segmentation, latency)")
        return balance * norms[0] / norms[1]

    def _arch_step(self, images, labels, searching):
        objective, gradients, seg, latency, state = self._arch_objective(images, labels)
        # The architecture step leaves the network as it was, batch-norm statistics included.
        ok = self._guarded_update(self.arch_optimizer, objective, gradients, self.arch_variables, state,
                                  keep_state=False, enabled=searching)
        self._track("arch_loss", tf.reduce_mean(seg) + latency, tf.logical_and(ok, searching))
        return tf.logical_or(ok, tf.logical_not(searching))

    def train_step(self, data):
        self._check_compiled()
        (images_a, labels_a), (images_b, labels_b) = data
        weight_ok = self._weight_step(images_a, labels_a)
        searching = self.search_step >= self.warmup_steps
        if tf.__internal__.distribute.strategy_supports_no_merge_call():  # no arch step at all in the warm-up
            arch_ok = tf.cond(searching, lambda: self._arch_step(images_b, labels_b, searching), lambda: tf.constant(True))
        else:  # merge_calls cannot sit in a cond: the step runs and is not applied
            arch_ok = self._arch_step(images_b, labels_b, searching)
        return self._end_step(tf.logical_and(weight_ok, arch_ok))

    def _end_step(self, ok):
        """Counts the step (skipped unless ``ok``) and returns the logs."""
        skipped = tf.cast(tf.logical_not(ok), tf.int64)
        self.search_step.assign_add(1)
        self.skipped_total.assign_add(skipped)
        # Metrics sum over replicas, which all skip alike: each adds its share.
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        self._trackers["skipped_steps"].update_state(tf.cast(skipped, tf.float32) / replicas)
        self._trackers["latency"].update_state(self.latency_model.decoupled(self.supernet.arch.probabilities())["total"])
        self._trackers["w"].update_state(self.latency_weight)  # a metric, so that fit reports it once
        return {metric.name: metric.result() for metric in self._trackers.values()}

    def test_step(self, data):
        self._check_compiled()
        if isinstance(data[0], tuple):  # a paired batch: score half A
            data = data[0]
        images, labels = data[:2]
        logits = self.supernet(images, training=False)
        self._trackers["seg_loss"].update_state(self._seg_loss(labels, logits))
        self.compiled_metrics.update_state(labels, logits)
        return {metric.name: metric.result() for metric in [self._trackers["seg_loss"], *self.compiled_metrics.metrics]}

    # ---------------------------------------------------------------- resuming

    def _state_checkpoint(self):
        self._check_compiled()
        return tf.train.Checkpoint(network=self.supernet, arch=self.arch_variables, latency_weight=self.latency_weight,
                                   search_step=self.search_step, skipped_total=self.skipped_total, finished_epochs=self.finished_epochs,
                                   optimizer=self.optimizer, arch_optimizer=self.arch_optimizer)

    def save_state(self, directory, epoch: int | None = None) -> str:
        """Checkpoints the weights, arch variables, w, counters and both optimizers into ``directory``
        (the last two kept; a checkpoint counts only once complete). ``epoch``: epochs finished."""
        if epoch is not None:
            self.finished_epochs.assign(int(epoch))
        manager = tf.train.CheckpointManager(self._state_checkpoint(), str(directory), max_to_keep=2)
        return manager.save(checkpoint_number=int(self.finished_epochs.numpy()))

    def restore_state(self, directory) -> int:
        """Restores the latest ``save_state`` of ``directory``, if any (compile first). Returns the
        epochs finished: pass it as ``fit(initial_epoch=...)``."""
        checkpoint = self._state_checkpoint()
        latest = tf.train.latest_checkpoint(str(directory))
        if latest is not None:
            checkpoint.restore(latest).assert_existing_objects_matched()
        return int(self.finished_epochs.numpy())


# -------------------------------------------------------------------- callbacks


def _skip_share(architecture) -> float:
    """Share of the derived network's distinct cells whose op is ``skip``."""
    cells = {(layer, cell.scale): cell.op for branch in architecture.branches for layer, cell in enumerate(branch)}
    return sum(op == "skip" for op in cells.values()) / len(cells)


class LatencyBand(keras.callbacks.Callback):
    """FasterSeg's adaptive latency weight: after each epoch of search, w doubles when the derived
    network's predicted latency is above ``high`` ms and halves when below ``low``. Logs ``predicted_ms``."""

    def __init__(self, low: float, high: float, factor: float = 2.0):
        super().__init__()
        if not 0 <= low <= high or factor <= 1:
            raise ConfigError(f"the latency band needs 0 <= low <= high and factor > 1, got {low}, {high}, {factor}")
        self.low, self.high, self.factor = float(low), float(high), float(factor)

    def on_epoch_end(self, epoch, logs=None):
        controller = self.model
        if not controller.searching:
            return
        predicted = controller.predicted_latency()
        w = controller.latency_weight
        if predicted > self.high:
            w.assign(w * self.factor)
        elif predicted < self.low:
            w.assign(w / self.factor)
        if logs is not None:
            logs.update(predicted_ms=predicted, w=float(w.numpy()))


class ArchitectureLog(keras.callbacks.Callback):
    """Every epoch: saves the derived (argmax) architecture to ``path`` (``{epoch}`` in the name
    keeps one per epoch) and appends a line to the JSONL ``history``: epoch, predicted ms, w,
    share of skipped steps, share of ``skip`` cells, the stem/head widths and each branch's cells
    as [scale, op, width]."""

    def __init__(self, path, history):
        super().__init__()
        self.path, self.history = str(path), Path(history)
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        controller = self.model
        architecture = controller.supernet.arch.derive()
        architecture.save(self.path.format(epoch=epoch + 1))
        record = {
            "epoch": epoch + 1, "searching": controller.searching,
            "predicted_ms": controller.predicted_latency(architecture),
            "w": float(controller.latency_weight.numpy()),
            "skipped_share": float(logs.get("skipped_steps", 0.0)) / max(self._steps, 1),
            "skip_op_share": _skip_share(architecture),
            "stem_widths": list(architecture.stem_widths), "head_width": architecture.head_width,
            "branches": [[[cell.scale, cell.op, cell.width] for cell in branch] for branch in architecture.branches],
        }
        self.history.parent.mkdir(parents=True, exist_ok=True)
        with self.history.open("a") as f:
            f.write(json.dumps(record) + "\n")


class StopOnSkippedSteps(keras.callbacks.Callback):
    """Stops the search when the epoch's skipped (non-finite) steps exceed ``max_share`` of its steps:
    checked after every batch when fit knows the epoch's length, else at the epoch's end."""

    def __init__(self, max_share: float = 0.25):
        super().__init__()
        self.max_share = float(max_share)
        self._steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = 0

    def _check(self, logs, steps):
        skipped = float((logs or {}).get("skipped_steps", 0.0))
        if steps and skipped > self.max_share * steps:
            self.model.stop_training = True
            print(f"search stopped: {skipped:.0f} of {steps} steps of this epoch had a non-finite loss or gradient")

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if not self.model.stop_training:
            self._check(logs, self.params.get("steps"))

    def on_epoch_end(self, epoch, logs=None):
        if not self.model.stop_training:
            self._check(logs, self._steps)


class StopOnSkipTakeover(keras.callbacks.Callback):
    """DARTS+'s early stop: stops when more than ``max_share`` of the derived network's cells are
    ``skip`` after the search had brought the share to ``max_share`` or below. At the end of the
    warm-up every op ties and the argmax is ``skip`` (the first op), so a high share before the
    architecture has moved away from it is the start, not a take-over."""

    def __init__(self, max_share: float = 0.5):
        super().__init__()
        self.max_share = float(max_share)
        self.below_seen = False

    def on_epoch_end(self, epoch, logs=None):
        controller = self.model
        if not controller.searching:
            return
        share = _skip_share(controller.supernet.arch.derive())
        if share <= self.max_share:
            self.below_seen = True
        elif self.below_seen:
            controller.stop_training = True
            print(f"search stopped: skip ops took over ({share:.0%} of the derived cells)")


class SearchCheckpoint(keras.callbacks.Callback):
    """``controller.save_state(directory, epoch)`` after every epoch; resume with
    ``fit(initial_epoch=controller.restore_state(directory))``."""

    def __init__(self, directory):
        super().__init__()
        self.directory = str(directory)

    def on_epoch_end(self, epoch, logs=None):
        self.model.save_state(self.directory, epoch + 1)


class BalanceLatencyWeight(keras.callbacks.Callback):
    """Sets w at the first architecture step so that the latency term pulls on the architecture as
    hard as the segmentation loss (times ``balance``), averaged over ``num_batches`` batches of the
    architecture half. A fixed starting w has no scale that carries over between spaces, tables and
    datasets: FasterSeg's 0.01 on CamVid at 360x480 had to double for 16 epochs (to 655) before the
    latency term moved anything. ``LatencyBand`` adapts w from there. A resumed search keeps its w."""

    def __init__(self, batches, balance: float = 1.0, num_batches: int = 4):
        super().__init__()
        if balance <= 0 or num_batches < 1:
            raise ConfigError(f"latency balance must be > 0 and batches >= 1, got {balance}, {num_batches}")
        self.batches, self.balance, self.num_batches = batches, float(balance), int(num_batches)
        self.calibrated = None

    def on_train_batch_begin(self, batch, logs=None):
        controller = self.model
        if self.calibrated is not None or int(controller.search_step.numpy()) != controller.warmup_steps:
            return
        weights = [controller.balanced_latency_weight(images, labels, self.balance)
                   for images, labels in itertools.islice(iter(self.batches), self.num_batches)]
        self.calibrated = float(np.mean(weights))
        controller.latency_weight.assign(self.calibrated)
        print(f"latency weight balanced at the first architecture step: w = {self.calibrated:.4g} "
              f"(spread {min(weights):.3g}-{max(weights):.3g} over {len(weights)} batches)")


class DerivedWidthBatchNorm(PreciseBatchNorm):
    """Precise BN for the supernet's validation: its BN statistics re-estimated on training batches
    with the argmax widths that validation scores. The moving averages of training mix every
    sampled width (a channel's input is zero in some steps and not in others), and a supernet
    validated with them scored a few % mIoU where its training batches were far better."""

    def _reestimate(self):
        self.network.sample_widths = False
        try:
            super()._reestimate()
        finally:
            self.network.sample_widths = True


def search_callbacks(out_dir, latency_band=None, max_skipped_share: float = 0.25, max_skip_op_share: float = 0.5) -> list:
    """The search's callbacks, in order: w adaptation (``latency_band`` = (low, high) ms, or none),
    the architecture log (``arch_epoch{N}.json``, ``history.jsonl``), the two early stops and the
    state checkpoint (``state/``), all under ``out_dir``."""
    out = Path(out_dir)
    callbacks = [] if latency_band is None else [LatencyBand(*latency_band)]
    return callbacks + [ArchitectureLog(out / "arch_epoch{epoch:03d}.json", out / "history.jsonl"),
                        StopOnSkippedSteps(max_skipped_share), StopOnSkipTakeover(max_skip_op_share),
                        SearchCheckpoint(out / "state")]


__all__ = ["LATENCY_COEFFICIENTS", "ArchitectureLog", "BalanceLatencyWeight", "DerivedWidthBatchNorm", "LatencyBand", "SearchCheckpoint", "SearchController",
           "StopOnSkipTakeover", "StopOnSkippedSteps", "paired_dataset", "search_callbacks"]
