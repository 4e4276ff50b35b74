"""Options written as text, and the names every option may take, shared by the ``tfseg`` command,
the recipes and the library.

    size("360x480") -> (360, 480)            size("96") -> (96, 96)
    option_value("0.5") -> 0.5               option_value("288x384") -> (288, 384)
    loss_spec("pixel_kd:temperature=1,alpha=0.5") -> {"loss": "pixel_kd", "temperature": 1, "alpha": 0.5}
    variant_specs("pixel_kd:alpha=0.5+cwd") -> [{"loss": "pixel_kd", "alpha": 0.5}, {"loss": "cwd"}]

The name tables are the ones the library checks its arguments against, so that a command-line
``choices=`` and the function behind it cannot drift apart (tests/test_options.py builds or
converts every name). This module imports no TensorFlow: the command reads it at start-up.
"""

from __future__ import annotations

import argparse
import re

from tfseg.errors import ConfigError

# Ground-truth losses (tfseg.train.make_loss).
GROUND_TRUTH_LOSSES = ("ce", "dice", "ce+dice")
# Optimizers and learning-rate schedules (tfseg.train.make_optimizer, make_schedule).
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "poly", "cosine")
# TFLite quantizations (tfseg.export.to_tflite), as the tfseg/1 metadata records them; "none" is float32.
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
# Other spellings of "none" that to_tflite also takes: tfseg.tflite.to_tflite_bytes calls it None,
# and model profiles call the float file "float32".
FLOAT_QUANTIZATION_ALIASES = (None, "float32")
# Post-training quantization (tfseg.export.post_training_quantize): every one that quantizes.
PTQ_MODES = tuple(name for name in QUANTIZATIONS if name != "none")
# Input/output tensor types of an int8 TFLite model (to_tflite's io_dtype; float models take float32).
IO_DTYPES = ("uint8", "int8", "float32")
EXPORT_FORMATS = ("tflite", "saved_model")
# What a TFLite export outputs (tfseg.output_tail): logits at the input size, logits at the model's
# own stride (before its final upsampling), or class ids at that stride (argmax in the graph).
EXPORT_OUTPUTS = ("logits", "low_res_logits", "class_map")
# `tfseg benchmark`: a TFLite file per format (float32 is the quantization "none").
BENCHMARK_FORMATS = ("float32", "float16", "dynamic", "int8")
# int8 diagnosis (tfseg.quantize.diagnose): how operators are ranked; the first is the default.
DIAGNOSIS_METRICS = ("rmse_scale", "relative_rmse")
# Filter pruning (tfseg.prune.filters.plan_filter_pruning): how filters are scored, and ranked
# per layer or across the model.
PRUNING_CRITERIA = ("l1", "l2", "bn_gamma")
PRUNING_SCOPES = ("layer", "global")
# Distillation losses: the keys of tfseg.distill.losses.LOSSES, which holds their classes (and
# imports TensorFlow); a test keeps the two equal.
DISTILLATION_LOSSES = ("pixel_kd", "pairwise_kd", "csc", "ace", "cwd")
# Distribution strategies of the training stages (tfseg.distribute.strategy).
DISTRIBUTE_MODES = ("none", "mirrored", "multi_worker")


def size(text: str) -> tuple[int, int]:
    """'96' -> (96, 96); '360x480' -> (360, 480). An argparse ``type``."""
    parts = text.lower().split("x")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"size must be N or HxW (e.g. 360x480), got {text!r}")
    return values


def augment_options(value):
    """A config's ``augment``: Augment options, ``{}`` for the defaults, ``None`` for none; chain files
    may say ``true`` / ``false`` (TOML has no null)."""
    if isinstance(value, bool):
        return {} if value else None
    return value


def option_value(text: str):
    """A KEY=VALUE option's value: int, float, HxW size, a ``[a,b,...]`` list of these, or the text itself."""
    if text.startswith("[") and text.endswith("]"):
        return [option_value(item.strip()) for item in text[1:-1].split(",") if item.strip()]
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"\d+x\d+", text):
        return size(text)
    try:
        return float(text)
    except ValueError:
        return text


def loss_spec(text: str) -> dict:
    """'NAME' or 'NAME:KEY=VALUE,KEY=VALUE' -> {"loss": NAME, KEY: value, ...}."""
    name, _, options = text.partition(":")
    spec = {"loss": name.strip()}
    for item in filter(None, options.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"loss options are KEY=VALUE, got {item!r} in {text!r}")
        spec[key.strip()] = option_value(value.strip())
    return spec


def variant_specs(text: str) -> list[dict]:
    """Losses trained together, joined by '+' (each a ``loss_spec``); 'scratch' is none."""
    text = text.strip()
    if text == "scratch":
        return []
    specs = [loss_spec(part) for part in text.split("+")]
    for spec in specs:
        if "," in spec["loss"]:
            raise ConfigError(f"{spec['loss']!r} is not one loss: give variants as separate arguments "
                              "(pixel_kd cwd), losses trained together joined by '+' (pixel_kd+cwd)")
    return specs
