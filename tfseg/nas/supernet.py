"""The supernet: every op of every cell of a ``SearchSpace``, mixed by the architecture parameters.

One forward pass at a proxy input size computes:

- the stem's three stride-2 stages, each at its full width, its output multiplied by a width mask;
- every cell of the lattice (``space.cell_exists``): each op of ``space.ops`` on each input edge the
  cell has (same scale, stride 1; finer scale, stride 2), mixed by softmax(alpha) within an edge,
  the edges mixed by beta, the sum multiplied by the cell's width mask;
- the head: a 1x1 projection of each last-layer scale resized to 1/8, the 1/32 one always, the 1/16
  and 1/8 ones weighted by softmax(delta), then the fuse conv and the classifier, resized to the
  input size.

Width masks are "slimmable" leading slices: ``mask = sum_k w_k mask_k`` where ``mask_k`` keeps the
first ``widths[k]`` channels. A block computed at full width and masked on its output equals the
block sliced to that width (its next block sees zeros in the dropped input channels), so one set
of full-width kernels serves every width.

The blocks are the deployed ones (``tfseg.models.searched.stem`` / ``cell_op`` / ``resize`` and the
head's ``conv_bn_relu``), each a small functional sub-model at its scale's full widths.
"""

from __future__ import annotations

import numpy as np

from tfseg._keras import keras, tf
from tfseg.models.common import conv_bn_relu, normalize
from tfseg.models.searched import cell_op, resize, stem
from tfseg.nas.arch_params import ArchParameters, beta_mask
from tfseg.nas.space import SCALES, SearchSpace, check_input_size, feature_sizes

EDGES = ((0, "same", 1), (1, "down", 2))  # beta's edge index, its name, the op's stride


def width_masks(choices, full: int) -> np.ndarray:
    """[n_choices, full] float rows of 0/1: row k keeps the first ``choices[k]`` channels."""
    return (np.arange(full)[None, :] < np.asarray(choices)[:, None]).astype(np.float32)


def hard_gumbel_softmax(logits, temperature: float = 1.0):
    """One-hot samples of softmax(logits) along the last axis, with the soft sample's gradient
    (straight-through Gumbel-softmax)."""
    uniform = tf.random.uniform(tf.shape(logits), minval=np.finfo(np.float32).tiny, maxval=1.0)
    soft = tf.nn.softmax((logits - tf.math.log(-tf.math.log(uniform))) / temperature, axis=-1)
    hard = tf.one_hot(tf.argmax(soft, axis=-1), int(logits.shape[-1]), dtype=soft.dtype)
    return soft + tf.stop_gradient(hard - soft)


def _block(input_shape, build, name: str):
    """``build(input)`` as a functional sub-model, or None when it adds no layer (an identity skip)."""
    inputs = keras.Input(tuple(input_shape), name=f"{name}_in")
    outputs = build(inputs)
    return None if outputs is inputs else keras.Model(inputs, outputs, name=name)


