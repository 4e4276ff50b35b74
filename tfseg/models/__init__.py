"""The model zoo: a name -> builder table over plain builder functions.

Every model is a flat functional tf_keras graph taking float32 [0, 255] RGB images and returning
(H, W, num_classes) logits at input resolution, with stable explicit layer names.
"""

from __future__ import annotations

from typing import Callable

from tfseg.models.common import ENDPOINT_NAMES, endpoints
from tfseg.models.unet import build_unet

# name -> (builder, fixed options). Each builder stays directly callable.
_BUILDERS: dict[str, tuple[Callable, dict]] = {
    "unet": (build_unet, {}),
    "unet_small": (build_unet, {"depth": 3, "width": 16}),
}


def available() -> list[str]:
    """Names accepted by ``build``."""
    return sorted(_BUILDERS)


def build(name: str, input_shape, num_classes: int, **options):
    """Builds the model registered as ``name``.

    Args:
      name: one of ``available()``.
      input_shape: (height, width, 3).
      num_classes: output channels.
      **options: builder options (e.g. ``depth``, ``width`` for U-Net); they override the
        registered defaults.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(available())}")
    builder, defaults = _BUILDERS[name]
    return builder(input_shape=tuple(input_shape), num_classes=num_classes, **{**defaults, **options})


__all__ = ["ENDPOINT_NAMES", "available", "build", "build_unet", "endpoints"]
