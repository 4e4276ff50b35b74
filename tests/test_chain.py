"""The chain from a file: planning errors before any work, stage references, and the quick start's
chain end to end on tiny data (with a rerun that keeps every finished stage)."""

import json
from pathlib import Path

import pytest

from tfseg.errors import ConfigError
from tfseg.pipeline import chain

# The quick start runs the export through tfseg-lite, its own distribution beside tfseg: the test
# extras do not install it, so it is imported from export/ (as export/tests do).
EXPORT_DIR = Path(__file__).resolve().parents[1] / "export"
TINY_DATA = 'data_options={ num_images = 8, image_size = [32, 32] }'


def plan(text, overrides=()):
    import tomllib

    return chain.plan(chain.apply_overrides(tomllib.loads(text), overrides))


def test_stages_run_in_file_order_and_names_stand_for_their_runs():
    settings, stages = plan('''
        out = "chain"
        dataset = "scenes"
        [t]
        stage = "train"
        crop_size = [32, 32]
        [s]
        stage = "distill"
        teacher_run = "t"
        [x]
        stage = "export"
        run_dir = "s"
    ''', ["s.epochs=3", "t.augment=false"])
    assert [(s.name, s.kind) for s in stages] == [("t", "train"), ("s", "distill"), ("x", "export")]
    assert stages[1].config.teacher_run == "chain/t" and stages[2].config.run_dir == "chain/s"
    assert stages[1].config.epochs == 3 and stages[0].config.augment is None
    assert stages[0].config.crop_size == (32, 32) and stages[0].config.dataset == "scenes"
    assert str(stages[2].output) == "chain/x.tflite"
    # The chain's dataset goes to the stages that train; an export reads its run's own data.
    assert stages[2].config.dataset is None


@pytest.mark.parametrize("text, overrides, words", [
    ('[a]\nstage = "trian"', [], ["[a]", "'trian'", "train, distill"]),
    ('[a]\nstage = "train"\nepoch = 3', [], ["[a]", "'epoch'", "epochs"]),
    ('[a]\nstage = "train"', ["b.epochs=2"], ["no stage 'b'", "a"]),
    ('[a]\nstage = "train"', ["a.epochs"], ["STAGE.KEY=VALUE"]),
    ('outdir = "x"\n[a]\nstage = "train"', [], ["'outdir'", "out, dataset"]),
    ('out = "x"', [], ["no stages"]),
])
def test_planning_errors_name_the_stage_and_key(text, overrides, words):
    with pytest.raises(ConfigError) as error:
        plan(text, overrides)
    for word in words:
        assert word in str(error.value)


def test_the_shipped_chains_plan():
    from importlib import resources

    for name in ("quickstart.toml", "camvid.toml"):
        with resources.as_file(resources.files("tfseg.pipeline") / "chains" / name) as path:
            _, stages = chain.load(path)
        assert [s.kind for s in stages] == ["train", "distill", "prune", "quantize", "export", "export"]


def test_quickstart_runs_the_chain_and_a_rerun_keeps_it(tmp_path, capsys, monkeypatch):
    from tfseg.cli import main
    from tfseg.runs import Run

    monkeypatch.syspath_prepend(str(EXPORT_DIR))
    out = tmp_path / "qs"
    sets = ["teacher.epochs=1", "student.epochs=1", "qat.epochs=1", "qat.calibration_images=4",
            "pruned.bn_batches=1", "int8.calibration_images=4", TINY_DATA]
    args = ["quickstart", "--out", str(out)] + [item for s in sets for item in ("--set", s)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert [row["stage"] for row in summary["rows"]] == ["teacher", "student", "pruned", "qat"]
    teacher, student, pruned, qat = summary["rows"]
    assert student["params"] < teacher["params"] and pruned["params"] < student["params"]
    assert qat["format"] == "int8" and qat["file_kib"] < pruned["file_kib"]
    assert all(0 <= row["miou_litert"] <= 1 and row["latency_ms"] > 0 for row in summary["rows"])
    assert summary["device"]["images"] == 8 and len(list((out / "overlays").glob("*.png"))) == 4
    assert (out / "summary.png").stat().st_size > 0 and "| qat | quantize | int8 |" in printed
    assert (out / "savedmodel" / "saved_model.pb").exists() and (out / "int8.tflite").exists()
    # Each run has a fresh record: what it is made from, not its source's timings or folder.
    record = Run.open(out / "qat").record
    assert record["source"] == str(out / "pruned") and record["out_dir"] == str(out / "qat") and record["complete"]
    assert Run.open(out / "pruned").record["stage"] == "prune" and "train_seconds" not in Run.open(out / "pruned").record

    assert main(args) == 0
    rerun = capsys.readouterr().out
    assert rerun.count("done before, kept") == 6
