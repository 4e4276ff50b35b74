"""The Distiller under MirroredStrategy (2 logical CPUs) and MultiWorkerMirroredStrategy (two local
worker processes on loopback): the distributed step must equal the single-device one, which fails
if the losses are averaged per replica instead of over the global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import free_ports

WORKER = Path(__file__).with_name("distill_worker.py")
REPO = Path(__file__).resolve().parent.parent


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run(mode, out, **env):
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(out)], env=_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, timeout=240):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]


def _weights(path):
    data = np.load(path)
    arrays = [data[f"arr_{i}"] for i in range(len([k for k in data.files if k.startswith("arr_")]))]
    return arrays, float(data["total_loss"]), int(data["replicas"])


def test_mirrored_and_multi_worker_steps_equal_the_single_device_step(tmp_path):
    single = _run("single", tmp_path / "single.npz")
    mirrored = _run("mirrored", tmp_path / "mirrored.npz")
    _finish(single)
    _finish(mirrored)

    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [
        _run("worker", tmp_path / f"worker{i}.npz", TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        for i in range(2)
    ]
    for worker in workers:
        _finish(worker)

    reference, reference_loss, replicas = _weights(tmp_path / "single.npz")
    assert replicas == 1
    for name in ("mirrored", "worker0", "worker1"):
        weights, loss, replicas = _weights(tmp_path / f"{name}.npz")
        assert replicas == 2, name
        # Two SGD steps on the same global batches: equal up to float summation order.
        for ref, got in zip(reference, weights):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(loss, reference_loss, rtol=1e-4, err_msg=name)
