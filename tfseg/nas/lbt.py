"""Learning by teaching (LBT; Sheth, Jiang and Xie, 2021) on top of the FasterSeg-style search.

The architecture also learns from how well a fixed **student** network learns from the searched
network's soft pseudo-labels of unlabeled images. ``LBTController`` is a ``SearchController`` fitted
on ``lbt_dataset(a, b, u)``: elements ``((images_a, labels_a), (images_b, labels_b), images_u)``,
A for the supernet's weights, B for the architecture and as the student's validation data, U
unlabeled training images held out of A and B (never validation or test images). Each step:

1. the parent's weight step on A;
2. **student step** on U: soft pseudo-labels ``p = softmax(supernet(U) / T)`` (stop-gradient; the
   student never sees hard labels of U), ``L_pseudo(S) = mean over pixels of CE(p, softmax(student(U)))``,
   the student optimizer (default SGD 0.01, momentum 0.9), clipped, skipped if not finite;
3. after the warm-up (during which the student trains but does not teach), the parent's
   architecture step on B plus ``teaching_weight`` times the **teaching gradient** below, added
   before the clipping by global norm. Anything not finite (the student step included) skips the
   whole architecture update, counted in ``skipped_steps``.

The teaching gradient (first order in the unroll, exact Hessian-vector product)
-----------------------------------------------------------------------------
Model the student step as one SGD step of rate xi (``student_lr_for_unroll``)::

    g(A)  = grad_S L_pseudo(S, p(A)) = -mean_pix sum_c p_c(A) grad_S log q_c(S)
    S'(A) = S - xi g(A)

With ``v = grad_S L_val(S')`` (the student's loss on B after its actual step), the chain rule gives::

    d L_val(S'(A)) / dA = (dS'/dA)^T v = -xi grad_A <g(A), v>
                        = -xi grad_A ( -mean_pix sum_c p_c(A) <grad_S log q_c(S), v> )
                        = +xi grad_A mean_pix sum_c p_c(A) D_c,

where ``D = d/dt log_softmax(student(U; S + t v))`` at t = 0, the directional derivative of the
student's log-probabilities along v at the weights S *before* its step. D does not depend on A: it
is computed exactly, with ``tf.autodiff.ForwardAccumulator`` (one JVP), and the teaching gradient
is the reverse-mode gradient of the surrogate ``xi * mean_pix sum_c p_c(A) stop_gradient(D_c)``
with respect to the arch variables. Intuition for the sign: ``<S' - S, v> = xi mean_pix sum_c p_c D_c``,
so pseudo-labels that put mass on classes whose log-probability rises along v (D_c > 0) move the
student up its validation loss: the gradient is positive and the architecture, descending it, moves
p away from them. ``tests/test_nas_lbt.py`` checks sign and size against a finite difference of
L_val after an actual student step.

What the public LBT code does and this does not: no finite-difference Hessian (and its unguarded
``0.01 / ||v||`` step), no mix of soft and hard pseudo-labels, no test images, every update clipped
and guarded against non-finite values.

Modes: the supernet makes its pseudo-labels in training mode, as in the parent's architecture step
(sampled widths, batch statistics; its batch-norm statistics are put back afterwards, U never
changes them); the student always runs in training mode in the search step (batch statistics, as
when it trains); only its step on U keeps the batch-norm statistics it updates.

Forward mode through bilinear resizing: TensorFlow marks ``ResizeBilinearGrad`` not differentiable,
so ``ForwardAccumulator`` (which transposes the backward function) silently gives a zero JVP for
anything before a ``Resizing`` / bilinear ``UpSampling2D`` layer (tensorflow/tensorflow#22208,
#38643). Importing this module registers the exact forward rules of ``ResizeBilinear`` and
``ResizeNearestNeighbor`` (both linear in the image: the JVP is the resized tangent), and
``LBTController.compile`` checks the student's JVP against a finite difference (``check_forward_mode``),
so that an op without a forward rule cannot silently switch the teaching off.

No ``tf.distribute`` strategy: the JVP is taken at the student's weights before its step by
assigning them back for a moment, which a replica context cannot do with mirrored variables, and
the student and teaching updates sit in a ``tf.cond``, where a ``merge_call`` cannot.
"""

from __future__ import annotations

import importlib

import numpy as np

from tfseg._keras import keras, tf
from tfseg.errors import ConfigError
from tfseg.nas.controller import SearchController

# ------------------------------------------------------------------ forward mode through resizing


def _resize_jvp(resize):
    def jvp(attr_tuple, inputs, outputs, tangents):
        attrs = dict(zip(attr_tuple[::2], attr_tuple[1::2]))
        if tangents[0] is None:
            return [None]
        tangent = resize(images=tangents[0], size=inputs[1], align_corners=attrs["align_corners"],
                         half_pixel_centers=attrs["half_pixel_centers"])
        return [tf.cast(tangent, outputs[0].dtype)]
    return jvp


