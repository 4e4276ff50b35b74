"""Iterative filter pruning of a run: rounds to the target, figures per round, a loadable pruned run."""

import json

import numpy as np
import pytest

from tfseg.cli import main
from tfseg.prune.iterative import round_targets


def test_round_targets():
    assert round_targets(0.25, 0.75) == [0.25, 0.5, 0.75]
    assert np.allclose(round_targets(0.2, 0.5), [0.2, 0.4, 0.5])
    with pytest.raises(ValueError, match="step"):
        round_targets(0.8, 0.5)


def test_prune_command_rounds_to_target_and_writes_a_loadable_run(tmp_path, capsys):
    from tfseg.pipeline.train import TrainConfig, run, start
    from tfseg.runs import Run

    source = tmp_path / "run"
    # DeepLabV3 has a fixed input size: scoring at the evaluation size needs rebuild_pruned.
    run(TrainConfig(out_dir=str(source), model="deeplabv3_mobilenet_v2",
                          model_options={"alpha": 0.35, "aspp_filters": 16},
                          data_options={"num_images": 8, "image_size": (32, 32)},
                          crop_size=(32, 32), eval_size=(48, 64), batch_size=8, epochs=1, augment=None), verbose=0)
    out = tmp_path / "pruned"
    assert main(["prune", str(source), "--out", str(out), "--step", "0.25", "--target", "0.5",
                 "--fine-tune-epochs", "1", "--distill"]) == 0
    rows = json.loads((out / "rounds.json").read_text())
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[0]["removed"] == 0 and abs(rows[-1]["removed"] - 0.5) < 0.03
    assert rows[-1]["params"] < 0.5 * rows[0]["params"] and rows[-1]["gmacs"] < rows[0]["gmacs"]
    assert all(0 <= row["val_miou"] <= 1 and row["latency_ms_1t"] > 0 for row in rows)
    assert (out / "pruning.png").stat().st_size > 0 and (out / "round_02.keras").exists()
    assert "val_miou" in capsys.readouterr().out

    pruned_run = Run.open(out)
    pruned, info = pruned_run.model(size=(48, 64)), pruned_run.info
    # A fresh record: the source's lineage, not its timings or folder.
    assert pruned_run.stage == "prune" and pruned_run.record["out_dir"] == str(out)
    assert "train_seconds" not in pruned_run.record and pruned_run.record["source"] == str(source)
    assert pruned.output_shape == (None, 48, 64, info.num_classes)
    assert pruned.count_params() == rows[-1]["params"]
    assert main(["evaluate", str(out), "--split", "test", "--overlays", "0"]) == 0

    # Recovery: a new run that starts from the pruned weights keeps the narrowed architecture.
    data = ["--data-option", "num_images=8", "--data-option", "image_size=32x32"]
    recovered = tmp_path / "recovered"
    assert main(["train", "--init-from", str(out), "--crop-size", "32", "--eval-size", "48x64", "--epochs", "1",
                 "--no-augment", "--out", str(recovered), *data]) == 0
    record = json.loads((recovered / "run.json").read_text())
    assert record["filter_pruned"] and record["init_from"] == str(out) and record["num_params"] == rows[-1]["params"]
    model = Run.open(recovered).model(size=(48, 64))
    assert model.count_params() == rows[-1]["params"]
    _, first = start(TrainConfig(model=record["model"], model_options=record["model_options"], crop_size=(32, 32),
                                 data_options={"num_images": 8, "image_size": (32, 32)}, init_from=str(out)), "train")
    for got, want in zip(first.get_weights(), pruned_run.model(size=(32, 32)).get_weights()):
        np.testing.assert_array_equal(got, want)  # the pruned weights, not a fresh initialisation
    assert main(["train", "--init-from", str(out), "--model", "unet_small", "--crop-size", "32", "--epochs", "1",
                 "--out", str(tmp_path / "wrong"), *data]) == 2
    assert "holds a 'deeplabv3_mobilenet_v2' model" in capsys.readouterr().err


def test_each_round_re_estimates_batch_norm_statistics_on_the_training_batches():
    from tfseg import models
    from tfseg._keras import keras, tf
    from tfseg.batchnorm import batch_norm_layers, reestimate_batch_norm
    from tfseg.prune.iterative import prune_filters_iteratively

    keras.utils.set_random_seed(0)
    model = models.build("fastseg_tiny", (32, 32, 3), 3)
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices((rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32"),
                                               np.zeros((8, 32, 32, 1), "int32"))).batch(4)
    common = dict(step=0.5, target=0.5, fine_tune_epochs=0, compile_model=lambda m: None, score=lambda m: {})
    stale, _ = prune_filters_iteratively(model, data, bn_batches=0, **common)
    fresh, _ = prune_filters_iteratively(model, data, bn_batches=2, **common)
    def stats(m):
        return {layer.name: layer.moving_mean.numpy() for layer in batch_norm_layers(m)}

    assert any(not np.allclose(stats(stale)[name], value) for name, value in stats(fresh).items())
    reestimate_batch_norm(stale, data, 2)
    for name, value in stats(fresh).items():
        np.testing.assert_allclose(stats(stale)[name], value, rtol=1e-5, atol=1e-6)