class SuperNet(keras.Model):
    """The searchable network of ``space`` at ``input_size`` (height, width) for ``num_classes``.

    ``supernet.arch`` holds the architecture logits (``ArchParameters``; not Keras-tracked, so
    ``supernet.weight_variables`` / ``trainable_variables`` are the network's weights only).
    Takes float32 [0, 255] images (B, H, W, 3), returns logits (B, H, W, num_classes).

    Widths: in training one width per cell (and stem stage, head) is sampled each forward pass with
    straight-through hard Gumbel-softmax (temperature ``temperature``), as FasterSeg: the weights
    are trained on the discrete widths a derived network can have, at no extra cost (the blocks
    run at full width anyway), and gamma still gets a gradient. A soft mask would train on
    channels scaled by P(width > j), which no derived network has. At inference the argmax width
    is used (the derived widths, what validation should score), not the expectation the network
    never saw in training. Ops (alpha), edges (beta) and the second head branch (delta) are mixed
    softly (DARTS).
    """

    def __init__(self, space: SearchSpace, input_size, num_classes: int, *, temperature: float = 1.0,
                 name: str = "supernet", **kwargs):
        super().__init__(name=name, **kwargs)
        self.space = space
        self.input_size = check_input_size(input_size)
        self.num_classes = int(num_classes)
        self.temperature = float(temperature)
        # False: training mode uses the argmax widths too (batch-norm re-estimation for validation)
        self.sample_widths = True
        self.arch = ArchParameters(space)
        self._edges = beta_mask(space)  # [L, 3, 2] numpy: which input edges exist
        sizes = feature_sizes(self.input_size)
        cell_widths = dict(zip(SCALES, space.cell_widths))
        masks = lambda choices, full: tf.constant(width_masks(choices, full))  # noqa: E731

        # Each builder runs at once inside _block, so the lambdas need no bound defaults.
        stem_in = (*self.input_size, 3)
        self.stem_blocks = []
        for stage, width in enumerate(space.stem_widths):
            name_ = f"stem{stage + 1}"
            self.stem_blocks.append(_block(stem_in, lambda x: stem(normalize(x) if stage == 0 else x, (width,), (name_,)),
                                           name_))
            stem_in = (*sizes[2 ** (stage + 1)], width)
        self._stem_masks = [masks(space.stem_width_choices(i), w) for i, w in enumerate(space.stem_widths)]

        # op blocks keyed "l{layer}_s{scale}_{edge}_{op}"; identity skips have none
        self.op_blocks = {}
        for layer in range(space.num_layers):
            for s, scale in enumerate(SCALES):
                for edge, edge_name, stride in EDGES:
                    if not self._edges[layer, s, edge]:
                        continue
                    source = SCALES[s - edge]
                    channels = space.stem_widths[2] if layer == 0 else cell_widths[source]
                    for op in space.ops:
                        key = f"l{layer}_s{scale}_{edge_name}_{op}"
                        block = _block((*sizes[source], channels), lambda x: cell_op(x, op, cell_widths[scale], stride, key), key)
                        if block is not None:
                            self.op_blocks[key] = block
        self._cell_masks = [masks(space.cell_width_choices(scale), cell_widths[scale]) for scale in SCALES]

        head_width, size8 = space.head_width, sizes[8]
        self.head_projections = []
        for scale in SCALES:
            name_ = f"head_s{scale}"
            self.head_projections.append(_block(
                (*sizes[scale], cell_widths[scale]),
                lambda x: resize(conv_bn_relu(x, head_width, name_, kernel_size=1), size8, f"{name_}_up"), name_))
        self.head_fuse = _block((*size8, head_width), lambda x: conv_bn_relu(x, head_width, "head_fuse"), "head_fuse")
        self.classifier = _block(
            (*size8, head_width),
            lambda x: resize(keras.layers.Conv2D(self.num_classes, 1, name="classifier")(x), self.input_size, "logits"),
            "classifier")
        self._head_mask = masks(space.head_width_choices(), head_width)
        self.built = True  # every weight exists now

    @property
    def weight_variables(self) -> list:
        """The network's trainable weights (what the weight optimizer updates); no arch variable."""
        return self.trainable_variables

    def width_weights(self, training: bool) -> dict:
        """Per-choice weights of gamma, gamma_stem, gamma_head: hard Gumbel samples in training, else one-hot argmax."""
        arch = self.arch
        logits = {"gamma": arch.gamma, "gamma_stem": arch.gamma_stem, "gamma_head": arch.gamma_head}
        if training and self.sample_widths:
            return {key: hard_gumbel_softmax(value, self.temperature) for key, value in logits.items()}
        return {key: tf.one_hot(tf.argmax(value, axis=-1), int(value.shape[-1])) for key, value in logits.items()}

    def call(self, images, training=None):
        training = bool(training)
        probs = self.arch.probabilities()
        widths = self.width_weights(training)
        masked = lambda x, weights, mask: x * tf.linalg.matvec(mask, weights, transpose_a=True)  # noqa: E731

        x = tf.cast(images, tf.float32)
        for stage, block in enumerate(self.stem_blocks):
            x = masked(block(x, training=training), widths["gamma_stem"][stage], self._stem_masks[stage])

        previous = {0: x}  # scale index -> the previous layer's output there (layer 0 reads the stem)
        for layer in range(self.space.num_layers):
            current = {}
            for s, scale in enumerate(SCALES):
                if not self.space.cell_exists(layer, scale):
                    continue
                edges = []
                for edge, edge_name, _ in EDGES:
                    if not self._edges[layer, s, edge]:
                        continue
                    source = previous[s - edge]
                    outputs = []
                    for o, op in enumerate(self.space.ops):
                        block = self.op_blocks.get(f"l{layer}_s{scale}_{edge_name}_{op}")
                        outputs.append(probs["alpha"][layer, s, o] * (source if block is None else block(source, training=training)))
                    edges.append(probs["beta"][layer, s, edge] * tf.add_n(outputs))
                current[s] = masked(tf.add_n(edges), widths["gamma"][layer, s], self._cell_masks[s])
            previous = current

        head_weights = widths["gamma_head"]
        projected = [block(previous[s], training=training) for s, block in enumerate(self.head_projections)]
        delta = probs["delta"]  # (second branch at 1/16, at 1/8)
        x = projected[2] + delta[0] * projected[1] + delta[1] * projected[0]
        x = masked(x, head_weights, self._head_mask)
        x = masked(self.head_fuse(x, training=training), head_weights, self._head_mask)
        return self.classifier(x, training=training)


__all__ = ["SuperNet", "hard_gumbel_softmax", "width_masks"]
