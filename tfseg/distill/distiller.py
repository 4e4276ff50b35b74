"""The Distiller: a Keras model whose ``fit`` trains a student from a frozen teacher.

``Distiller(teacher, student, losses)`` is compiled and fitted like any Keras model (callbacks,
progress bar, ``validation_data``, BackupAndRestore, distribution strategies). Each step runs
the teacher in inference mode, the student in training mode, and minimises::

    total = student_loss_weight * student_loss + sum_i weight_i * distillation_loss_i

over the student's variables and the adapters' (the layer each loss asks for with its ``adapter``
hook: a 1x1 convolution that maps a student feature map to the teacher's channel count for losses
that compare channels). ``distiller.student`` is the model to save and export; adapters exist only
during training.
"""

from __future__ import annotations

from typing import Sequence

from tfseg import _tfmot
from tfseg._keras import keras, tf
from tfseg.distill import taps
from tfseg.distill.losses import DistillationLoss, PixelKD
from tfseg.errors import ConfigError
from tfseg.losses import SegmentationCrossEntropy
from tfseg.train import per_sample_loss, segmentation_metrics, tracked_metrics


class Distiller(keras.Model):
    """Trains ``student`` to follow ``teacher`` through ``compile()`` + ``fit()``.

    Args:
      teacher: the trained (larger) model; frozen (``trainable = False``) and always run with
        ``training=False``.
      student: the model to train; segmentation models output (B, H, W, C) logits, classifiers
        (B, C). Teacher and student must output the same number of classes.
      distillation_losses: ``tfseg.distill.losses`` objects (pixel KD, pair-wise, CSC, ACE, CWD),
        each reading one teacher and one student endpoint (``logits``, ``features``, ``decoder``,
        ...). Default: ``[PixelKD()]`` (T=4, alpha=0.5). An empty list trains the student alone
        (the same loop without a teacher: the fair baseline for timing and ablations).
      student_loss_weight: weight of the compiled ground-truth loss. Default: the smallest weight
        the losses ask for (``DistillationLoss.default_student_loss_weight``): 1, or 0 when a loss
        already contains the ground-truth term (pixel KD's ``(1 - alpha) CE``, ACE); 1 without losses.
      allow_larger_student: the student having more parameters than the teacher usually means
        the two were swapped, which raises unless this is True.
      name: model name.

    Logs ``student_loss``, each distillation loss by its name (unweighted), ``total_loss`` and
    the compiled metrics of the student. Validation computes the student's loss and metrics only
    (no teacher forward pass), logged as ``val_student_loss``, ``val_miou``, ...

    Raises:
      ValueError: class counts differ, an endpoint is missing, duplicate loss names, teacher and
        student look swapped, incompatible fixed input sizes, or a loss's ``validate`` refuses the
        pair (e.g. a loss that needs spatial maps with classifiers).
      TypeError: a loss is not a ``DistillationLoss``.

    Example:
      >>> distiller = Distiller(teacher, student, [PixelKD(temperature=4.0, alpha=0.5),
      ...                                          PairwiseKD(pool_size=2)])
      >>> distiller.compile(keras.optimizers.Adam(1e-3))    # CE + mIoU/pixel accuracy by default
      >>> distiller.fit(train_data, validation_data=val_data, epochs=30)
      >>> distiller.student.save("student.keras")
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses: Sequence[DistillationLoss] | None = None,
        *,
        student_loss_weight: float | None = None,
        allow_larger_student: bool = False,
        name: str = "distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        _check_models(teacher, student, allow_larger_student)
        losses = [PixelKD()] if distillation_losses is None else list(distillation_losses)
        _check_losses(losses, teacher, student)
        teacher.trainable = False
        self.teacher = teacher
        self.student = student
        self.distillation_losses = losses
        if student_loss_weight is None:
            student_loss_weight = min((loss.default_student_loss_weight() for loss in losses), default=1.0)
        self.student_loss_weight = float(student_loss_weight)
        self._teacher_taps = (
            taps.feature_extractor(teacher, {loss.teacher_endpoint for loss in losses}, "teacher") if losses else None
        )
        self._student_taps = taps.feature_extractor(
            student, {taps.OUTPUT} | {loss.student_endpoint for loss in losses}, "student"
        )
        self.adapters = [self._adapter_for(i, loss) for i, loss in enumerate(losses)]
        self.student_loss_fn = None
        self._trackers = {}
        # Every variable exists now (teacher, student, adapters), so the Distiller is built: fit's
        # BackupAndRestore then builds the optimizer before restoring a checkpoint into it.
        self.built = True

    # ---------------------------------------------------------------- construction helpers

    def _adapter_for(self, index: int, loss: DistillationLoss):
        teacher_channels = self._teacher_taps.output[loss.teacher_endpoint].shape[-1]
        student_shape = self._student_taps.output[loss.student_endpoint].shape
        adapter = loss.adapter(teacher_channels, student_shape[-1], name=f"adapter_{index}_{loss.name}")
        if adapter is not None:
            adapter.build(student_shape)
        return adapter

    @property
    def deployable_model(self):
        """What checkpoints save and evaluation scores: the student (adapters are training-only)."""
        return self.student

    def compile(self, optimizer="adam", loss=None, metrics=None, **kwargs):
        """Configures training.

        Args:
          optimizer: a Keras optimizer (or name).
          loss: the student's ground-truth loss; default ``tfseg.losses.SegmentationCrossEntropy``
            for segmentation students, sparse categorical cross entropy (from logits) for
            classifiers. Any Keras loss works; it is called per sample (``Loss.call``), so
            distribution strategies average it correctly.
          metrics: metrics of the student's output; default mIoU and pixel accuracy
            (segmentation) or accuracy (classification).
          **kwargs: passed to ``keras.Model.compile`` (e.g. ``run_eagerly``, ``jit_compile``).
        """
        num_classes = self.student.output_shape[-1]
        segmentation = len(self.student.output_shape) == 4
        if loss is None:
            if segmentation:
                loss = SegmentationCrossEntropy(num_classes=num_classes)
            else:
                loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if metrics is None:
            if segmentation:
                metrics = segmentation_metrics(num_classes)
            else:
                metrics = [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]
        # The Keras loss container stays empty: train_step combines the losses itself.
        super().compile(optimizer=optimizer, metrics=metrics, **kwargs)
        self.student_loss_fn = loss
        names = ["student_loss", *(loss.name for loss in self.distillation_losses), "total_loss"]
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return tracked_metrics(self)

    # ---------------------------------------------------------------- the step

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def _per_sample_student_loss(self, labels, logits):
        return per_sample_loss(self.student_loss_fn, labels, logits)

    def _distillation_terms(self, teacher_maps, student_maps, labels) -> dict:
        terms = {}
        for loss, adapter in zip(self.distillation_losses, self.adapters):
            student_map = student_maps[loss.student_endpoint]
            teacher_map = tf.stop_gradient(teacher_maps[loss.teacher_endpoint])
            if adapter is not None:
                student_map = adapter(student_map)
            student_map = taps.match_spatial(student_map, teacher_map)
            terms[loss.name] = loss(teacher_map, student_map, labels)
        return terms

    def _trainable_variables(self):
        variables = list(self.student.trainable_variables)
        for adapter in self.adapters:
            if adapter is not None:
                variables += adapter.trainable_variables
        return variables

    def _check_compiled(self):
        if self.student_loss_fn is None:
            raise RuntimeError("call distiller.compile(optimizer, ...) before fit() or evaluate()")

    def _teacher_maps(self, x):
        return self._teacher_taps(x, training=False) if self._teacher_taps is not None else {}

    def _objectives(self, x, y, teacher_maps):
        """Student logits, per-sample student loss and distillation terms of one batch (student in training mode)."""
        student_maps = self._student_taps(x, training=True)
        logits = student_maps[taps.OUTPUT]
        # A zero-weighted student loss is only logged: stopping its gradient saves a backward pass.
        student_loss = self._per_sample_student_loss(y, logits if self.student_loss_weight else tf.stop_gradient(logits))
        return logits, student_loss, self._distillation_terms(teacher_maps, student_maps, y)

    def train_step(self, data):
        self._check_compiled()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher_maps = self._teacher_maps(x)  # outside the tape: nothing of the teacher is differentiated
        with tf.GradientTape() as tape:
            logits, student_loss, terms = self._objectives(x, y, teacher_maps)
            per_sample = self.student_loss_weight * student_loss
            for loss in self.distillation_losses:
                per_sample += loss.weight * terms[loss.name]
            # Divides by the global batch size, so summing gradients over replicas averages them.
            objective = tf.nn.compute_average_loss(per_sample, sample_weight=sample_weight)
            if self.student.losses:
                objective += tf.nn.scale_regularization_loss(tf.add_n(self.student.losses))
        variables = self._trainable_variables()
        gradients = tape.gradient(objective, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))

        self._trackers["student_loss"].update_state(student_loss)
        for name, value in terms.items():
            self._trackers[name].update_state(value)
        self._trackers["total_loss"].update_state(per_sample)
        self.compiled_metrics.update_state(y, logits, sample_weight)
        return {metric.name: metric.result() for metric in self.metrics}

    def gradient_norms(self, x, y) -> dict:
        """How hard each weighted term of the objective pulls on each trainable variable, on one batch.

        A diagnostic for distillation that hurts: a term whose gradient dwarfs the student loss's
        in some layers is rewriting those layers. Runs the training-mode forward pass of
        ``train_step`` without applying anything; the student's batch-norm statistics are put back.

        Returns:
          ``{"student_loss" or loss name: {variable name: L2 norm of its gradient}}``, each term
          weighted as in training (``student_loss_weight``, ``loss.weight``) and averaged over
          the batch; 0.0 where a term does not reach a variable.
        """
        self._check_compiled()
        state = [v.numpy() for v in self.student.non_trainable_variables]
        teacher_maps = self._teacher_maps(x)
        with tf.GradientTape(persistent=True) as tape:
            _, student_loss, terms = self._objectives(x, y, teacher_maps)
            parts = {"student_loss": self.student_loss_weight * tf.reduce_mean(student_loss)}
            for loss in self.distillation_losses:
                parts[loss.name] = loss.weight * tf.reduce_mean(terms[loss.name])
        for variable, value in zip(self.student.non_trainable_variables, state):
            variable.assign(value)
        variables = self._trainable_variables()
        norms = {}
        for name, value in parts.items():
            gradients = tape.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            norms[name] = {v.name: float(tf.norm(g)) for v, g in zip(variables, gradients)}
        del tape
        return norms

    def test_step(self, data):
        self._check_compiled()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        logits = self.student(x, training=False)
        self._trackers["student_loss"].update_state(self._per_sample_student_loss(y, logits))
        self.compiled_metrics.update_state(y, logits, sample_weight)
        evaluated = [self._trackers["student_loss"], *self.compiled_metrics.metrics]
        return {metric.name: metric.result() for metric in evaluated}

    def fit(self, *args, callbacks=None, **kwargs):
        """``keras.Model.fit``; with a pruning-wrapped student it also drives the student's pruning step."""
        callbacks = list(callbacks or [])
        if _pruned_layers(self.student):
            callbacks.append(_student_pruning_step())
        return super().fit(*args, callbacks=callbacks, **kwargs)


