"""``--distribute`` (tfseg.distribute): TF_CONFIG checking, two local multi-worker processes on
loopback training like one process, resume of a killed multi-worker run, QAT on two replicas.

The equivalence test runs ``tfseg train`` three times at once: ``--distribute none``, and two
workers of ``--distribute multi_worker`` (TF_CONFIG with two ``localhost`` ports). Same seed, same
global batch (4: two replicas of 2), shuffling and augmentation on: every worker runs the whole
seeded input pipeline and keeps its half of each global batch (DATA sharding), so both runs see
the same batches in the same order. It fails if the batch were per replica, if workers read other
examples, or if batch norm used per-replica statistics (measured: conv kernels off by up to 5e-2).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_ports
from test_cli_errors import error_line

from tfseg._keras import keras
from tfseg.errors import ConfigError
from tfseg.pipeline import chain, distill, quantize, train
from tfseg.tf_config import read_tf_config

REPO = Path(__file__).resolve().parent.parent
# A 2-level U-Net of width 4 on 8 synthetic 32x32 scenes: 2 steps of batch 4 per epoch. SGD, because
# Adam's first step is lr * g / |g|: float noise in a near-zero gradient can flip its sign, while
# an SGD step is linear in the gradient, so reduction-order noise stays at its float size.
# Precise BN off: its re-estimation passes run outside the synchronised BN path, so the moving
# variances of two workers and one process differ by the n/(n-1) factor of TF's fused BN.
TINY_RUN = ["--model", "unet", "--width", "4", "--depth", "2", "--crop-size", "32", "--batch-size", "4",
            "--optimizer", "sgd", "--schedule", "constant", "--lr", "0.05", "--precise-bn", "0",
            "--data-option", "num_images=8", "--data-option", "image_size=32x32"]


def _env(**extra) -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    return {**env, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", **extra}


def _start(args, cwd, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tfseg.cli", *map(str, args)], cwd=cwd, env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def _tf_configs(workers: int = 2) -> list[str]:
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(workers)]


def _start_workers(args, cwd) -> list[subprocess.Popen]:
    return [_start([*args, "--distribute", "multi_worker"], cwd, TF_CONFIG=config) for config in _tf_configs()]


def _weights(path: Path) -> list:
    model = keras.models.load_model(path, compile=False)
    return [(weight.name, value) for weight, value in zip(model.weights, model.get_weights())]


# ------------------------------------------------------------------ bad input


def _config(cluster=None, task=None) -> dict:
    config = {"cluster": {"worker": ["localhost:1234", "localhost:1235"]} if cluster is None else cluster}
    if task is not False:
        config["task"] = task or {"type": "worker", "index": 0}
    return {"TF_CONFIG": json.dumps(config)}


@pytest.mark.parametrize("environ, message", [
    ({}, "needs the TF_CONFIG environment variable"),
    ({"TF_CONFIG": "{'cluster': {}}"}, "TF_CONFIG is not valid JSON"),
    ({"TF_CONFIG": "[1, 2]"}, 'needs a "cluster" object'),
    (_config(task=False), 'needs a "task"'),
    (_config(task={"type": "ps", "index": 0}), 'needs a "task" with type "worker" or "chief"'),
    (_config(task={"type": "worker", "index": 2}), "task index must be 0..1"),
    (_config(task={"type": "chief", "index": 0}), "the cluster lists no chief"),
    (_config(cluster={"worker": ["localhost"]}), '"host:port" addresses'),
    (_config(cluster={"ps": ["a:1"], "worker": ["localhost:1"]}), "takes only chief and worker tasks"),
    (_config(cluster={"worker": []}), "lists no worker"),
])
def test_bad_tf_config_is_named(environ, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_tf_config(environ)


def test_good_tf_configs_pass():
    assert read_tf_config(_config())["task"]["index"] == 0
    chief = _config(cluster={"chief": ["a:1"], "worker": ["b:1"]}, task={"type": "chief", "index": 0})
    assert read_tf_config(chief)["task"]["type"] == "chief"


def test_stage_configs_check_their_distribute_field():
    # What a chain file's `distribute = "..."` reaches; TF_CONFIG is read when the stage starts.
    for make in (train.TrainConfig, distill.DistillConfig, lambda **kw: quantize.QATConfig("a", "b", **kw)):
        assert make(distribute="multi_worker").distribute == "multi_worker"
        with pytest.raises(ConfigError, match="distribute must be one of none, mirrored, multi_worker, got 'ring'"):
            make(distribute="ring")


def test_a_multi_worker_chain_holds_only_multi_worker_stages():
    document = {"out": "c", "teacher": {"stage": "train", "distribute": "multi_worker"},
                "student": {"stage": "distill", "teacher_run": "teacher", "distribute": "multi_worker"}}
    assert [stage.name for stage in chain.plan(document)[1]] == ["teacher", "student"]
    with pytest.raises(ConfigError, match=r"stage\(s\) int8 of a multi_worker chain"):
        chain.plan({**document, "int8": {"stage": "export", "run_dir": "student"}})
    with pytest.raises(ConfigError, match=r"stage\(s\) student of a multi_worker chain"):
        chain.plan({**document, "student": {"stage": "distill", "teacher_run": "teacher"}})


@pytest.mark.parametrize("command", ["train", "distill", "quantize"])
@pytest.mark.parametrize("tf_config, distribute, message", [
    (None, "multi_worker", "distribute multi_worker needs the TF_CONFIG environment variable"),
    ('{"cluster": {"worker": ["localhost:1"]}, "task": ', "multi_worker", "TF_CONFIG is not valid JSON"),
    (None, "horovod", "argument --distribute: invalid choice: 'horovod'"),
])
def test_command_reports_bad_distribution_settings_in_one_line(tmp_path, command, tf_config, distribute, message):
    required = {"train": [], "distill": ["--teacher", tmp_path], "quantize": [tmp_path]}[command]
    env = {} if tf_config is None else {"TF_CONFIG": tf_config}
    proc = subprocess.run([sys.executable, "-m", "tfseg.cli", command, *map(str, required), "--out", tmp_path / "out",
                           "--distribute", distribute], cwd=tmp_path, env=_env(**env), capture_output=True,
                          text=True, timeout=120)
    assert message in error_line(proc, command)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ multi-worker training


def test_two_step_multi_worker_training_equals_one_process(tmp_path):
    args = ["train", *TINY_RUN, "--epochs", "1"]
    single = _start([*args, "--out", tmp_path / "single"], tmp_path)
    workers = _start_workers([*args, "--out", tmp_path / "multi"], tmp_path)
    _finish(single)
    chief_output, other_output = (_finish(worker) for worker in workers)

    run = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert run["complete"] and run["replicas"] == 2 and run["distribute"] == "multi_worker"
    assert "the chief worker writes and scores the run" in other_output
    assert "val mIoU" in chief_output
    # Only the chief wrote: one log row, no worker's temporary folder left behind.
    assert len((tmp_path / "multi" / "log.csv").read_text().splitlines()) == 2
    assert not list((tmp_path / "multi").rglob("workertemp_*"))

    reference, distributed = _weights(tmp_path / "single" / "last.keras"), _weights(tmp_path / "multi" / "last.keras")
    assert [name for name, _ in reference] == [name for name, _ in distributed]
    for (name, ref), (_, got) in zip(reference, distributed):
        # Equal up to float32 summation order (two half-batch sums all-reduced instead of one sum;
        # measured <= 4.2e-7 here). Moving variances differ by up to 4e-5 relative: one process
        # uses the fused batch-norm kernel, whose variance update carries the n/(n-1) correction,
        # the synchronised layer does not (0.01 / (n - 1) with n = 256 values at the bottleneck).
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6, err_msg=name)


def _epochs_started(output: str) -> list[int]:
    return [int(number) for number in re.findall(r"^Epoch (\d+)/", output, flags=re.MULTILINE)]


@pytest.mark.slow  # four worker processes, one killed pair: about 2 minutes on 2 shared cores
def test_killed_multi_worker_run_resumes_from_the_backup(tmp_path):
    epochs = 6
    args = ["train", *TINY_RUN, "--epochs", epochs, "--out", tmp_path / "multi"]
    log = tmp_path / "multi" / "log.csv"
    workers = _start_workers(args, tmp_path)
    deadline = time.time() + 300
    # BackupAndRestore runs before the CSV log at an epoch's end: a logged epoch is backed up.
    while not (log.exists() and len(log.read_text().splitlines()) >= 2):
        assert time.time() < deadline and all(worker.poll() is None for worker in workers), "no epoch finished"
        time.sleep(0.05)
    for worker in workers:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    logged = len(log.read_text().splitlines()) - 1
    assert logged < epochs, "the run finished before it could be killed"
    assert (tmp_path / "multi" / "backup").is_dir()

    chief_output, _ = (_finish(worker) for worker in _start_workers(args, tmp_path))
    started = _epochs_started(chief_output)
    assert started and started[0] > 1, f"the restarted run began at epoch {started[:1]}, not after the backup"
    assert started[-1] == epochs
    run = json.loads((tmp_path / "multi" / "run.json").read_text())
    assert run["complete"] and run["replicas"] == 2
    assert json.loads((tmp_path / "multi" / "train_time.json").read_text())["epochs"] == epochs
    assert not (tmp_path / "multi" / "backup").exists()
    assert not list((tmp_path / "multi").rglob("workertemp_*"))


TWO_CPUS = """
import sys
from tfseg._keras import tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tfseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # a float run, then QAT in a second process: about a minute on 2 shared cores
def test_quantization_aware_training_runs_mirrored_on_two_replicas_and_says_it_differs(tmp_path):
    _finish(_start(["train", *TINY_RUN, "--epochs", "1", "--out", tmp_path / "float"], tmp_path))
    # mirrored replicates over the logical CPU devices when there is no GPU: two, configured here.
    proc = subprocess.run([sys.executable, "-c", TWO_CPUS, "quantize", tmp_path / "float", "--out", tmp_path / "qat",
                           "--epochs", "1", "--calibration-images", "4", "--distribute", "mirrored"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "tensorflow/model-optimization#1068" in proc.stderr
    run = json.loads((tmp_path / "qat" / "run.json").read_text())
    assert run["complete"] and run["replicas"] == 2 and (tmp_path / "qat" / "best.h5").exists()
