"""Distillation losses: plain serializable callables ``loss(teacher, student, labels) -> (B,)``.

Each loss says which endpoints it taps (``teacher_endpoint``, ``student_endpoint``) and answers
the Distiller's questions through hooks: ``validate(teacher, student)`` (can it compare these
models?), ``adapter(...)`` (what layer the student's tap needs, if any) and
``default_student_loss_weight()`` (does it already contain the ground-truth term?); see
:class:`DistillationLoss`. One module per loss family:

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
