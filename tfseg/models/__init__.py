"""The model zoo: a name -> builder table over plain builder functions.

Segmentation models are flat functional tf_keras graphs taking float32 [0, 255] RGB images and
returning (H, W, num_classes) logits at input resolution, with stable explicit layer names and
named endpoints (``endpoints(model)``). Classification models (for the classification
distillation experiment) return (N, num_classes) logits.

Each builder stays directly callable (``build_unet(...)``); ``build(name, ...)`` adds the
registered defaults of a name.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

from tfseg.errors import ConfigError
from tfseg.models.classification import build_cnn5, build_resnet18_cifar
from tfseg.models.common import ENDPOINT_NAMES, copy_weights, endpoints, with_input_shape
from tfseg.models.deeplab import build_deeplabv3
from tfseg.models.fcn_resnet import build_fcn_resnet
from tfseg.models.fcn_vgg import build_fcn_vgg16
from tfseg.models.googlenet import build_googlenet_fcn
from tfseg.models.lite import build_fastseg_tiny, build_mobilenet_v2_deeplabv3plus, build_mobilenet_v2_lraspp
from tfseg.models.profiling import format_profile, layer_table, profile
from tfseg.models.searched import build_searched_net
from tfseg.models.unet import build_unet

SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    builder: Callable
    defaults: dict
    task: str = SEGMENTATION


_REGISTRY: dict[str, ModelEntry] = {
    "unet": ModelEntry(build_unet, {}),
    "unet_small": ModelEntry(build_unet, {"depth": 3, "width": 16}),
    "fcn32s_vgg16": ModelEntry(build_fcn_vgg16, {"variant": "32s"}),
    "fcn16s_vgg16": ModelEntry(build_fcn_vgg16, {"variant": "16s"}),
    "fcn8s_vgg16": ModelEntry(build_fcn_vgg16, {"variant": "8s"}),
    "googlenet_fcn8s": ModelEntry(build_googlenet_fcn, {"variant": "8s"}),
    "fcn_resnet18": ModelEntry(build_fcn_resnet, {"depth": 18}),
    "fcn_resnet50": ModelEntry(build_fcn_resnet, {"depth": 50}),
    "fcn_resnet101": ModelEntry(build_fcn_resnet, {"depth": 101}),
    "deeplabv3_resnet18": ModelEntry(build_deeplabv3, {"backbone": "resnet18"}),
    "deeplabv3_resnet50": ModelEntry(build_deeplabv3, {"backbone": "resnet50"}),
    "deeplabv3_resnet101": ModelEntry(build_deeplabv3, {"backbone": "resnet101"}),
    "deeplabv3_mobilenet_v2": ModelEntry(build_deeplabv3, {"backbone": "mobilenet_v2"}),
    "mobilenet_v2_lraspp": ModelEntry(build_mobilenet_v2_lraspp, {}),
    "mobilenet_v2_fcn": ModelEntry(build_mobilenet_v2_lraspp, {"head": "fcn"}),
    "mobilenet_v2_deeplabv3plus": ModelEntry(build_mobilenet_v2_deeplabv3plus, {}),
    "fastseg_tiny": ModelEntry(build_fastseg_tiny, {}),
    "searched": ModelEntry(build_searched_net, {}),
    "resnet18_cifar": ModelEntry(build_resnet18_cifar, {}, CLASSIFICATION),
    "cnn5": ModelEntry(build_cnn5, {}, CLASSIFICATION),
}


class ModelOptionError(ConfigError, TypeError):
    """An option the model's builder does not take: a ConfigError (bad input, reported in one line by
    the ``tfseg`` command) that is still the TypeError that calling the builder would raise."""


def available(task: str | None = None) -> list[str]:
    """Names accepted by ``build``; ``task`` ("segmentation" or "classification") filters them."""
    return sorted(name for name, entry in _REGISTRY.items() if task is None or entry.task == task)


def task_of(name: str) -> str:
    """``"segmentation"`` or ``"classification"``."""
    return _entry(name).task


def _entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name]


def build(name: str, input_shape, num_classes: int, **options):
    """Builds the model registered as ``name``.

    Args:
      name: one of ``available()``.
      input_shape: (height, width, 3).
      num_classes: output channels.
      **options: builder options (e.g. ``depth``, ``width`` for U-Net, ``fc_width`` for FCN-VGG,
        ``weights`` for a local pretrained-weights file); they override the registered defaults.

    Raises:
      ConfigError: unknown name (the message lists the known ones; a ConfigError is a ValueError).
      ModelOptionError: an option the builder does not take (a ConfigError and a TypeError).
      ConfigError: a value the builder refuses (its ValueError, prefixed with the model's name).
    """
    entry = _entry(name)
    options = {**entry.defaults, **options}
    accepted = inspect.signature(entry.builder).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            known = ", ".join(p for p in accepted if p not in ("input_shape", "num_classes"))
            raise ModelOptionError(f"model {name!r} got an unexpected keyword argument {unknown[0]!r}; "
                                   f"its options are {known}")
    try:
        return entry.builder(input_shape=tuple(input_shape), num_classes=num_classes, **options)
    except ConfigError:
        raise
    except ValueError as error:  # a bad option value or weights file: the user's input, named in one line
        raise ConfigError(f"model {name!r}: {error}") from error


def rebuild(name: str, model, input_shape, **options):
    """Builds ``name`` again at another input size and copies ``model``'s weights into it.

    Needed because some layers depend on the input size (DeepLabV3's image pooling, the padding to
    the network stride): train at the crop size, evaluate or export at the full size.

    Args:
      name: the registry name ``model`` was built with.
      model: the trained model.
      input_shape: the new (height, width, 3).
      **options: the builder options ``model`` was built with (besides the registered defaults).

    Raises:
      ValueError: the layers of the rebuilt model differ (other builder options), naming them.
    """
    entry = _entry(name)
    options = {**entry.defaults, **options}
    options.pop("weights", None)
    return with_input_shape(model, tuple(input_shape), entry.builder, **options)


__all__ = [
    "CLASSIFICATION",
    "ENDPOINT_NAMES",
    "SEGMENTATION",
    "available",
    "build",
    "build_cnn5",
    "build_deeplabv3",
    "build_fastseg_tiny",
    "build_fcn_resnet",
    "build_fcn_vgg16",
    "build_googlenet_fcn",
    "build_mobilenet_v2_deeplabv3plus",
    "build_mobilenet_v2_lraspp",
    "build_resnet18_cifar",
    "build_searched_net",
    "build_unet",
    "copy_weights",
    "endpoints",
    "format_profile",
    "layer_table",
    "profile",
    "rebuild",
    "task_of",
    "with_input_shape",
]
