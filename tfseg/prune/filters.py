"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017) that
rebuilds a smaller model: fewer filters for real, not masks.

1. ``analyse`` (``tfseg.prune.channels``) finds the channel groups that must be pruned together.
2. ``plan_filter_pruning`` scores every channel of every prunable group by the norm of the filters
   producing it (L1 by default; L2, or the |gamma| of the batch norm after the convolution) and
   picks which to keep, per group (``scope="layer"``: the same fraction everywhere) or across the
   model (``scope="global"``: scores normalised per group, then one ranking).
3. ``apply_plan`` builds the same graph with the surviving channels and copies their weights:
   convolution kernels are sliced on both their input and output channel axes, depthwise kernels,
   biases and batch-norm statistics on the channel axis.

If the removed filters are zero (and the batch norms after them give 0 for 0), the pruned model
computes exactly what the original computes (``zero_pruned_channels`` makes such a model; the
tests use it).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfseg import models
from tfseg._keras import keras
from tfseg.errors import ConfigError
from tfseg.models.common import copy_weights
from tfseg.options import PRUNING_CRITERIA, PRUNING_SCOPES
from tfseg.prune.channels import ChannelGraph, analyse, model_node, node_inputs

layers = keras.layers


@dataclasses.dataclass
class FilterPruningPlan:
    """Which channels of each group survive.

    Attributes:
      graph: the channel analysis of the original model.
      keep: group id -> sorted indices of the kept channels (every group, pinned ones whole).
    """

    graph: ChannelGraph
    keep: dict

    def kept(self, layout) -> np.ndarray:
        """Kept channel indices of a tensor with this layout (segments at their offsets)."""
        parts, offset = [], 0
        for gid, size in layout:
            parts.append(self.keep[gid] + offset)
            offset += size
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    @property
    def removed_fraction(self) -> float:
        """Fraction of the prunable groups' channels removed."""
        prunable = [g for g in self.graph.groups.values() if g.prunable]
        total = sum(g.size for g in prunable)
        return 0.0 if not total else 1.0 - sum(len(self.keep[g.id]) for g in prunable) / total

    def unprunable(self) -> list[str]:
        """The groups left whole, with the layers producing them and why."""
        rows = []
        for group in self.graph.groups.values():
            if group.sources and group.pinned:
                rows.append(f"{', '.join(group.sources)} ({group.size} channels): {'; '.join(group.pinned)}")
        return rows


def is_residual(group) -> bool:
    """A group produced by several layers whose outputs are added (a residual chain)."""
    return len(group.sources) > 1


def filter_scores(model, graph: ChannelGraph, criterion: str = "l1", prune_residual: bool = True) -> dict:
    """Group id -> one importance score per channel, for every prunable group.

    A group produced by several convolutions (a residual chain) adds their scores, each divided by
    its own mean so that every producer counts alike. ``prune_residual=False`` leaves residual
    groups out (kept whole).
    """
    if criterion not in PRUNING_CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose one of {', '.join(PRUNING_CRITERIA)}")
    bn_after = _batch_norm_after(model)
    scores = {}
    for group in graph.groups.values():
        if not group.prunable or (is_residual(group) and not prune_residual):
            continue
        total = np.zeros(group.size)
        for name in group.sources:
            layer = model.get_layer(name)
            if criterion == "bn_gamma" and name in bn_after and bn_after[name].gamma is not None:
                s = np.abs(bn_after[name].gamma.numpy())
            else:
                s = _kernel_norms(layer, 2 if criterion == "l2" else 1)
            total += s / max(float(s.mean()), 1e-12)
        scores[group.id] = total
    return scores


def _kernel_norms(layer, order: int) -> np.ndarray:
    """Norm of each output filter of a producing layer's kernel."""
    if isinstance(layer, layers.SeparableConv2D):
        kernel = layer.pointwise_kernel.numpy()
    else:
        kernel = layer.kernel.numpy()
    out_axis = 2 if isinstance(layer, layers.Conv2DTranspose) else kernel.ndim - 1
    flat = np.moveaxis(kernel, out_axis, 0).reshape(kernel.shape[out_axis], -1)
    return np.abs(flat).sum(axis=1) if order == 1 else np.sqrt((flat**2).sum(axis=1))


def _batch_norm_after(model) -> dict:
    """Producer name -> the BatchNormalization that directly follows it (only consumer)."""
    following = {}
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            (source,) = node_inputs(model_node(model, layer))
            producer = source._keras_history.layer
            following[producer.name] = layer
    return following


