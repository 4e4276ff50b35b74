"""The search stage and its commands: bad input named before any training, a tiny search that
resumes, its derived net trained as a zoo model, and search stages in a chain."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_cli_errors import error_line, tfseg
from test_nas_latency import CLASSES, SPACE, FakeMeasure

from tfseg import models
from tfseg.cli import main
from tfseg.nas.arch_params import random_architecture
from tfseg.nas.latency_table import LatencyTable, keys_for_space
from tfseg.pipeline import chain, search

TINY_SPACE = json.dumps(SPACE.to_dict())


def filled_table(path, size=(64, 64), classes=CLASSES) -> str:
    """A complete table of SPACE at ``size`` with the fake MAC-proportional timer (no LiteRT timing)."""
    table = LatencyTable(size, classes, "int8", (1, 2), space=SPACE, path=path, measure=FakeMeasure())
    table.ensure(keys_for_space(SPACE, classes))
    return str(path)


def test_search_command_names_a_bad_space_and_a_foreign_table(tmp_path):
    proc = tfseg("search", "--out", tmp_path / "s", "--space", '{"ops": ["conv3x3", "conv5x5"]}', cwd=tmp_path)
    assert "unknown op 'conv5x5'" in error_line(proc, "search") and not (tmp_path / "s").exists()
    table = filled_table(tmp_path / "table.json")
    proc = tfseg("search", "--out", tmp_path / "s", "--space", TINY_SPACE, "--latency-table", table,
                 "--deploy-size", "96x96", "--data-option", "num_images=8", cwd=tmp_path)
    line = error_line(proc, "search")
    assert "table.json" in line and "measured at 64x64" in line and "deploys at 96x96" in line
    assert not (tmp_path / "s" / "state").exists()  # nothing trained
    proc = tfseg("search", "--out", tmp_path / "s", "--space", "{num_layers: 4", cwd=tmp_path)
    assert "neither a JSON file nor JSON text" in error_line(proc, "search")
    proc = tfseg("search", "--out", tmp_path / "s", "--latency-balance", "-1", cwd=tmp_path)
    assert "latency_balance must be > 0, got -1.0" in error_line(proc, "search")


@pytest.mark.parametrize("args, message", [
    (["--proxy-size", "16x16"], "input size (16, 16) is too small"),
    (["--space", '{"cell_widths": [8, 16, 30], "width_ratios": [0.25, 1.0]}'], "30 x 0.25 = 7.5"),
    (["--warmup-epochs", "5", "--epochs", "2"], "warmup_epochs must be between 0 and epochs"),
    (["--latency-balance", "0"], "latency_balance must be > 0"),
])
def test_search_command_refuses_bad_sizes_widths_and_schedules(tmp_path, capsys, args, message):
    assert main(["search", "--out", str(tmp_path / "s"), *args]) == 2
    assert message in capsys.readouterr().err


def test_a_table_from_another_runtime_is_refused(tmp_path, capsys):
    path = tmp_path / "table.json"
    filled_table(path)
    document = json.loads(path.read_text())
    document["meta"]["runtime"]["version"] = "0.0.1"
    path.write_text(json.dumps(document))
    assert main(["search", "--out", str(tmp_path / "s"), "--space", TINY_SPACE, "--latency-table", str(path),
                 "--deploy-size", "64x64"]) == 2
    assert "on ai-edge-litert 0.0.1" in capsys.readouterr().err


def test_search_resumes_and_its_net_builds_as_a_zoo_model(tmp_path):
    config = dict(out_dir=str(tmp_path / "s"), data_options={"num_images": 16}, space=SPACE.to_dict(),
                  proxy_size=(64, 64), deploy_size=(64, 64), latency_table=filled_table(tmp_path / "t.json", classes=6),
                  batch_size=4, warmup_epochs=1, latency_band=(0.0, 1.0), augment={"scale": (0.75, 1.25)}, precise_bn=2)
    search.run(search.SearchConfig(**config, epochs=1), verbose=0)
    assert not search.is_finished(tmp_path / "s") or search.read_record(tmp_path / "s")["epochs_run"] == 1
    killed = {**search.read_record(tmp_path / "s"), "complete": False, "search_seconds": 1000.0}
    (tmp_path / "s" / "search.json").write_text(json.dumps(killed))  # as if killed after its first epoch
    architecture = search.run(search.SearchConfig(**config, epochs=2), verbose=0)
    history = [json.loads(line) for line in (tmp_path / "s" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]  # the second run resumed at epoch 2
    record = search.read_record(tmp_path / "s")
    assert record["complete"] and record["parts"] == {"scenes/train[weights]": 8, "scenes/train[architecture]": 8}
    assert 1000 < record["search_seconds"] < 1000 + 600  # the killed attempt's time plus this one's
    assert (tmp_path / "s" / "search.png").exists()
    model = models.build("searched", (64, 64, 3), 6, architecture=str(tmp_path / "s" / "architecture.json"))
    assert model.output_shape == (None, 64, 64, 6) and architecture.space == SPACE


def test_a_chain_trains_the_net_its_search_stage_derived(tmp_path):
    _, stages = chain.plan({
        "out": str(tmp_path), "dataset": "scenes",
        "nas": {"stage": "search", "space": SPACE.to_dict(), "epochs": 1, "warmup_epochs": 0, "precise_bn": 2},
        "net": {"stage": "train", "model": "searched", "model_options": {"architecture": "nas"}, "epochs": 1},
    })
    assert [s.kind for s in stages] == ["search", "train"] and not stages[0].finished()
    assert stages[1].config.model_options["architecture"] == str(tmp_path / "nas" / "architecture.json")


def test_a_search_stopped_by_skips_keeps_the_net_from_before_they_took_over(tmp_path):
    nets = {epoch: random_architecture(SPACE, np.random.default_rng(epoch)) for epoch in (1, 2, 3, 4)}
    derived = nets.pop(4)
    for epoch, net in nets.items():
        net.save(tmp_path / f"arch_epoch{epoch:03d}.json")
    shares = {1: 1.0, 2: 0.4, 3: 0.6}  # warm-up (ties pick skip), searching, collapsed
    (tmp_path / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "skip_op_share": s}) + "\n"
                                                    for e, s in shares.items()))
    assert nets[2] != derived
    assert search.final_architecture(tmp_path, derived) == (nets[2], 2)
    shares[3] = 0.5  # at the limit: the search's own result stands
    (tmp_path / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "skip_op_share": s}) + "\n"
                                                    for e, s in shares.items()))
    assert search.final_architecture(tmp_path, derived) == (derived, None)
