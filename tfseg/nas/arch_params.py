"""The architecture parameters of a search and the discrete architecture they derive.

Logits, one softmax each (``probabilities``):

- ``alpha`` [L, 3, n_ops]: the op of the cell at (layer, scale index);
- ``beta`` [L, 3, 2]: where that cell's input comes from: [same scale in the previous layer (stride 1),
  the next finer scale (stride 2)]. Choices the lattice does not have are masked out: the 1/8 cells
  only take "same" (layer 0 takes the stem), a cell on the diagonal (scale index == layer) only
  takes "finer";
- ``gamma`` [L, 3, n_widths]: the cell's width among ``space.width_ratios``;
- ``gamma_stem`` [3, n_widths] and ``gamma_head`` [n_widths]: the stem stages' and the head's widths;
- ``delta`` [2]: the derived network's second branch, the one ending at 1/16 (0) or 1/8 (1), beside
  the branch that ends at 1/32.

Entries of cells the lattice does not have (scale index > layer) exist in the tensors and are
ignored. A path that ends at scale index ``e`` in the last layer walks back through beta
(``path_probabilities``); ``derive`` takes its most probable path (Viterbi) and each cell's argmax op
and width.
"""

from __future__ import annotations

import numpy as np

from tfseg._keras import tf
from tfseg.nas.architecture import Architecture, Cell
from tfseg.nas.space import SCALES, SearchSpace

SECOND_BRANCH_SCALES = (16, 8)  # what delta chooses between
_MASKED = -1e9


def lattice_mask(space: SearchSpace) -> np.ndarray:
    """[L, 3] booleans: which cells exist."""
    return np.array([[space.cell_exists(layer, scale) for scale in SCALES] for layer in range(space.num_layers)])


def beta_mask(space: SearchSpace) -> np.ndarray:
    """[L, 3, 2] booleans: which input edges exist (see the module docstring)."""
    mask = np.zeros((space.num_layers, len(SCALES), 2), dtype=bool)
    for layer in range(space.num_layers):
        for s in range(len(SCALES)):
            if not space.cell_exists(layer, SCALES[s]):
                continue
            mask[layer, s, 0] = layer == 0 or space.cell_exists(layer - 1, SCALES[s])
            mask[layer, s, 1] = layer > 0 and s > 0 and space.cell_exists(layer - 1, SCALES[s - 1])
    return mask


class ArchParameters:
    """The architecture logits as tf.Variables (created with zeros: every choice equally likely).

    ``variables`` lists them (the controller's architecture optimizer updates exactly these).
    """

    def __init__(self, space: SearchSpace, name: str = "arch"):
        self.space = space
        layers, n_scales, n_ops, n_widths = space.num_layers, len(SCALES), len(space.ops), len(space.width_ratios)
        zeros = lambda *shape: tf.zeros(shape, tf.float32)  # noqa: E731
        self.alpha = tf.Variable(zeros(layers, n_scales, n_ops), name=f"{name}_alpha")
        self.beta = tf.Variable(zeros(layers, n_scales, 2), name=f"{name}_beta")
        self.gamma = tf.Variable(zeros(layers, n_scales, n_widths), name=f"{name}_gamma")
        self.gamma_stem = tf.Variable(zeros(3, n_widths), name=f"{name}_gamma_stem")
        self.gamma_head = tf.Variable(zeros(n_widths), name=f"{name}_gamma_head")
        self.delta = tf.Variable(zeros(2), name=f"{name}_delta")
        self._beta_mask = tf.constant(beta_mask(space))

    @property
    def variables(self) -> list:
        return [self.alpha, self.beta, self.gamma, self.gamma_stem, self.gamma_head, self.delta]

    def probabilities(self) -> dict:
        """Softmax of each logit tensor (beta over its existing edges; rows without any are all 0)."""
        beta = tf.where(self._beta_mask, self.beta, _MASKED)
        beta = tf.nn.softmax(beta, axis=-1) * tf.cast(self._beta_mask, tf.float32)
        return {"alpha": tf.nn.softmax(self.alpha, -1), "beta": beta, "gamma": tf.nn.softmax(self.gamma, -1),
                "gamma_stem": tf.nn.softmax(self.gamma_stem, -1), "gamma_head": tf.nn.softmax(self.gamma_head, -1),
                "delta": tf.nn.softmax(self.delta, -1)}

    def numpy(self) -> dict:
        """The logits as arrays (what a checkpoint or a report keeps)."""
        return {variable.name.split(":")[0].removeprefix("arch_"): variable.numpy() for variable in self.variables}

    def derive(self) -> Architecture:
        """The discrete architecture: the 1/32 branch and the second branch argmax delta chooses, each
        along its most probable path, with every cell's argmax op and width."""
        probs = {key: value.numpy() for key, value in self.probabilities().items()}
        space = self.space
        second = SECOND_BRANCH_SCALES[int(np.argmax(probs["delta"]))]
        branches = []
        for end in (32, second):
            scales = most_probable_path(probs["beta"], SCALES.index(end))
            branches.append(tuple(
                Cell(SCALES[s], space.ops[int(np.argmax(probs["alpha"][layer, s]))],
                     space.cell_width_choices(SCALES[s])[int(np.argmax(probs["gamma"][layer, s]))])
                for layer, s in enumerate(scales)))
        stem = tuple(space.stem_width_choices(stage)[int(np.argmax(probs["gamma_stem"][stage]))] for stage in range(3))
        head = space.head_width_choices()[int(np.argmax(probs["gamma_head"]))]
        return Architecture(space, stem, head, tuple(branches))