def plan_filter_pruning(
    model, fraction: float, *, criterion: str = "l1", scope: str = "layer", min_channels: int = 1,
    prune_residual: bool = True, graph: ChannelGraph | None = None,
) -> FilterPruningPlan:
    """Chooses the filters to remove.

    Args:
      model: a flat functional model.
      fraction: share of each prunable group's channels to remove (``scope="layer"``), or of all
        prunable channels (``scope="global"``), in [0, 1).
      criterion: ``"l1"`` (Li et al.), ``"l2"`` or ``"bn_gamma"`` (network slimming's |gamma|).
      scope: ``"layer"`` or ``"global"``.
      min_channels: no group keeps fewer channels.
      prune_residual: False keeps the channels tied by residual additions whole and prunes only
        the layers inside the blocks, as Li et al. do for ResNets ("only the first layer of each
        residual block"); ``fraction`` then applies to the other groups.

    Returns:
      A :class:`FilterPruningPlan`; ``apply_plan(model, plan)`` builds the pruned model.

    Raises:
      ConfigError: bad fraction, criterion or scope.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"fraction of filters to remove must be in [0, 1), got {fraction}")
    if scope not in PRUNING_SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(PRUNING_SCOPES)}")
    graph = graph or analyse(model)
    scores = filter_scores(model, graph, criterion, prune_residual)
    keep = {gid: np.arange(group.size) for gid, group in graph.groups.items()}
    if scope == "layer":
        for gid, s in scores.items():
            n_keep = max(min_channels, s.size - int(np.floor(fraction * s.size)))
            keep[gid] = np.sort(np.argsort(-s, kind="stable")[:n_keep])
    else:
        # One ranking of all prunable channels (scores are normalised per group), respecting min_channels.
        entries = sorted((float(v), gid, i) for gid, s in scores.items() for i, v in enumerate(s))
        budget = int(np.floor(fraction * len(entries)))
        removed = {gid: set() for gid in scores}
        for _, gid, i in entries:
            if budget == 0:
                break
            if scores[gid].size - len(removed[gid]) > min_channels:
                removed[gid].add(i)
                budget -= 1
        for gid, s in scores.items():
            keep[gid] = np.array(sorted(set(range(s.size)) - removed[gid]), dtype=np.int64)
    return FilterPruningPlan(graph, keep)


def _slice_weights(layer, weights, in_idx, out_idx):
    """The layer's weights restricted to the kept input (in_idx) and output (out_idx) channels."""
    if isinstance(layer, layers.Conv2DTranspose):  # kernel (h, w, out, in)
        kernel = weights[0][:, :, out_idx, :][:, :, :, in_idx]
        return [kernel] + [b[out_idx] for b in weights[1:]]
    if isinstance(layer, layers.SeparableConv2D):  # depthwise (h, w, in, 1), pointwise (1, 1, in, out)
        depthwise = weights[0][:, :, in_idx, :]
        pointwise = weights[1][:, :, in_idx, :][..., out_idx]
        return [depthwise, pointwise] + [b[out_idx] for b in weights[2:]]
    if isinstance(layer, (layers.Conv2D, layers.Dense)) and not isinstance(layer, layers.DepthwiseConv2D):
        kernel = weights[0][..., in_idx, :][..., out_idx]
        return [kernel] + [b[out_idx] for b in weights[1:]]
    if isinstance(layer, layers.DepthwiseConv2D):  # kernel (h, w, in, 1)
        return [weights[0][:, :, in_idx, :]] + [b[in_idx] for b in weights[1:]]
    if isinstance(layer, (layers.BatchNormalization, layers.PReLU)):
        return [w[..., in_idx] for w in weights]
    if weights:
        raise ConfigError(f"filter pruning does not know how to slice the weights of {layer.name!r} ({type(layer).__name__})")
    return weights


