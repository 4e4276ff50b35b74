"""Reading a model's intermediate feature maps by endpoint name, and matching them across models.

One extractor model per network (``keras.Model(inputs, {name: layer.output})``) shares the
network's layers, so taps need no hooks and see exactly the weights being trained. Student maps
are matched to the teacher's with a bilinear resize when the strides differ (and with the layer a
loss asks for through its ``adapter`` hook, e.g. a 1x1 convolution when it compares channels).
"""

from __future__ import annotations

from tfseg._keras import keras, tf
from tfseg.errors import ConfigError
from tfseg.models.common import endpoints, input_layers

OUTPUT = "logits"  # always the model's output, even for models without named endpoints


def available_taps(model) -> list[str]:
    """Endpoint names that ``feature_extractor`` can read from ``model``."""
    return sorted({OUTPUT, *endpoints(model)})


def feature_extractor(model, names, role: str = "model"):
    """A model from ``model``'s input to ``{name: tensor}`` for each endpoint in ``names``.

    ``"logits"`` is the model's output. Other names are layers found by ``tfseg.models.endpoints``
    (``features``, ``decoder``, ``low_level``), also in pruned or quantization-aware copies.

    Raises:
      ValueError: an endpoint the model does not have, naming the model, its role and what it has.
    """
    found = endpoints(model)
    outputs = {}
    for name in sorted(set(names)):
        if name == OUTPUT:
            outputs[name] = model.outputs[0]
        elif name in found:
            outputs[name] = found[name].output
        else:
            raise ConfigError(
                f"the {role} {model.name!r} has no endpoint {name!r}; it has {', '.join(available_taps(model))} "
                "(endpoints are layers with these names, see tfseg.models.ENDPOINT_NAMES)"
            )
    return keras.Model(model.inputs, outputs, name=f"{model.name}_taps")


# Activations whose output is never negative, and layers that keep "never negative" when all
# their inputs are (identity-like, pooling, resizing, padding, joins of non-negative maps).
_NON_NEGATIVE_ACTIVATIONS = {"relu", "relu6", "sigmoid", "hard_sigmoid", "softmax", "softplus", "exponential"}
_SIGN_KEEPING_LAYERS = {
    "Dropout", "SpatialDropout2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "UpSampling2D", "Resizing", "ZeroPadding2D", "Cropping2D", "Reshape",
    "Concatenate", "Add", "Multiply", "Maximum",
}


def _non_negative_layer(layer, depth: int = 0) -> bool:
    unwrapped = getattr(layer, "layer", None) or layer  # TF-MOT's pruning and quantization wrappers
    kind = type(unwrapped).__name__
    if kind == "ReLU":
        return float(unwrapped.negative_slope) == 0.0
    activation = getattr(getattr(unwrapped, "activation", None), "__name__", None)  # Conv2D(activation=) too
    if activation in _NON_NEGATIVE_ACTIVATIONS:
        return True
    if not (kind == "Activation" and activation == "linear") and kind not in _SIGN_KEEPING_LAYERS:
        return False
    parents = input_layers(layer)
    if depth > 50 or not parents:
        return False
    return all(_non_negative_layer(parent, depth + 1) for parent in parents)


def is_non_negative(model, name: str) -> bool:
    """True when endpoint ``name`` of ``model`` provably never outputs a negative value (e.g. a ReLU).

    Found by walking back through sign-keeping layers (an identity ``Activation("linear")``,
    pooling, resizing, joins) to an activation. ``False`` means "can be negative or unknown".
    """
    if name == OUTPUT:
        # the layer that made the output (model.layers is in creation order, not graph order)
        return _non_negative_layer(model.outputs[0]._keras_history.layer) if model.outputs else False
    found = endpoints(model)
    return name in found and _non_negative_layer(found[name])


def match_spatial(student_map, teacher_map):
    """Resizes a (B, h, w, C) student map bilinearly to the teacher map's spatial size if it differs."""
    if student_map.shape.rank != 4:
        return student_map
    target = tf.shape(teacher_map)[1:3]
    if student_map.shape[1:3] == teacher_map.shape[1:3] and None not in student_map.shape[1:3]:
        return student_map
    return tf.image.resize(student_map, target, method="bilinear")