# -------------------------------------------------------------------- validation


def _static_size(model):
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape[1:])


def _check_models(teacher, student, allow_larger_student: bool):
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, keras.Model):
            raise TypeError(f"the {role} must be a Keras model (tf_keras), got {type(model).__name__}")
    if teacher is student:
        raise ConfigError("teacher and student are the same model object; pass a separate student")
    teacher_classes, student_classes = teacher.output_shape[-1], student.output_shape[-1]
    if teacher_classes != student_classes:
        raise ConfigError(
            f"the teacher {teacher.name!r} outputs {teacher_classes} classes but the student "
            f"{student.name!r} outputs {student_classes}; build both for the same dataset"
        )
    if len(teacher.output_shape) != len(student.output_shape):
        raise ConfigError(
            f"teacher output {teacher.output_shape} and student output {student.output_shape} differ in rank "
            "(segmentation maps vs. class vectors?)"
        )
    t_size, s_size = _static_size(teacher), _static_size(student)
    for axis, (t, s) in enumerate(zip(t_size, s_size)):
        if t is not None and s is not None and t != s:
            raise ConfigError(
                f"the teacher takes inputs of shape {t_size} and the student {s_size}: both see the same "
                "images, so fixed sizes must agree (rebuild one with tfseg.models.rebuild)"
            )
    if not allow_larger_student and student.count_params() > teacher.count_params():
        raise ConfigError(
            f"the student {student.name!r} ({student.count_params():,} parameters) is larger than the teacher "
            f"{teacher.name!r} ({teacher.count_params():,}): teacher and student swapped? Pass "
            "allow_larger_student=True if this is intended"
        )


