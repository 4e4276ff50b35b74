"""Latency of derived nets from the lookup table, and its differentiable expectation during a search.

``LatencyModel.predict(architecture)`` sums the table entries of a derived net (its stem stages, each
branch's cells with their strides and widths, its head parts: ``keys_for_architecture``), optionally
through an affine correction fitted on measured whole nets (``fit_correction``).

``LatencyModel.expected(probs)`` is the same sum in expectation under ``ArchParameters.probabilities()``
(independent softmax choices, paths walked back through beta as ``path_probabilities`` does):

- stem: for each stage, E over its input width (the previous stage's gamma_stem) and output width;
- cells, per branch end (1/32 always, 1/16 weighted by delta[0], 1/8 by delta[1]): for every cell,
  P(cell on the path) x [beta_same x E_op,widths T(op, stride 1, cin ~ gamma(layer-1, same scale),
  cout ~ gamma(cell)) + beta_finer x E T(op, stride 2, cin ~ gamma(layer-1, finer scale), cout)];
  layer 0's cin is a stem stage-3 width (gamma_stem[2]);
- head, per second branch (weighted by delta): E over gamma_head and the two branch-end widths of the
  two ``head_proj`` entries, plus the ``head_fuse`` entry.

Only the probabilities carry gradient; the table is folded into dense constants once (``cell_same``
[op, scale, w_in, w_out], ``cell_finer``, ``cell_first`` [op, w_in, w_out], stem and head arrays), so
``expected`` is a few einsums. With one-hot probabilities (``one_hot_probabilities``) it equals
``predict`` of that architecture exactly. ``decoupled`` gives FasterSeg's separate op / path / width
terms.
"""

from __future__ import annotations

import numpy as np

from tfseg._keras import tf
from tfseg.errors import ConfigError
from tfseg.nas.arch_params import SECOND_BRANCH_SCALES, beta_mask, path_probabilities
from tfseg.nas.architecture import as_architecture
from tfseg.nas.latency_table import (_now, _space_args, cell_key, head_fuse_key, head_proj_key, keys_for_architecture,
                                     keys_for_space, stem_key)
from tfseg.nas.space import SCALES

# Which probabilities each decoupled term differentiates (the others are held by tf.stop_gradient).
GROUPS = {"ops": ("alpha",), "path": ("beta", "delta"), "widths": ("gamma", "gamma_stem", "gamma_head")}
PROBABILITY_KEYS = ("alpha", "beta", "gamma", "gamma_stem", "gamma_head", "delta")


