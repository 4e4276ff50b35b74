"""Writing model files so that a crash or a kill never leaves one half-written."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from tfseg._keras import keras


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; read once, at import
    os.umask(mask)
    return mask


# The permissions open() / mkdir() would give: mkstemp and mkdtemp create owner-only entries.
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Calls ``write(tmp_path)`` on a temporary file beside ``path``, then renames it over ``path``.

    The temporary name keeps the suffix, because Keras picks the save format from it. ``os.replace``
    is atomic on one filesystem, so readers see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates the file owner-only (0600); give it what a plain open() would.
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def deployable(model):
    """The model worth saving: a training wrapper's inner model (``Distiller.student``) or ``model``."""
    return getattr(model, "deployable_model", model)


def save_model(model, path: str | os.PathLike) -> Path:
    """Saves a model atomically, in the format its suffix names (``.keras`` or ``.h5``).

    A training wrapper (``tfseg.Distiller``) saves the model it trains (its ``deployable_model``).
    """
    model = deployable(model)
    # The .keras format refuses include_optimizer; for .h5 the optimizer state is not worth its size.
    options = {"include_optimizer": False} if str(path).endswith(".h5") else {}
    return atomic_write(path, lambda tmp: model.save(tmp, **options))


def write_json(path: str | os.PathLike, data) -> Path:
    """Writes JSON atomically."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=_json_default)
            f.write("\n")

    return atomic_write(path, write)


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class BestModelCheckpoint(keras.callbacks.Callback):
    """Keeps the best model by a monitored metric, saved atomically, and survives a resume.

    Unlike Keras' ModelCheckpoint, the best value is stored beside the model (``<path>.json``), so
    that a run resumed by BackupAndRestore does not overwrite a better model from before the kill.

    Args:
      path: model file (``.keras`` or ``.h5``).
      monitor: a log key, e.g. ``"val_miou"``.
      mode: ``"max"`` or ``"min"``.
      write_path: where this process saves instead of ``path`` (a non-chief worker of a
        multi-worker run: ``tfseg.distribute.write_dir``). The best value is still read from
        ``path``'s, so that every worker of a resumed run saves at the same epochs (saving reads
        the weights, which can need all workers).
    """

    def __init__(self, path, monitor: str = "val_miou", mode: str = "max", write_path=None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.path = Path(path)
        self.write_path = Path(write_path or path)
        self.monitor = monitor
        self.mode = mode
        self.state_path = self.path.with_name(self.path.name + ".json")
        self.best = -math.inf if mode == "max" else math.inf
        if self.state_path.exists():
            self.best = json.loads(self.state_path.read_text())["best"]

    def _improved(self, value: float) -> bool:
        return value > self.best if self.mode == "max" else value < self.best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            raise KeyError(
                f"BestModelCheckpoint monitors {self.monitor!r}, but the logs only have "
                f"{sorted(logs)}; pass validation data or monitor another key"
            )
        value = float(logs[self.monitor])
        if self._improved(value):
            self.best = value
            save_model(self.model, self.write_path)
            write_json(self.write_path.with_name(self.write_path.name + ".json"),
                       {"best": value, "epoch": epoch + 1, "monitor": self.monitor})