def register_resize_forward_rules():
    """Registers the forward-mode rules of ``ResizeBilinear`` and ``ResizeNearestNeighbor`` with
    ``tf.autodiff.ForwardAccumulator`` (idempotent; see the module docstring). Returns whether the
    (private) registry was found."""
    forwardprop = importlib.import_module(tf.autodiff.ForwardAccumulator.__module__)
    rules = getattr(forwardprop, "_SPECIAL_CASES", None)
    if not isinstance(rules, dict):
        return False
    rules.setdefault("ResizeBilinear", _resize_jvp(tf.raw_ops.ResizeBilinear))
    rules.setdefault("ResizeNearestNeighbor", _resize_jvp(tf.raw_ops.ResizeNearestNeighbor))
    return True


register_resize_forward_rules()


# ------------------------------------------------------------------ pieces


def lbt_dataset(ds_a, ds_b, ds_u) -> tf.data.Dataset:
    """``((images_a, labels_a), (images_b, labels_b), images_u)`` batches from three batched datasets:
    A and B of (images, labels), U of images or (images, labels, ...) whose labels are dropped; as
    long as the shortest. U must be training images held out of A and B, never val or test images."""
    if isinstance(ds_u.element_spec, tuple):
        ds_u = ds_u.map(lambda images, *_: images)
    return tf.data.Dataset.zip((ds_a, ds_b, ds_u))


def soft_pseudo_labels(logits, temperature: float = 1.0):
    """softmax(logits / T) over the class axis, float32."""
    return tf.nn.softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)


def pseudo_label_loss(pseudo, logits):
    """Per-sample (B,) mean over pixels of the cross-entropy between the soft labels ``pseudo`` and
    softmax(``logits``)."""
    cross_entropy = tf.nn.softmax_cross_entropy_with_logits(labels=pseudo, logits=tf.cast(logits, tf.float32))
    return tf.reduce_mean(cross_entropy, axis=list(range(1, cross_entropy.shape.rank)))


