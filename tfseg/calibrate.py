"""Logit adjustment: take back the prior shift that class-weighted training leaves in a model.

Cross entropy with class weights ``w`` is minimised by logits ``log p(c|x) + log w_c`` (up to a
constant), so a model trained with median-frequency weights predicts the rare classes far too
often: high recall, low IoU (the CamVid teacher trained with full weights had 86 % pedestrian
recall but 34 % IoU). Adding ``-s * log w_c`` to the logits moves the decision back towards the
unweighted posterior (``s = 1``) or part of the way; ``s`` is chosen on the validation split by
mIoU (logit adjustment, Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

The offset is folded into the bias of the classifier convolution, so the adjusted model has the
same layers and cost as before and exports like any other model.

    strength, bias, by_strength = fit_logit_adjustment(model, val_split, weights, image_size=(360, 480))
    adjusted = fold_class_bias(model, bias)
    tfseg.pipeline.calibrate.run(...)          # the same for a run directory, keeping the original
"""

from __future__ import annotations

import numpy as np

from tfseg._keras import keras, tf
from tfseg.evaluate import ConfusionMatrix, stream
from tfseg.predictors import as_predictor

DEFAULT_STRENGTHS = tuple(np.round(np.linspace(0.0, 1.0, 9), 3))


def prior_bias(class_weights, strength: float) -> np.ndarray:
    """``-strength * log(w)`` per class; classes of weight 0 (absent from training) get 0."""
    weights = np.asarray(class_weights, dtype=np.float64)
    if weights.ndim != 1 or np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError(f"class_weights must be a 1-D list of finite non-negative numbers, got {class_weights!r}")
    safe = np.where(weights > 0, weights, 1.0)
    return (-float(strength) * np.log(safe)).astype(np.float32)


def fit_logit_adjustment(model, split, class_weights, *, image_size=None, strengths=DEFAULT_STRENGTHS,
                         batch_size: int = 4, verbose="auto"):
    """Chooses the strength ``s`` of ``-s * log(w)`` that maximises mIoU on ``split``.

    One pass over the split at full label resolution (``tfseg.evaluate.stream``); every strength
    is scored on the same logits.

    Args:
      model: a Keras model (or any ``tfseg.predictors`` predictor or exported model path).
      split: the validation split.
      class_weights: the per-class weights the model was trained with.
      image_size: (height, width) fed to the model; required when it accepts any size.
      strengths: the strengths tried.
      batch_size: evaluation batch size.
      verbose: 0 is silent; otherwise a progress bar.

    Returns:
      ``(best strength, its per-class bias as a list, {strength: mIoU})``; ties go to the smaller
      strength, so an unweighted model keeps ``s = 0``.
    """
    info = split.info
    if len(class_weights) != info.num_classes:
        raise ValueError(f"{len(class_weights)} class weights for {info.num_classes} classes of {info.name!r}")
    strengths = sorted(float(s) for s in strengths)
    biases = {s: prior_bias(class_weights, s) for s in strengths}
    predictor = as_predictor(model, image_size)
    confusions = {s: ConfusionMatrix(predictor, info.num_classes, info.ignore_label, bias=biases[s]) for s in strengths}
    stream([predictor], split, list(confusions.values()), batch_size=batch_size, verbose=verbose)
    by_strength = {s: float(confusions[s].scores(info.class_names)["miou"]) for s in strengths}
    best = max(strengths, key=lambda s: (by_strength[s], -s))
    return best, biases[best].tolist(), by_strength


def _classifier_candidates(model, num_classes: int, layer: str | None):
    if layer is not None:
        found = [candidate for candidate in model.layers if candidate.name == layer]
        if not found:
            raise ValueError(f"model {model.name!r} has no layer {layer!r}")
        return found
    # Prefer the layers called classifier, then any biased conv with one filter per class.
    convs = [conv for conv in model.layers if isinstance(conv, keras.layers.Conv2D) and getattr(conv, "use_bias", False)
             and conv.filters == num_classes]
    return sorted(convs, key=lambda conv: "classifier" not in conv.name)


def fold_class_bias(model, bias, layer: str | None = None, atol: float = 1e-3):
    """A copy of ``model`` whose logits are shifted by ``bias`` (one value per class).

    The bias is added to a classifier convolution's bias: ``layer`` if given, else the first conv
    with one filter per class (``*classifier*`` first) for which the model's output moves by
    exactly ``bias`` everywhere. That holds when only bias-preserving layers (bilinear resizing,
    crops, sums with other branches) follow it, and is checked on a random input.

    Raises:
      ValueError: naming the layers tried when none shifts the output by ``bias``.
    """
    bias = np.asarray(bias, dtype=np.float32)
    num_classes = int(model.output_shape[-1])
    if bias.shape != (num_classes,):
        raise ValueError(f"bias has shape {bias.shape}; model {model.name!r} has {num_classes} output classes")
    adjusted = keras.models.clone_model(model)
    adjusted.set_weights(model.get_weights())
    height, width = (d or 64 for d in model.input_shape[1:3])
    probe = tf.random.stateless_uniform((1, height, width, model.input_shape[-1]), seed=(7, 7), maxval=255.0)
    expected = model(probe, training=False).numpy() + bias
    tried = []
    for candidate in _classifier_candidates(adjusted, num_classes, layer):
        kernel, old_bias = candidate.get_weights()[:2]
        candidate.set_weights([kernel, old_bias + bias, *candidate.get_weights()[2:]])
        if np.allclose(adjusted(probe, training=False).numpy(), expected, atol=atol):
            return adjusted
        candidate.set_weights([kernel, old_bias, *candidate.get_weights()[2:]])
        tried.append(candidate.name)
    raise ValueError(
        f"no layer of model {model.name!r} shifts its logits by a per-class bias (tried {tried or 'none'}): "
        "the classifier is followed by a layer that does not preserve a constant offset (e.g. a learned "
        "transposed convolution); pass layer= to name another one"
    )


def folded_logit_offset(record: dict) -> list | None:
    """The logit adjustment a run's model carries in its classifier bias (``None`` if none).

    Runs derived from a calibrated run (pruned, quantization-aware) copy its record and weights,
    so they carry the same offset; their fine-tuning loss must subtract it
    (``tfseg.runs.Run.loss``).
    """
    adjustment = record.get("logit_adjustment") or {}
    return adjustment.get("bias")