def most_probable_path(beta_probs: np.ndarray, end: int) -> list:
    """Scale index of each layer on the most probable path that ends at scale index ``end`` in the
    last layer (Viterbi over the masked beta probabilities [L, 3, 2])."""
    layers = beta_probs.shape[0]
    # best[l][s]: log-probability of the best path from layer l, scale s to the end
    best = np.full((layers, beta_probs.shape[1]), -np.inf)
    best[-1, end] = 0.0
    for layer in range(layers - 1, 0, -1):
        for s in range(beta_probs.shape[1]):
            if best[layer, s] == -np.inf:
                continue
            for edge, previous in ((0, s), (1, s - 1)):
                p = beta_probs[layer, s, edge]
                if previous >= 0 and p > 0:
                    best[layer - 1, previous] = max(best[layer - 1, previous], best[layer, s] + np.log(p))
    path, s = [0], 0
    if best[0, 0] == -np.inf:
        raise ValueError(f"no path through the lattice ends at scale index {end}")
    for layer in range(1, layers):  # walk forward along the best continuation
        candidates = [(best[layer, t] + np.log(beta_probs[layer, t, edge]), t)
                      for edge, t in ((0, s), (1, s + 1)) if t < beta_probs.shape[1] and beta_probs[layer, t, edge] > 0
                      and best[layer, t] > -np.inf]
        s = max(candidates)[1]
        path.append(s)
    return path


def path_probabilities(beta_probs, end: int):
    """[L, 3] probability that the path ending at scale index ``end`` in the last layer passes through
    each cell (differentiable in ``beta_probs`` [L, 3, 2]); with one-hot beta it is the path's 0/1 mask.
    The probability of the path using the same-scale / finer edge into a cell is this times
    ``beta_probs[..., 0]`` / ``[..., 1]``."""
    layers, n_scales = int(beta_probs.shape[0]), int(beta_probs.shape[1])
    rows = [tf.one_hot(end, n_scales, dtype=beta_probs.dtype)]
    for layer in range(layers - 1, 0, -1):
        current = rows[-1]
        same = current * beta_probs[layer, :, 0]
        finer = current * beta_probs[layer, :, 1]
        rows.append(same + tf.concat([finer[1:], tf.zeros([1], beta_probs.dtype)], axis=0))
    return tf.stack(rows[::-1], axis=0)


TILT_SHARPNESS = 8.0  # at |tilt| 1 the extreme option is about e^8 times likelier than the other extreme


def _tilted_choice(rng: np.random.Generator, options, tilt: float, costs=None):
    """One of ``options``, uniform at ``tilt`` 0; towards the costliest (by ``costs``, else the order
    given) as ``tilt`` goes to +1 and the cheapest as it goes to -1."""
    options = list(options)
    if not tilt or len(options) == 1:
        return options[int(rng.integers(len(options)))]
    rank = np.argsort(np.argsort(costs if costs is not None else np.arange(len(options))))
    logits = TILT_SHARPNESS * tilt * (rank / (len(options) - 1) - 0.5)
    weights = np.exp(logits - logits.max())
    return options[int(rng.choice(len(options), p=weights / weights.sum()))]


def random_architecture(space: SearchSpace, rng: np.random.Generator, tilt: float = 0.0,
                        op_costs: dict | None = None) -> Architecture:
    """A random two-branch net of ``space`` (each cell of the lattice draws one input edge, op and
    width, so the branches agree where they meet, as a derived net's do).

    ``tilt`` in [-1, 1] leans every op and width choice towards the cheap (-1) or costly (+1) end, so
    a sample of tilts spans the space's latency range where uniform nets (tilt 0) bunch in its middle;
    ops are ranked by ``op_costs`` (op -> any cost), else taken in ``space.ops`` order."""
    if not -1.0 <= tilt <= 1.0:
        raise ValueError(f"tilt must be in [-1, 1], got {tilt}")
    op_cost = None if op_costs is None else [op_costs[op] for op in space.ops]
    edges, choice = beta_mask(space), {}
    for layer in range(space.num_layers):
        for s, scale in enumerate(SCALES):
            if space.cell_exists(layer, scale):
                choice[layer, s] = (int(rng.choice(np.flatnonzero(edges[layer, s]))),
                                    str(_tilted_choice(rng, space.ops, tilt, op_cost)),
                                    int(_tilted_choice(rng, space.cell_width_choices(scale), tilt)))
    branches = []
    for end in (SCALES[-1], SECOND_BRANCH_SCALES[rng.integers(2)]):
        s, path = SCALES.index(end), []
        for layer in reversed(range(space.num_layers)):
            path.append((layer, s))
            s -= choice[layer, s][0]
        branches.append(tuple(Cell(SCALES[s], *choice[layer, s][1:]) for layer, s in reversed(path)))
    stem = tuple(int(_tilted_choice(rng, space.stem_width_choices(i), tilt)) for i in range(3))
    return Architecture(space, stem, int(_tilted_choice(rng, space.head_width_choices(), tilt)), tuple(branches))


__all__ = ["SECOND_BRANCH_SCALES", "ArchParameters", "random_architecture", "beta_mask", "lattice_mask", "most_probable_path",
           "path_probabilities"]