class LatencyModel:
    """Table latency (ms) of derived nets and its expectation under architecture probabilities.

    Args:
      table: a ``LatencyTable``; every entry a search over ``space`` needs is measured now if missing
        (or a ConfigError if the table is read-only).
      space: the SearchSpace searched.
      num_classes: the classes of the head.
      threads: the thread count whose timings are used (1: the search objective on this machine).
    """

    def __init__(self, table, space, num_classes: int, threads: int = 1):
        if int(threads) not in table.threads:
            raise ConfigError(f"{table.source}: timed at {list(table.threads)} threads, not at {threads}")
        self.table, self.space, self.num_classes, self.threads = table, space, int(num_classes), int(threads)
        table.ensure(keys_for_space(space, num_classes), fill_args=_space_args(space, num_classes))
        self._arrays = self._fold()
        self._constants = {}

    def _fold(self) -> dict:
        """The table as dense arrays over (op, scale, input width index, output width index)."""
        space = self.space

        def ms(key):
            return self.table.lookup(key, self.threads)

        cells = [space.cell_width_choices(scale) for scale in SCALES]
        stem = [space.stem_width_choices(stage) for stage in range(3)]
        head = space.head_width_choices()
        n_ops, n_widths = len(space.ops), len(space.width_ratios)
        edges = beta_mask(space)
        same, finer = np.zeros((2, n_ops, len(SCALES), n_widths, n_widths))
        first = np.zeros((n_ops, n_widths, n_widths))
        for o, op in enumerate(space.ops):
            first[o] = [[ms(cell_key(op, SCALES[0], 1, a, b)) for b in cells[0]] for a in stem[2]]
            for s, scale in enumerate(SCALES):
                if edges[1:, s, 0].any():
                    same[o, s] = [[ms(cell_key(op, scale, 1, a, b)) for b in cells[s]] for a in cells[s]]
                if edges[1:, s, 1].any():
                    finer[o, s] = [[ms(cell_key(op, scale, 2, a, b)) for b in cells[s]] for a in cells[s - 1]]
        coarsest = SCALES[-1]
        return {
            "stem1": np.array([ms(stem_key(1, 3, b)) for b in stem[0]]),
            "stem2": np.array([[ms(stem_key(2, a, b)) for b in stem[1]] for a in stem[0]]),
            "stem3": np.array([[ms(stem_key(3, a, b)) for b in stem[2]] for a in stem[1]]),
            "cell_first": first, "cell_same": same, "cell_finer": finer,
            # [second branch (SECOND_BRANCH_SCALES), branch-end width, head width]
            "proj_coarse": np.array([[[ms(head_proj_key(coarsest, f, a, h)) for h in head] for a in cells[-1]]
                                     for f in SECOND_BRANCH_SCALES]),
            "proj_fine": np.array([[[ms(head_proj_key(f, f, a, h)) for h in head] for a in cells[SCALES.index(f)]]
                                   for f in SECOND_BRANCH_SCALES]),
            "fuse": np.array([[ms(head_fuse_key(f, 2, h, self.num_classes)) for h in head] for f in SECOND_BRANCH_SCALES]),
        }

    def constants(self, dtype=tf.float32) -> dict:
        """The folded table as tf constants of ``dtype`` (built once per dtype, eagerly: a constant first
        made inside a traced ``tf.cond`` branch could not be used outside it)."""
        dtype = tf.as_dtype(dtype)
        if dtype.name not in self._constants:
            with tf.init_scope():
                self._constants[dtype.name] = {name: tf.constant(array, dtype) for name, array in self._arrays.items()}
        return self._constants[dtype.name]

    @property
    def correction(self) -> tuple:
        """``(a, b)`` of the fitted correction ``a * table_sum + b`` at this thread count, else (1, 0)."""
        record = self.table.correction(self.threads)
        return (float(record["a"]), float(record["b"])) if record else (1.0, 0.0)

    def predict(self, architecture, corrected: bool = True) -> float:
        """Latency in ms of a derived net: the sum of its table entries (corrected when a fit exists)."""
        total = sum(self.table.lookup(key, self.threads)
                    for key in keys_for_architecture(as_architecture(architecture), self.num_classes))
        a, b = self.correction if corrected else (1.0, 0.0)
        return a * total + b

    def expected(self, probs: dict, corrected: bool = True):
        """The expected latency in ms (a differentiable tf scalar) under ``ArchParameters.probabilities()``."""
        space = self.space
        shape = (space.num_layers, len(SCALES), len(space.ops))
        if tuple(probs["alpha"].shape) != shape:
            raise ConfigError(f"alpha probabilities of shape {tuple(probs['alpha'].shape)} do not fit the search "
                              f"space {shape} (layers, scales, ops)")
        alpha, beta, gamma, gamma_stem, gamma_head, delta = (probs[key] for key in PROBABILITY_KEYS)
        c = self.constants(alpha.dtype)
        stem = (tf.tensordot(gamma_stem[0], c["stem1"], 1)
                + tf.einsum("i,j,ij->", gamma_stem[0], gamma_stem[1], c["stem2"])
                + tf.einsum("i,j,ij->", gamma_stem[1], gamma_stem[2], c["stem3"]))
        first = tf.einsum("o,i,j,oij->", alpha[0, 0], gamma_stem[2], gamma[0, 0], c["cell_first"])
        previous_finer = tf.concat([tf.zeros_like(gamma[:-1, :1]), gamma[:-1, :-1]], axis=1)  # [l-1, s-1]
        same = tf.einsum("lso,lsi,lsj,osij->ls", alpha[1:], gamma[:-1], gamma[1:], c["cell_same"])
        finer = tf.einsum("lso,lsi,lsj,osij->ls", alpha[1:], previous_finer, gamma[1:], c["cell_finer"])
        # [L, 3]: each cell's expected cost given it is on the path (layer 0 has only its 1/8 cell)
        cost = tf.concat([tf.concat([first[None], tf.zeros([len(SCALES) - 1], alpha.dtype)], 0)[None],
                          beta[1:, :, 0] * same + beta[1:, :, 1] * finer], axis=0)

        def cells(end_scale):
            return tf.reduce_sum(path_probabilities(beta, SCALES.index(end_scale)) * cost)

        total = stem + cells(SCALES[-1])
        for k, finest in enumerate(SECOND_BRANCH_SCALES):
            head = (tf.einsum("i,h,ih->", gamma[-1, -1], gamma_head, c["proj_coarse"][k])
                    + tf.einsum("i,h,ih->", gamma[-1, SCALES.index(finest)], gamma_head, c["proj_fine"][k])
                    + tf.tensordot(gamma_head, c["fuse"][k], 1))
            total += delta[k] * (cells(finest) + head)
        a, b = self.correction if corrected else (1.0, 0.0)
        return total * a + b

    def decoupled(self, probs: dict, corrected: bool = True) -> dict:
        """FasterSeg's decoupled latency terms, all equal in value to ``expected``: ``"ops"`` with gradient
        only through alpha, ``"path"`` only through beta and delta, ``"widths"`` only through the gammas;
        ``"total"`` through all."""
        terms = {}
        for name, keys in GROUPS.items():
            held = {key: value if key in keys else tf.stop_gradient(value) for key, value in probs.items()}
            terms[name] = self.expected(held, corrected)
        terms["total"] = self.expected(probs, corrected)
        return terms

    def fit_correction(self, pairs) -> dict:
        """Least squares ``measured = a * table_sum + b`` over ``[(architecture, measured_ms), ...]``.

        Stored in the table's meta under this thread count (saved with the table, so it is reused)
        with the number of nets and the fit's residuals; returns that record.

        Raises:
          ConfigError: fewer than two nets with different table sums.
        """
        pairs = list(pairs)
        sums = np.array([self.predict(arch, corrected=False) for arch, _ in pairs], dtype=float)
        measured = np.array([float(ms) for _, ms in pairs])
        if len(pairs) < 2 or np.ptp(sums) == 0:
            raise ConfigError(f"{self.table.source}: a latency correction needs at least two nets with different "
                              f"table sums, got {len(pairs)} net(s) summing to {sorted(set(sums.round(4)))} ms")
        a, b = np.polyfit(sums, measured, 1)
        residuals = measured - (a * sums + b)
        record = {"a": float(a), "b": float(b), "nets": len(pairs), "table_sums_ms": sums.tolist(),
                  "measured_ms": measured.tolist(), "residuals_ms": residuals.tolist(),
                  "mean_abs_error_pct": float(np.mean(np.abs(residuals) / measured) * 100),
                  "num_classes": self.num_classes, "date": _now()}
        self.table.set_correction(self.threads, record)
        return record


