"""Pruning: L1-norm filter pruning that rebuilds smaller models, and TF-MOT magnitude pruning."""

from tfseg.prune.channels import ChannelGroup, ChannelGraph, analyse
from tfseg.prune.filters import (
    FilterPruningPlan,
    apply_plan,
    filter_scores,
    plan_filter_pruning,
    prune_filters,
    rebuild_pruned,
    zero_pruned_channels,
)
from tfseg.prune.iterative import PruningRound, prune_filters_iteratively
from tfseg.prune.magnitude import (
    format_sparsity,
    prune_magnitude,
    pruning_callbacks,
    pruning_schedule,
    sparsity_report,
    strip,
)

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "FilterPruningPlan",
    "PruningRound",
    "analyse",
    "apply_plan",
    "filter_scores",
    "format_sparsity",
    "plan_filter_pruning",
    "prune_filters",
    "prune_filters_iteratively",
    "prune_magnitude",
    "pruning_callbacks",
    "pruning_schedule",
    "rebuild_pruned",
    "sparsity_report",
    "strip",
    "zero_pruned_channels",
]