def _check_losses(losses, teacher, student):
    names = set()
    for loss in losses:
        if not isinstance(loss, DistillationLoss):
            raise TypeError(
                f"distillation losses must be tfseg.distill.losses objects (PixelKD, PairwiseKD, CSCLoss, "
                f"AdaptiveCrossEntropy, ChannelWiseKD), got {type(loss).__name__}"
            )
        if loss.name in names:
            raise ConfigError(f"two distillation losses are named {loss.name!r}; give them distinct name= values")
        names.add(loss.name)
        # Fails here, with the model and what it has, rather than at the first step.
        taps.feature_extractor(teacher, [loss.teacher_endpoint], "teacher")
        taps.feature_extractor(student, [loss.student_endpoint], "student")
        loss.validate(teacher, student)


# -------------------------------------------------------------------- pruning-wrapped students


def _pruned_layers(model) -> list:
    return [layer for layer in model.layers if _tfmot.is_pruning_wrapper(layer)]


def _student_pruning_step():
    """TF-MOT's UpdatePruningStep aimed at the student: it only looks at the model that fit() runs."""
    tfmot = _tfmot.load()

    class StudentPruningStep(tfmot.sparsity.keras.UpdatePruningStep):
        def set_model(self, model):
            super().set_model(getattr(model, "deployable_model", model))

    return StudentPruningStep()
