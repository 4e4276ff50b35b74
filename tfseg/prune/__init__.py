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

__all__ = [
    "ChannelGraph",
    "ChannelGroup",
    "FilterPruningPlan",
    "analyse",
    "apply_plan",
    "filter_scores",
    "plan_filter_pruning",
    "prune_filters",
    "rebuild_pruned",
    "zero_pruned_channels",
]
