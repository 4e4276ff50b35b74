"""The typed run directory: what it reads from run.json, records of older versions, derived records."""

import json

import pytest

from tfseg.errors import ConfigError
from tfseg.runs import RUN_FILE, Run

INFO = {"name": "toy", "class_names": ["a", "b"], "palette": [[0, 0, 0], [255, 255, 255]], "ignore_label": 255}
# A training run's record as the code before the typed Run wrote it (no stage, no "complete").
OLD_TRAIN = {"out_dir": "runs/old", "model": "unet", "model_options": {"width": 4}, "dataset": "scenes",
             "data_options": {"num_images": 8}, "crop_size": [32, 32], "eval_size": None, "batch_size": 4,
             "loss": "ce", "class_weight_values": [1.0, 2.0], "augment": None, "seed": 3, "info": INFO,
             "train_seconds": 12.5, "num_params": 1000}


def write(tmp_path, record, name="run"):
    path = tmp_path / name
    path.mkdir()
    (path / RUN_FILE).write_text(json.dumps(record))
    return path


def test_a_record_of_the_previous_code_opens_with_its_stage_and_sizes(tmp_path):
    run = Run.open(write(tmp_path, OLD_TRAIN))
    assert (run.stage, run.finished, run.model_name, run.model_options) == ("train", True, "unet", {"width": 4})
    assert run.crop_size == run.eval_size == (32, 32) and run.batch_size == 4 and run.seed == 3
    assert run.info.class_names == ("a", "b") and run.num_classes == 2 and run.class_weights == [1.0, 2.0]
    assert run.augment is None and run.logit_offset is None and not run.is_quantization_aware
    assert run.model_path() == run.path / "best.keras"
    killed = Run.open(write(tmp_path, {k: v for k, v in OLD_TRAIN.items() if k != "train_seconds"}, "killed"))
    assert not killed.finished
    qat = Run.open(write(tmp_path, {**OLD_TRAIN, "qat": {"epochs": 1}, "eval_size": [48, 64]}, "qat"))
    assert qat.stage == "quantize" and qat.is_quantization_aware and qat.model_path("last").name == "last.h5"
    assert qat.eval_size == (48, 64)
    pruned = Run.open(write(tmp_path, {**OLD_TRAIN, "filter_pruned": True, "rounds": []}, "pruned"))
    assert pruned.stage == "prune" and pruned.is_filter_pruned
    taught = Run.open(write(tmp_path, {**OLD_TRAIN, "teacher": {"run": "t"}}, "taught"))
    assert taught.stage == "distill"


def test_a_derived_record_keeps_the_lineage_and_drops_the_rest(tmp_path):
    calibrated = {**OLD_TRAIN, "filter_pruned": True, "logit_adjustment": {"bias": [0.1, -0.1]}, "rounds": [1],
                  "teacher": {"run": "t"}}
    source = Run.open(write(tmp_path, calibrated))
    record = source.derive("runs/new", "quantize", epochs=2)
    assert record["stage"] == "quantize" and record["source"] == str(source.path) and record["out_dir"] == "runs/new"
    assert record["filter_pruned"] and record["logit_adjustment"] == {"bias": [0.1, -0.1]} and record["epochs"] == 2
    for dropped in ("train_seconds", "num_params", "rounds", "teacher"):
        assert dropped not in record
    child = Run("runs/new", record)
    assert child.logit_offset == [0.1, -0.1] and child.crop_size == (32, 32) and child.class_weights == [1.0, 2.0]


def test_missing_or_foreign_run_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere/run.json not found"):
        Run.open(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="lacks model, crop_size"):
        Run.open(write(tmp_path, {"dataset": "scenes", "info": INFO}, "foreign"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / RUN_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Run.open(broken)
    with pytest.raises(FileNotFoundError, match="best.keras not found"):
        Run.open(write(tmp_path, OLD_TRAIN, "no-model")).model()


def test_update_writes_the_record_atomically(tmp_path):
    run = Run.open(write(tmp_path, OLD_TRAIN))
    run.update(complete=True, logit_adjustment={"bias": [0.0, 1.0]})
    again = Run.open(run.path)
    assert again.record["complete"] and again.logit_offset == [0.0, 1.0]
    assert [p.name for p in run.path.iterdir()] == [RUN_FILE]  # no temporary file left
