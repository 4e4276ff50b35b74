import json

import numpy as np
import pytest

from tfseg import models
from tfseg._keras import keras
from tfseg.checkpoint import BestModelCheckpoint, atomic_write, save_model


def test_failed_write_leaves_the_previous_file_intact(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("previous good file")

    def crash(tmp):
        with open(tmp, "w") as f:
            f.write("half writ")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, crash)
    assert target.read_text() == "previous good file"
    assert [p.name for p in tmp_path.iterdir()] == ["model.keras"]  # no temp file left behind


def test_saved_model_round_trips(tmp_path):
    model = models.build_unet((16, 16, 3), num_classes=3, depth=1, width=2)
    save_model(model, tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(model(x).numpy(), loaded(x).numpy(), atol=1e-6)


def test_best_checkpoint_keeps_best_across_a_restart(tmp_path):
    model = models.build_unet((16, 16, 3), num_classes=2, depth=1, width=2)
    cb = BestModelCheckpoint(tmp_path / "best.keras", monitor="val_miou")
    cb.set_model(model)
    cb.on_epoch_end(0, {"val_miou": 0.5})
    cb.on_epoch_end(1, {"val_miou": 0.4})
    assert json.loads((tmp_path / "best.keras.json").read_text())["epoch"] == 1
    first_mtime = (tmp_path / "best.keras").stat().st_mtime_ns
    # a resumed run starts a new callback: it must not overwrite the better model with a worse one
    resumed = BestModelCheckpoint(tmp_path / "best.keras", monitor="val_miou")
    resumed.set_model(model)
    resumed.on_epoch_end(2, {"val_miou": 0.45})
    assert (tmp_path / "best.keras").stat().st_mtime_ns == first_mtime
    resumed.on_epoch_end(3, {"val_miou": 0.6})
    assert json.loads((tmp_path / "best.keras.json").read_text()) == {"best": 0.6, "epoch": 4, "monitor": "val_miou"}


def test_best_checkpoint_names_a_missing_metric(tmp_path):
    cb = BestModelCheckpoint(tmp_path / "best.keras", monitor="val_miou")
    with pytest.raises(KeyError, match="val_miou.*'loss'"):
        cb.on_epoch_end(0, {"loss": 1.0})
