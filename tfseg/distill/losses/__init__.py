"""Distillation losses: plain serializable callables ``loss(teacher, student, labels) -> (B,)``.

Each loss says which endpoints it taps (``teacher_endpoint``, ``student_endpoint``), whether the
student needs a channel adapter (``needs_same_channels``), whether it already contains the
ground-truth term (``replaces_student_loss``) and whether it needs spatial maps
(``spatial_only``); see :class:`DistillationLoss`. One module per loss family:

* :class:`PixelKD` (``pixel_kd``): Hinton et al. 2015, per pixel, with the ground-truth CE.
* :class:`PairwiseKD` (``pairwise_kd``): Liu et al., CVPR 2019, pair-wise affinity matching.
* :class:`CSCLoss` (``csc``): Park & Heo, Sensors 2020, channel and spatial correlation.
* :class:`AdaptiveCrossEntropy` (``ace``): Park & Heo, Sensors 2020, adaptive cross entropy.
* :class:`ChannelWiseKD` (``cwd``): Shu et al., ICCV 2021, channel-wise distillation.
"""

from tfseg.distill.losses.ace import AdaptiveCrossEntropy
from tfseg.distill.losses.base import DistillationLoss, resize_labels_nearest, valid_mask
from tfseg.distill.losses.csc import CSCLoss
from tfseg.distill.losses.cwd import ChannelWiseKD
from tfseg.distill.losses.pairwise import PairwiseKD
from tfseg.distill.losses.pixel_kd import PixelKD
from tfseg.distill.losses.registry import LOSSES, make_distillation_loss

__all__ = [
    "LOSSES",
    "make_distillation_loss",
    "DistillationLoss",
    "PixelKD",
    "PairwiseKD",
    "CSCLoss",
    "AdaptiveCrossEntropy",
    "ChannelWiseKD",
    "resize_labels_nearest",
    "valid_mask",
]