def log_prob_jvp(model, images, tangents, training: bool = True):
    """D = d/dt log_softmax(model(images; W + t * tangents)) at t = 0 (one forward-mode pass over
    ``model.trainable_variables``)."""
    with tf.autodiff.ForwardAccumulator(model.trainable_variables, tangents) as accumulator:
        log_probs = tf.nn.log_softmax(tf.cast(model(images, training=training), tf.float32), axis=-1)
    return accumulator.jvp(log_probs, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _restore(state):
    for variable, value in state:
        variable.assign(value)


def check_forward_mode(model, images, min_cosine: float = 0.9, seed: int = 0) -> float:
    """Compares ``log_prob_jvp`` along a random direction with a central finite difference (training
    mode, the model's state put back); raises ConfigError when they disagree (cosine below
    ``min_cosine``), e.g. because an op of the model has no forward-mode rule and its JVP is
    silently zero. Returns the cosine."""
    variables = model.trainable_variables
    rng = np.random.default_rng(seed)
    # Each variable's tangent about its own size (a unit one if it is all zeros), the step 1e-3 of it.
    tangents = [tf.constant(rng.standard_normal(v.shape) * max(float(tf.norm(v)), 1.0) / np.sqrt(max(v.shape.num_elements(), 1)),
                            v.dtype) for v in variables]
    eps = 1e-3
    weights = [(v, tf.identity(v)) for v in variables]
    state = [(v, tf.identity(v)) for v in model.non_trainable_variables]
    try:
        jvp = log_prob_jvp(model, images, tangents)
        outputs = []
        for sign in (1.0, -1.0):
            for (variable, value), tangent in zip(weights, tangents):
                variable.assign(value + sign * eps * tangent)
            outputs.append(tf.nn.log_softmax(tf.cast(model(images, training=True), tf.float32), axis=-1))
    finally:
        _restore(weights + state)
    difference = (outputs[0] - outputs[1]) / (2 * eps)
    cosine = float(tf.reduce_sum(jvp * difference) / (tf.norm(jvp) * tf.norm(difference) + 1e-30))
    if not cosine >= min_cosine:
        raise ConfigError(f"the student's forward-mode derivative disagrees with a finite difference (cosine {cosine:.3f}): "
                          "one of its ops probably has no forward-mode rule, so the teaching gradient would be wrong")
    return cosine


def _add(gradient, other, variable):
    gradient = tf.zeros_like(variable) if gradient is None else gradient
    return gradient if other is None else gradient + other


# ------------------------------------------------------------------ the controller


class LBTController(SearchController):
    """``SearchController`` whose architecture also learns by teaching a fixed student (see the
    module docstring). Fit it on ``lbt_dataset(a, b, u)``.

    Args:
      supernet, latency_model: as ``SearchController``.
      student: a tf_keras segmentation model giving logits (B, H, W, C) at the supernet's input size
        for its classes; trained by this controller on the pseudo-labels.
      student_optimizer: default SGD(0.01, momentum 0.9).
      teaching_weight: gamma, the teaching gradient's weight in the architecture gradient.
      pseudo_temperature: T of the soft pseudo-labels softmax(supernet(U) / T).
      student_lr_for_unroll: xi of the modelled student step; default the student optimizer's
        learning rate (its schedule's value at the step, if it has one).
      **kwargs: the parent's (``latency_weight``, ``warmup_steps``, ``clip_norm`` (shared by all
        three updates), ``teacher``, ...).

    Logs besides the parent's: ``student_loss`` (pseudo-label CE on U), ``student_val_loss`` (the
    student's segmentation loss on B, after its step), ``teaching_norm`` (global norm of gamma times
    the teaching gradient, before clipping; 0 during the warm-up). ``skipped_steps`` counts steps
    with any update skipped (weights, student or architecture). ``save_state`` / ``restore_state``
    include the student and its optimizer.
    """

    def __init__(self, supernet, latency_model, student, *, student_optimizer=None, teaching_weight: float = 1.0,
                 pseudo_temperature: float = 1.0, student_lr_for_unroll: float | None = None, **kwargs):
        if tf.distribute.has_strategy():
            raise ConfigError("the LBT search runs without a tf.distribute strategy (see tfseg.nas.lbt)")
        super().__init__(supernet, latency_model, **kwargs)
        expected = (*supernet.input_size, supernet.num_classes)
        if tuple(student.output_shape[1:]) != expected:
            raise ConfigError(f"the student outputs {tuple(student.output_shape[1:])} but the supernet {expected}: "
                              "build the student for the proxy input size and the same classes")
        if teaching_weight < 0 or pseudo_temperature <= 0 or (student_lr_for_unroll is not None and student_lr_for_unroll <= 0):
            raise ConfigError("teaching_weight must be >= 0, pseudo_temperature and student_lr_for_unroll > 0; got "
                              f"{teaching_weight}, {pseudo_temperature}, {student_lr_for_unroll}")
        self.student = student
        self.student_optimizer = student_optimizer or keras.optimizers.SGD(0.01, momentum=0.9, jit_compile=False)
        self.teaching_weight = float(teaching_weight)
        self.pseudo_temperature = float(pseudo_temperature)
        self.student_lr_for_unroll = None if student_lr_for_unroll is None else float(student_lr_for_unroll)

    def compile(self, optimizer=None, arch_optimizer=None, loss=None, metrics=None, check_student: bool = True, **kwargs):
        """The parent's ``compile``; also builds the student optimizer, adds the LBT metrics and
        (``check_student``) runs ``check_forward_mode`` on the student with two random images."""
        super().compile(optimizer=optimizer, arch_optimizer=arch_optimizer, loss=loss, metrics=metrics, **kwargs)
        self.student_optimizer.build(self.student.trainable_variables)
        for name in ("student_loss", "student_val_loss", "teaching_norm"):
            self._trackers[name] = keras.metrics.Mean(name=name)
        if check_student:
            images = tf.random.stateless_uniform((2, *self.supernet.input_size, 3), seed=(0, 0), maxval=255.0)
            check_forward_mode(self.student, images)

    # ---------------------------------------------------------------- the pieces of a step

    def _student_state(self):
        return [(v, tf.identity(v)) for v in self.student.non_trainable_variables]

    def _unroll_lr(self):
        """xi: ``student_lr_for_unroll``, else the rate of the student step just taken (a Keras
        optimizer's ``learning_rate`` holds its schedule's value at its last update)."""
        if self.student_lr_for_unroll is not None:
            return tf.constant(self.student_lr_for_unroll)
        rate = self.student_optimizer.learning_rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = rate(self.student_optimizer.iterations)
        return tf.cast(rate, tf.float32)

    def _pseudo_labels(self, images):
        """Soft pseudo-labels of U (training mode; the supernet's batch-norm statistics put back)."""
        state = self._network_state()
        logits = self.supernet(images, training=True)
        _restore(state)
        return soft_pseudo_labels(logits, self.pseudo_temperature)

    def _student_step(self, pseudo, images):
        """One clipped, guarded student update on the (stop-gradient) pseudo-labels. Returns whether it applied."""
        state = self._student_state()
        variables = self.student.trainable_variables
        with tf.GradientTape() as tape:
            loss = pseudo_label_loss(tf.stop_gradient(pseudo), self.student(images, training=True))
            objective = tf.nn.compute_average_loss(loss)
            if self.student.losses:
                objective += tf.nn.scale_regularization_loss(tf.add_n(self.student.losses))
        # Batch statistics can overflow while the normalised loss stays finite: check them too.
        finite_state = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v, _ in state]) if state else True
        checked = tf.where(finite_state, objective, tf.constant(np.nan, tf.float32))
        ok = self._guarded_update(self.student_optimizer, checked, tape.gradient(objective, variables), variables, state)
        self._track("student_loss", tf.reduce_mean(loss), ok)
        return ok

    def _student_validation(self, images, labels):
        """The student's loss on B (training mode, its state put back) and its gradient v."""
        state = self._student_state()
        variables = self.student.trainable_variables
        with tf.GradientTape() as tape:
            loss = tf.nn.compute_average_loss(self._seg_loss(labels, self.student(images, training=True)))
        gradients = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        _restore(state)
        self._track("student_val_loss", loss, tf.math.is_finite(loss))
        return loss, gradients

    def _jvp_at(self, weights, images, tangents):
        """``log_prob_jvp`` of the student at ``weights`` (its weights and state put back after)."""
        variables = self.student.trainable_variables
        current = [(v, tf.identity(v)) for v in variables]
        state = self._student_state()
        for variable, value in zip(variables, weights):
            variable.assign(value)
        jvp = log_prob_jvp(self.student, images, tangents)
        _restore(current + state)
        return jvp

    def teach(self, images_u, images_b, labels_b):
        """The student step on U and the teaching gradient (see the module docstring).

        Returns ``(student_ok, surrogate, gradients)``: whether the student step applied, the
        surrogate ``xi * mean_pix sum_c p_c(A) D_c`` and its gradient, d L_val(S') / dA, one per
        arch variable (teaching_weight not applied)."""
        variables = self.arch_variables
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(variables)
            pseudo = self._pseudo_labels(images_u)
            with tape.stop_recording():
                before = [tf.identity(v) for v in self.student.trainable_variables]
                student_ok = self._student_step(pseudo, images_u)
                xi = self._unroll_lr()
                _, v = self._student_validation(images_b, labels_b)
                jvp = tf.stop_gradient(self._jvp_at(before, images_u, v))
            per_sample = tf.reduce_mean(tf.reduce_sum(pseudo * jvp, axis=-1), axis=list(range(1, jvp.shape.rank - 1)))
            surrogate = xi * tf.nn.compute_average_loss(per_sample)
        return student_ok, surrogate, tape.gradient(surrogate, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def _teaching_arch_step(self, images, labels, images_u):
        """The parent's architecture step on B plus gamma times the teaching gradient, after the
        student step on U. Returns (student step applied, architecture update applied)."""
        objective, gradients, seg, latency, state = self._arch_objective(images, labels)
        variables = self.arch_variables
        student_ok, surrogate, teaching = self.teach(images_u, images, labels)
        teaching = [self.teaching_weight * t for t in teaching]
        gradients = [_add(g, t, v) for g, t, v in zip(gradients, teaching, variables)]
        # A skipped (non-finite) student step skips the architecture update too.
        checked = tf.where(student_ok, objective + self.teaching_weight * surrogate, tf.constant(np.nan, tf.float32))
        ok = self._guarded_update(self.arch_optimizer, checked, gradients, variables, state, keep_state=False)
        self._track("arch_loss", tf.reduce_mean(seg) + latency, ok)
        self._track("teaching_norm", tf.linalg.global_norm(teaching), ok)
        return student_ok, ok

    def _warmup_student_step(self, images_u, images_b, labels_b):
        ok = self._student_step(self._pseudo_labels(images_u), images_u)
        self._student_validation(images_b, labels_b)  # for student_val_loss; the unused gradient is pruned
        return ok, tf.constant(True)

    def train_step(self, data):
        self._check_compiled()
        (images_a, labels_a), (images_b, labels_b), images_u = data
        weight_ok = self._weight_step(images_a, labels_a)
        student_ok, arch_ok = tf.cond(self.search_step >= self.warmup_steps,
                                      lambda: self._teaching_arch_step(images_b, labels_b, images_u),
                                      lambda: self._warmup_student_step(images_u, images_b, labels_b))
        return self._end_step(weight_ok & student_ok & arch_ok)

    # ---------------------------------------------------------------- resuming

    def _state_checkpoint(self):
        checkpoint = super()._state_checkpoint()
        checkpoint.student = self.student
        checkpoint.student_optimizer = self.student_optimizer
        return checkpoint


__all__ = ["LBTController", "check_forward_mode", "lbt_dataset", "log_prob_jvp", "pseudo_label_loss",
           "register_resize_forward_rules", "soft_pseudo_labels"]
