"""Options written as text, shared by the ``tfseg`` command and the recipes.

    size("360x480") -> (360, 480)            size("96") -> (96, 96)
    option_value("0.5") -> 0.5               option_value("288x384") -> (288, 384)
    loss_spec("pixel_kd:temperature=1,alpha=0.5") -> {"loss": "pixel_kd", "temperature": 1, "alpha": 0.5}
    variant_specs("pixel_kd:alpha=0.5+cwd") -> [{"loss": "pixel_kd", "alpha": 0.5}, {"loss": "cwd"}]
"""

from __future__ import annotations

import argparse
import re

from tfseg.errors import ConfigError


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


def option_value(text: str):
    """A KEY=VALUE option's value: int, float, HxW size, or the text itself."""
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
