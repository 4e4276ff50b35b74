"""The whole chain from a file: stages in order, each reading the run the one before it wrote.

A chain file is TOML. Top-level keys set the chain (``out``: its folder; ``dataset`` and
``data_options``: the data of the stages that train); each table is a stage, run in the file's
order, with ``stage`` naming its kind and the other keys the fields of that kind's config:

    out = "tfseg_quickstart"
    dataset = "scenes"

    [teacher]
    stage = "train"
    model = "unet_small"
    epochs = 8

    [student]
    stage = "distill"
    teacher_run = "teacher"       # a stage's name stands for the run it writes
    model = "unet"
    model_options = { width = 8, depth = 3 }

    [searched]                    # architecture search; then e.g. a distill stage with
    stage = "search"              # model = "searched", model_options = { architecture = "searched" }

    [int8]
    stage = "export"
    run_dir = "student"

Each stage writes ``<out>/<name>`` (an export: ``<out>/<name>.tflite``, or the SavedModel folder);
a finished stage is skipped on a rerun and a killed one resumes. ``overrides`` (``"student.epochs=3"``)
change one key; values are read as TOML (``3``, ``0.5``, ``true``, ``[96, 96]``, ``"text"``) or
else taken as text. Unknown stages and keys are named before anything runs.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from tfseg import distribute
from tfseg.errors import ConfigError
from tfseg.pipeline import calibrate, distill, export, prune, quantize, search, train
from tfseg.runs import Run

# kind -> (config class, the function that runs it)
STAGES = {
    "train": (train.TrainConfig, train.run),
    "distill": (distill.DistillConfig, distill.run),
    "prune": (prune.PruneConfig, prune.run),
    "quantize": (quantize.QATConfig, quantize.run),
    "calibrate": (calibrate.CalibrateConfig, calibrate.run),
    "export": (export.ExportConfig, export.run),
    "search": (search.SearchConfig, search.run),
}
CHAIN_KEYS = ("out", "dataset", "data_options")
# Keys whose value may name an earlier stage, standing for the run directory it writes.
RUN_KEYS = ("run_dir", "teacher_run", "init_from")
# Where a stage writes: its config's output key.
OUTPUT_KEY = {"export": "out", "calibrate": None}


@dataclasses.dataclass
class Stage:
    """One planned stage: its name in the file, its kind, its config, and where it writes."""

    name: str
    kind: str
    config: object

    @property
    def output(self) -> Path:
        key = OUTPUT_KEY.get(self.kind, "out_dir")
        return Path(getattr(self.config, key or "run_dir"))

    def finished(self) -> bool:
        if self.kind == "export":
            return Path(f"{self.output}.report.json").exists() and self.output.exists()
        if self.kind == "search":
            return search.is_finished(self.output)
        if self.kind == "calibrate":
            return self.output.joinpath("run.json").exists() and bool(Run.open(self.output).record.get("logit_adjustment"))
        return (self.output / "run.json").exists() and Run.open(self.output).finished

    def run(self, verbose="auto"):
        function = STAGES[self.kind][1]
        return function(self.config) if self.kind == "export" else function(self.config, verbose=verbose)


def _toml_value(text: str):
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(document: dict, overrides) -> dict:
    """``document`` with each ``"stage.key=value"`` (or ``"key=value"`` for a chain key) set."""
    document = {key: dict(value) if isinstance(value, dict) else value for key, value in document.items()}
    for item in overrides or ():
        target, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes STAGE.KEY=VALUE, got {item!r}")
        stage, dot, key = target.strip().rpartition(".")
        if not dot:
            document[key] = _toml_value(value.strip())
            continue
        if not isinstance(document.get(stage), dict):
            stages = [name for name, value in document.items() if isinstance(value, dict) and "stage" in value]
            raise ConfigError(f"--set {item!r}: the chain has no stage {stage!r}; its stages: {', '.join(stages)}")
        document[stage][key] = _toml_value(value.strip())
    return document


def _config(name: str, table: dict, chain: dict, outputs: dict):
    kind = table.get("stage")
    if kind not in STAGES:
        raise ConfigError(f"stage [{name}] has stage = {kind!r}; choose one of {', '.join(STAGES)}")
    config_class = STAGES[kind][0]
    fields = {field.name for field in dataclasses.fields(config_class)}
    values = {key: value for key, value in table.items() if key != "stage"}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"stage [{name}] ({kind}) has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(sorted(fields))}")
    for key in RUN_KEYS:
        if isinstance(values.get(key), str) and values[key] in outputs:
            values[key] = str(outputs[values[key]])
    architecture = values.get("model_options", {}).get("architecture")
    if isinstance(architecture, str) and architecture in outputs:  # a search stage's name: the net it derived
        values["model_options"] = {**values["model_options"], "architecture": str(outputs[architecture] / "architecture.json")}
    for key in ("dataset", "data_options"):
        if kind in ("train", "distill", "search") and key not in values and key in chain:
            values[key] = chain[key]
    out = Path(chain.get("out", "tfseg_chain"))
    if kind == "export":
        suffix = ".tflite" if values.get("format", "tflite") == "tflite" else ""
        values.setdefault("out", str(out / f"{name}{suffix}"))
    elif "out_dir" in fields:
        values.setdefault("out_dir", str(out / name))
    for key, value in values.items():
        if key.endswith("_size") and isinstance(value, list):
            values[key] = tuple(value)
    try:
        return config_class(**values)
    except TypeError as error:
        raise ConfigError(f"stage [{name}] ({kind}): {error}") from None


def plan(document: dict) -> tuple[dict, list[Stage]]:
    """The chain settings and its stages, checked (names, kinds, keys, references) before any work.

    Raises:
      ConfigError: an unknown stage kind, option or chain key, naming it and the choices.
    """
    chain = {key: value for key, value in document.items() if not isinstance(value, dict) or key == "data_options"}
    unknown = sorted(set(chain) - set(CHAIN_KEYS))
    if unknown:
        raise ConfigError(f"unknown chain setting {', '.join(map(repr, unknown))}; the chain takes "
                          f"{', '.join(CHAIN_KEYS)} and [stage] tables")
    stages, outputs = [], {}
    for name, table in document.items():
        if not isinstance(table, dict) or name == "data_options":
            continue
        stage = Stage(name, table.get("stage"), _config(name, table, chain, outputs))
        if stage.kind != "export":
            outputs[name] = stage.output
        stages.append(stage)
    if not stages:
        raise ConfigError("the chain has no stages: add [name] tables with stage = \"train\", ...")
    _check_distribution(stages)
    return chain, stages


def _check_distribution(stages):
    """Every worker of a multi-worker chain runs all its stages: they must all be multi-worker ones."""
    modes = {stage.name: getattr(stage.config, "distribute", None) for stage in stages}
    others = [name for name, mode in modes.items() if mode != "multi_worker"]
    if len(others) < len(modes) and others:
        raise ConfigError(f"stage(s) {', '.join(others)} of a multi_worker chain are not distribute = \"multi_worker\": "
                          "every worker runs every stage, so a multi-worker chain holds only train, distill and "
                          "quantize stages with it (prune, calibrate and export them in a chain of their own)")


def is_chief(stages) -> bool:
    """Whether this process writes the chain's results: not on the non-chief workers of a
    multi-worker chain (after ``run_stages``, which set the strategy up)."""
    if any(getattr(stage.config, "distribute", None) == "multi_worker" for stage in stages):
        return distribute.is_chief(distribute.strategy("multi_worker"))
    return True


def load(path, overrides=()) -> tuple[dict, list[Stage]]:
    """Reads and plans a chain file (``plan``), with ``overrides`` applied."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"chain file {path} not found")
    try:
        document = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    return plan(apply_overrides(document, overrides))


def run_stages(stages, verbose="auto", log=print) -> list:
    """Runs each stage not finished yet; returns ``(stage, result or None if skipped)`` pairs."""
    results = []
    for index, stage in enumerate(stages, 1):
        if stage.finished():
            log(f"[{index}/{len(stages)}] {stage.name} ({stage.kind}): done before, kept ({stage.output})")
            results.append((stage, None))
            continue
        log(f"[{index}/{len(stages)}] {stage.name} ({stage.kind}) -> {stage.output}")
        results.append((stage, stage.run(verbose=verbose)))
    return results


__all__ = ["STAGES", "Stage", "apply_overrides", "is_chief", "load", "plan", "run_stages"]
