import csv
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tfseg import data, models
from tfseg.errors import ConfigError
from tfseg.evaluate import evaluate
from tfseg.train import compile_for_segmentation, make_optimizer, make_schedule

RUN_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from tfseg import data, models
    from tfseg._keras import keras
    from tfseg.train import compile_for_segmentation, fit, make_optimizer

    out, kill_after = sys.argv[1], int(sys.argv[2])
    keras.utils.set_random_seed(0)
    split = data.scenes("train", num_images=16, image_size=(32, 32))
    batches = data.train_pipeline(split, (32, 32), 8, augment=None, shuffle=False)
    model = models.build_unet((None, None, 3), split.info.num_classes, depth=2, width=4)
    compile_for_segmentation(model, split.info.num_classes,
                             optimizer=make_optimizer("adam", 1e-3, "poly", total_steps=8))

    class KillAndRecord(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            with open(os.path.join(out, "started.txt"), "a") as f:
                f.write(f"{epoch}\\n")

        def on_epoch_end(self, epoch, logs=None):
            if epoch == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # no clean-up at all, like an OOM kill

    os.makedirs(out, exist_ok=True)
    fit(model, batches, batches, out, epochs=4, callbacks=[KillAndRecord()], verbose=0, tensorboard=False)
    """
)


def test_killed_run_resumes_after_its_last_finished_epoch(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT)
    killed = subprocess.run([sys.executable, str(script), str(out), "1"], capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "backup").is_dir() and (out / "best.keras").exists()
    assert not (out / "last.keras").exists()
    clock = json.loads((out / "train_time.json").read_text())
    assert clock["epochs"] == 2 and clock["seconds"] > 0

    resumed = subprocess.run([sys.executable, str(script), str(out), "-1"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (out / "started.txt").read_text().split() == ["0", "1", "2", "3"]  # 2 and 3 only after the resume
    with open(out / "log.csv", newline="") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == [0, 1, 2, 3]
    assert (out / "last.keras").exists() and (out / "curves.png").exists()
    assert not (out / "backup").exists()  # removed once training finished
    total = json.loads((out / "train_time.json").read_text())
    assert total["epochs"] == 4 and total["seconds"] > clock["seconds"]  # both sessions counted
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_model_with_wrong_class_count_is_refused():
    model = models.build_unet((None, None, 3), num_classes=3, depth=1, width=2)
    with pytest.raises(ConfigError, match="outputs 3 channels.*data has 5 classes"):
        compile_for_segmentation(model, num_classes=5)


def test_schedules_decay_to_zero_over_total_steps():
    for schedule in ("poly", "cosine"):
        lr = make_schedule(0.1, schedule, total_steps=100)
        assert float(lr(50)) < 0.1 and float(lr(0)) == pytest.approx(0.1) and float(lr(100)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ConfigError, match="needs total_steps"):
        make_optimizer("adam", 1e-3, "poly")
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        make_optimizer("rmsprop", 1e-3, "constant")


def test_evaluation_counts_every_labelled_pixel_at_full_resolution():
    split = data.scenes("val", num_images=6, image_size=(48, 64))
    model = models.build_unet((None, None, 3), split.info.num_classes, depth=2, width=4)
    scores = evaluate(model, split, image_size=(24, 32), batch_size=4, verbose=0)  # model sees half size
    labelled = sum(int((m != 255).sum()) for _, m in split.dataset().as_numpy_iterator())
    assert scores["confusion_matrix"].sum() == labelled
    assert 0.0 <= scores["miou"] <= 1.0


def test_evaluation_agrees_with_keras_metric_at_equal_resolution():
    from tfseg.metrics import MeanIoU

    split = data.scenes("val", num_images=8, image_size=(32, 32))
    model = models.build_unet((None, None, 3), split.info.num_classes, depth=2, width=4)
    scores = evaluate(model, split, image_size=(32, 32), batch_size=4, verbose=0)
    metric = MeanIoU(split.info.num_classes)
    for images, masks in data.train_pipeline(split, (32, 32), 4, augment=None, shuffle=False):
        metric.update_state(masks, model(images, training=False))
    np.testing.assert_allclose(scores["miou"], float(metric.result()), rtol=1e-6)


def test_fixed_size_model_is_trained_at_crop_size_and_rebuilt_for_evaluation(tmp_path):
    from tfseg.pipeline.train import TrainConfig, run

    config = TrainConfig(
        out_dir=str(tmp_path / "run"), model="deeplabv3_mobilenet_v2",
        model_options={"alpha": 0.35, "aspp_filters": 8}, data_options={"num_images": 8, "image_size": (32, 32)},
        crop_size=(32, 32), eval_size=(48, 64), batch_size=8, epochs=2, augment=None,
    )
    trained_run = run(config, verbose=0)
    scores = trained_run.scores("val")
    assert 0.0 <= scores["miou"] <= 1.0
    # Model selection used the same protocol as the final evaluation: the best epoch's logged
    # val_miou is the final score (the rebuilt model is refreshed with each epoch's weights).
    log = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert len(log) == 2
    np.testing.assert_allclose(max(float(row["val_miou"]) for row in log), scores["miou"], rtol=1e-6)
    trained = trained_run.model()
    assert trained.input_shape == (None, 32, 32, 3)  # image pooling needs a fixed size
    rebuilt, info = trained_run.model(size=(48, 64)), trained_run.info
    assert rebuilt.output_shape == (None, 48, 64, info.num_classes)
    for name in ("Conv1", "aspp_pool_conv"):  # a backbone layer and a head layer kept their weights
        np.testing.assert_array_equal(trained.get_layer(name).get_weights()[0], rebuilt.get_layer(name).get_weights()[0])
    assert sum(len(layer.weights) for layer in rebuilt.layers) == sum(len(layer.weights) for layer in trained.layers)
