"""Distillation runs from a teacher run directory: the library call and the `tfseg distill` command."""

import json

import pytest

from conftest import load_recipe, tiny_scenes_options, train_tiny_run
from tfseg.cli import main
from tfseg.errors import ConfigError

TINY = tiny_scenes_options(8)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("teacher") / "run", 8)


def test_distill_run_records_teacher_and_losses(teacher_run, tmp_path):
    from tfseg.pipeline.distill import DistillConfig, run

    config = DistillConfig(
        out_dir=str(tmp_path / "student"), model="fastseg_tiny", data_options={"num_images": 8, "image_size": (32, 32)},
        crop_size=(32, 32), eval_size=(48, 64), batch_size=8, epochs=1, augment=None, class_weights="median",
        teacher_run=str(teacher_run), losses=["pixel_kd", {"loss": "cwd", "temperature": 2.0}],
    )
    student_run = run(config, verbose=0)
    logged = (tmp_path / "student" / "log.csv").read_text().splitlines()[0].split(",")
    assert {"student_loss", "pixel_kd", "cwd", "total_loss", "val_miou"} <= set(logged)
    assert 0.0 <= student_run.scores("val")["miou"] <= 1.0 and student_run.stage == "distill"
    record = json.loads((tmp_path / "student" / "run.json").read_text())
    assert record["teacher"]["run"] == str(teacher_run) and record["teacher"]["model"].startswith("unet")
    kd, cwd = record["distillation_losses"]
    assert kd["class"] == "PixelKD" and cwd["temperature"] == 2.0
    # The run's median-frequency weights reach PixelKD's cross-entropy term, as they reach the baseline's CE.
    assert kd["class_weights"] == pytest.approx(record["class_weight_values"])
    student = student_run.model(size=(48, 64))
    assert student.name == "fastseg_tiny" and student.output_shape == (None, 48, 64, 6)


def test_losses_with_a_ground_truth_term_get_the_run_class_weights_and_logit_offset():
    from tfseg.distill.losses import make_distillation_loss

    weights, offset = [1.0, 2.0, 0.5], [0.3, -0.2, 0.0]
    kd = make_distillation_loss("pixel_kd", weights, offset)
    assert kd.class_weights == weights and kd.logit_offset == offset
    own = make_distillation_loss({"loss": "pixel_kd", "logit_offset": [0.0, 0.0, 0.0]}, weights, offset)
    assert own.logit_offset == [0.0, 0.0, 0.0]  # the spec's own option wins
    cwd = make_distillation_loss("cwd", weights, offset)  # no ground-truth term: nothing to pass
    assert not hasattr(cwd, "logit_offset") and not hasattr(cwd, "class_weights")


def test_distill_command_and_its_errors(teacher_run, tmp_path, capsys):
    out = tmp_path / "cli-student"
    code = main(["distill", "--teacher", str(teacher_run), "--model", "fastseg_tiny", "--crop-size", "32",
                 "--epochs", "1", "--batch-size", "8", "--no-augment", "--kd", "pixel_kd:temperature=2,alpha=0.7",
                 "--kd", "pairwise_kd:pool_size=1", "--out", str(out), *TINY])
    assert code == 0
    losses = json.loads((out / "run.json").read_text())["distillation_losses"]
    assert (losses[0]["temperature"], losses[0]["alpha"], losses[1]["pool_size"]) == (2.0, 0.7, 1)
    assert "student val mIoU" in capsys.readouterr().out

    code = main(["distill", "--teacher", str(teacher_run), "--kd", "hinton", "--out", str(tmp_path / "x"), *TINY])
    assert code == 2 and "unknown distillation loss 'hinton'" in capsys.readouterr().err
    code = main(["distill", "--teacher", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y"), *TINY])
    assert code == 2 and "nowhere" in capsys.readouterr().err


def test_teacher_trained_on_other_classes_is_refused(teacher_run, tmp_path):
    import shutil

    from tfseg.pipeline.distill import DistillConfig, run

    other = tmp_path / "other-teacher"
    shutil.copytree(teacher_run, other)
    record = json.loads((other / "run.json").read_text())
    record["info"]["class_names"] = [f"class{i}" for i in range(len(record["info"]["class_names"]))]
    (other / "run.json").write_text(json.dumps(record))
    config = DistillConfig(out_dir=str(tmp_path / "s"), model="fastseg_tiny", dataset="scenes",
                           data_options={"num_images": 8, "image_size": (32, 32)},
                           crop_size=(32, 32), epochs=1, augment=None, teacher_run=str(other))
    with pytest.raises(ConfigError, match="trained on classes"):
        run(config, verbose=0)


def test_ablation_recipe_refuses_taps_the_distiller_refuses_before_training(teacher_run, tmp_path):
    recipe = load_recipe("distill_camvid")
    out = tmp_path / "students"
    with pytest.raises(ValueError, match="never negative"):
        recipe.main(["--teacher", str(teacher_run), "--out", str(out), "--crop", "32x32",
                     "--variants", "scratch", "pairwise_kd:teacher_endpoint=logits"])
    assert not out.exists()


def test_step_parts_bench_prints_a_median_for_every_part(capsys):
    load_recipe("bench_step_parts").main(["--shape", "2x8x8x3", "--rounds", "2", "--warmup", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "logits 2x8x8x3, median of 2 interleaved rounds:"
    parts = dict(line.rsplit(":", 1) for line in lines[1:])
    assert len(parts) == 6 and "cross entropy, TF fused op, forward" in {name.strip() for name in parts}
    assert all(float(value.split()[0]) >= 0 for value in parts.values())  # tiny ops may round to 0.0 ms


def test_overhead_bench_interleaves_every_step_on_each_batch(capsys):
    bench = load_recipe("bench_distill_overhead")
    calls = []
    times = bench.interleaved_times({"a": lambda b: calls.append(("a", b)), "b": lambda b: calls.append(("b", b))},
                                    [0, 1, 2], warmup=1)
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert [len(v) for v in times.values()] == [2, 2]  # the warm-up round is not timed
    bench.main(["--teacher", "unet_small", "--student", "fastseg_tiny", "--size", "32x32", "--batch-size", "2",
                "--classes", "3", "--steps", "3", "--warmup", "1", "--losses", "cwd"])
    out = capsys.readouterr().out
    results = json.loads(out[:out.index("}") + 1])
    assert set(results) >= {"ratio[cwd]", "teacher_forward_s", "student_train_step_s"}
    low, high = results["ratio_iqr[cwd]"]
    assert 0 < low <= results["ratio[cwd]"] <= high
