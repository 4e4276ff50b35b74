"""Reading a model's intermediate feature maps by endpoint name, and matching them across models.

One extractor model per network (``keras.Model(inputs, {name: layer.output})``) shares the
network's layers, so taps need no hooks and see exactly the weights being trained. Student maps
are matched to the teacher's with a 1x1 convolution when a loss compares channels, and a bilinear
resize when the strides differ.
"""

from __future__ import annotations

from tfseg._keras import keras, tf
from tfseg.models.common import endpoints

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
            raise ValueError(
                f"the {role} {model.name!r} has no endpoint {name!r}; it has {', '.join(available_taps(model))} "
                "(endpoints are layers with these names, see tfseg.models.ENDPOINT_NAMES)"
            )
    return keras.Model(model.inputs, outputs, name=f"{model.name}_taps")


def channel_adapter(channels: int, name: str):
    """The trainable 1x1 convolution mapping a student map to the teacher's channel count."""
    return keras.layers.Conv2D(channels, 1, name=name)


def match_spatial(student_map, teacher_map):
    """Resizes a (B, h, w, C) student map bilinearly to the teacher map's spatial size if it differs."""
    if student_map.shape.rank != 4:
        return student_map
    target = tf.shape(teacher_map)[1:3]
    if student_map.shape[1:3] == teacher_map.shape[1:3] and None not in student_map.shape[1:3]:
        return student_map
    return tf.image.resize(student_map, target, method="bilinear")