def one_hot_probabilities(architecture) -> dict:
    """The probability dict (``ArchParameters.probabilities()``'s layout, float32) that puts all mass on
    ``architecture``: its ops, widths, input edges, stem and head widths and second branch. Cells on no
    branch get their first op, width and existing edge.

    Raises:
      ConfigError: not a 1/32 branch plus a 1/16 or 1/8 one, or branches that disagree at a shared
        cell (one set of probabilities cannot describe both).
    """
    arch = as_architecture(architecture)
    space = arch.space
    if len(arch.branches) != 2 or arch.branch_scales[0] != SCALES[-1] or arch.branch_scales[1] not in SECOND_BRANCH_SCALES:
        raise ConfigError(f"one-hot probabilities describe a 1/{SCALES[-1]} branch plus a 1/16 or 1/8 one; the "
                          f"architecture's branches end at {['1/%d' % s for s in arch.branch_scales]}")
    layers, n_scales = space.num_layers, len(SCALES)
    edges = beta_mask(space)
    alpha = np.zeros((layers, n_scales, len(space.ops)))
    gamma = np.zeros((layers, n_scales, len(space.width_ratios)))
    beta = np.zeros((layers, n_scales, 2))
    for layer in range(layers):
        for s, scale in enumerate(SCALES):
            if space.cell_exists(layer, scale):
                alpha[layer, s, 0] = gamma[layer, s, 0] = 1.0
                beta[layer, s, int(np.argmax(edges[layer, s]))] = 1.0
    chosen = {}
    for b, branch in enumerate(arch.branches):
        for layer, (cell, stride) in enumerate(zip(branch, arch.strides(b))):
            s = SCALES.index(cell.scale)
            choice = (cell.op, cell.width, stride)
            if chosen.setdefault((layer, s), choice) != choice:
                raise ConfigError(f"branches 0 and 1 share layer {layer}, 1/{cell.scale} with different (op, width, "
                                  f"stride) {chosen[(layer, s)]} and {choice}: no one set of probabilities describes both")
            alpha[layer, s] = np.eye(len(space.ops))[space.ops.index(cell.op)]
            gamma[layer, s] = np.eye(len(space.width_ratios))[space.cell_width_choices(cell.scale).index(cell.width)]
            beta[layer, s] = np.eye(2)[stride - 1]
    eye = np.eye(len(space.width_ratios))
    probs = {"alpha": alpha, "beta": beta, "gamma": gamma,
             "gamma_stem": np.stack([eye[space.stem_width_choices(i).index(w)] for i, w in enumerate(arch.stem_widths)]),
             "gamma_head": eye[space.head_width_choices().index(arch.head_width)],
             "delta": np.eye(2)[SECOND_BRANCH_SCALES.index(arch.branch_scales[1])]}
    return {key: tf.constant(value, tf.float32) for key, value in probs.items()}


__all__ = ["GROUPS", "LatencyModel", "one_hot_probabilities"]