def apply_plan(model, plan: FilterPruningPlan):
    """Builds the pruned model: same layers and names, fewer channels, the kept weights.

    Raises:
      ConfigError: a layer whose weights cannot be sliced (it should have been pinned).
    """
    graph = plan.graph
    tensors = {}  # id(original tensor) -> new tensor
    for layer in model.layers:
        if isinstance(layer, layers.InputLayer):
            new_input = keras.Input(batch_shape=layer.output.shape, dtype=layer.dtype, name=layer.name)
            tensors[id(layer.output)] = new_input
            continue
        node = model_node(model, layer)
        ins = node_inputs(node)
        out_layout = graph.output_layouts[layer.name]
        in_layouts = graph.input_layouts[layer.name]
        config = layer.get_config()
        out_idx = plan.kept(out_layout)
        if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose, layers.SeparableConv2D)) and not isinstance(
            layer, layers.DepthwiseConv2D
        ):
            config["filters"] = len(out_idx)
        elif isinstance(layer, layers.Dense):
            config["units"] = len(out_idx)
        new_layer = type(layer).from_config(config)
        args = [tensors[id(t)] for t in ins]
        kwargs = dict(getattr(node, "call_kwargs", {}) or {})
        output = new_layer(args if len(args) > 1 else args[0], **kwargs)
        outputs = node.output_tensors
        outputs = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        tensors[id(outputs)] = output
        weights = layer.get_weights()
        if weights:
            in_idx = plan.kept(in_layouts[0]) if in_layouts else None
            new_layer.set_weights(_slice_weights(layer, weights, in_idx, out_idx))
    inputs = [tensors[id(t)] for t in model.inputs]
    outputs = [tensors[id(t)] for t in model.outputs]
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0],
                       name=model.name)


def prune_filters(model, fraction: float, *, criterion: str = "l1", scope: str = "layer", min_channels: int = 1,
                  prune_residual: bool = True):
    """Removes ``fraction`` of the filters by ``criterion`` and returns ``(smaller model, plan)``.

    Example:
      >>> pruned, plan = prune_filters(model, 0.5)           # half the filters of every prunable layer
      >>> print(plan.removed_fraction, pruned.count_params(), plan.unprunable())
    """
    plan = plan_filter_pruning(model, fraction, criterion=criterion, scope=scope, min_channels=min_channels,
                               prune_residual=prune_residual)
    return apply_plan(model, plan), plan


def zero_pruned_channels(model, plan: FilterPruningPlan):
    """Zeroes, in place, what a plan removes, so that removed channels carry exactly 0.

    Producing kernels and biases are zeroed on the removed filters; on removed channels, batch
    norms get beta = 0 and moving mean = 0 (so that BN(0) = 0) and depthwise biases 0. With ReLU
    family activations the model then computes what ``apply_plan(model, plan)`` computes, which
    is what the tests check.
    """
    graph = plan.graph

    def removed(layout):
        total = sum(size for _, size in layout)
        return np.setdiff1d(np.arange(total), plan.kept(layout))

    for layer in model.layers:
        weights = layer.get_weights()
        if not weights or layer.name not in graph.input_layouts:
            continue
        if isinstance(layer, layers.DepthwiseConv2D) or isinstance(layer, layers.BatchNormalization):
            gone = removed(graph.input_layouts[layer.name][0])
            if isinstance(layer, layers.BatchNormalization):
                for variable in layer.weights:
                    if variable.name.split("/")[-1].split(":")[0] in ("beta", "moving_mean"):
                        values = variable.numpy()
                        values[gone] = 0
                        variable.assign(values)
                continue
            if layer.use_bias:
                weights[-1][gone] = 0
        elif isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose, layers.Dense, layers.SeparableConv2D)):
            gone = removed(graph.output_layouts[layer.name])
            if isinstance(layer, layers.Conv2DTranspose):
                weights[0][:, :, gone, :] = 0
            else:
                weights[-2 if layer.use_bias else -1][..., gone] = 0
            if layer.use_bias:
                weights[-1][gone] = 0
        else:
            continue
        layer.set_weights(weights)


def rebuild_pruned(name: str, pruned, input_shape, **options):
    """A filter-pruned zoo model rebuilt at another input size, with its weights.

    ``tfseg.models.rebuild`` re-runs the builder, which makes the full-width network; here the
    full network at ``input_shape`` is narrowed to the pruned model's channel counts (read from
    its producing layers) before the weights are copied by layer name.

    Args:
      name: the zoo name the unpruned model was built with.
      pruned: the pruned model (from ``apply_plan`` / ``prune_filters``).
      input_shape: the new (height, width, 3).
      **options: the builder options of the unpruned model.

    Raises:
      ValueError: the pruned model does not come from ``name`` with these options.
    """
    options = {k: v for k, v in options.items() if k != "weights"}
    full = models.build(name, tuple(input_shape), pruned.output_shape[-1], **options)
    graph = analyse(full)
    keep = {}
    for gid, group in graph.groups.items():
        size = group.size
        if group.sources:
            layer = pruned.get_layer(group.sources[0])
            size = layer.units if isinstance(layer, layers.Dense) else layer.filters
        keep[gid] = np.arange(size)
    narrowed = apply_plan(full, FilterPruningPlan(graph, keep))
    copy_weights(pruned, narrowed)
    return narrowed
