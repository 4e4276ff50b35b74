"""The distillation losses by name, for the command line, recipes and run records.

    make_distillation_loss("pixel_kd")                         -> PixelKD()
    make_distillation_loss({"loss": "cwd", "temperature": 2})  -> ChannelWiseKD(temperature=2)
"""

from __future__ import annotations

import inspect

from tfseg.distill.losses.ace import AdaptiveCrossEntropy
from tfseg.distill.losses.base import DistillationLoss
from tfseg.distill.losses.csc import CSCLoss
from tfseg.distill.losses.cwd import ChannelWiseKD
from tfseg.distill.losses.pairwise import PairwiseKD
from tfseg.distill.losses.pixel_kd import PixelKD
from tfseg.errors import ConfigError

LOSSES = {
    "pixel_kd": PixelKD,
    "pairwise_kd": PairwiseKD,
    "csc": CSCLoss,
    "ace": AdaptiveCrossEntropy,
    "cwd": ChannelWiseKD,
}


def make_distillation_loss(spec, class_weights=None, logit_offset=None):
    """A distillation loss from a name (``"pixel_kd"``) or a dict (``{"loss": "cwd", "temperature": 2}``).

    ``class_weights`` (the run's) go to losses with a ground-truth term that take them (PixelKD),
    unless the spec sets its own, so that a distilled student and its baseline weigh classes alike.
    So does ``logit_offset``, the calibration folded into a student started from a calibrated run
    (``tfseg.calibrate.folded_logit_offset``), which that term must not train away.

    Raises:
      ConfigError: unknown loss name or option, naming it and the choices.
    """
    if isinstance(spec, DistillationLoss):
        return spec
    options = {"loss": spec} if isinstance(spec, str) else dict(spec)
    kind = options.pop("loss", None)
    if kind not in LOSSES:
        raise ConfigError(f"unknown distillation loss {kind!r}; choose from {', '.join(LOSSES)}")
    accepted = inspect.signature(LOSSES[kind]).parameters
    for key, value in (("class_weights", class_weights), ("logit_offset", logit_offset)):
        if value is not None and key in accepted:
            options.setdefault(key, value)
    try:
        return LOSSES[kind](**options)
    except TypeError as error:
        raise ConfigError(f"bad options for distillation loss {kind!r} {options}: {error}") from None
