"""Reading the ``TF_CONFIG`` environment variable that configures a multi-worker run, with errors
that say what is wrong. No TensorFlow here: the ``tfseg`` command checks it before loading TF.
"""

from __future__ import annotations

import json
import os

from tfseg.errors import ConfigError

TF_CONFIG = "TF_CONFIG"
WORKER_JOBS = ("chief", "worker")


def read_tf_config(environ=None) -> dict:
    """The ``TF_CONFIG`` of a multi-worker run, checked: a JSON object with a ``cluster`` of
    ``chief``/``worker`` address lists and this process's ``task`` (``type`` and ``index``).

    Raises:
      ConfigError: TF_CONFIG is missing, not JSON, or does not describe this process's place in
        a cluster of workers (each message says what is wrong and what is expected).
    """
    environ = os.environ if environ is None else environ
    text = environ.get(TF_CONFIG, "").strip()
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text:
        raise ConfigError(f"distribute multi_worker needs the {TF_CONFIG} environment variable ({example})")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{TF_CONFIG} is not valid JSON ({error}); {example}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict):
        raise ConfigError(f"{TF_CONFIG} needs a \"cluster\" object; {example}")
    cluster, task = config["cluster"], config.get("task")
    unsupported = sorted(set(cluster) - {*WORKER_JOBS, "evaluator"})
    if unsupported:
        raise ConfigError(f"{TF_CONFIG} cluster has {', '.join(unsupported)}: multi_worker training "
                          "(MultiWorkerMirroredStrategy) takes only chief and worker tasks")
    for job in WORKER_JOBS:
        addresses = cluster.get(job, [])
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ConfigError(f"{TF_CONFIG} cluster {job!r} must be a list of \"host:port\" addresses, got {addresses!r}")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError(f"{TF_CONFIG} cluster can have one chief, got {len(cluster['chief'])}")
    if not any(cluster.get(job) for job in WORKER_JOBS):
        raise ConfigError(f"{TF_CONFIG} cluster lists no worker; {example}")
    if not isinstance(task, dict) or task.get("type") not in WORKER_JOBS:
        raise ConfigError(f"{TF_CONFIG} needs a \"task\" with type \"worker\" or \"chief\" and its index, got {task!r}")
    index, size = task.get("index"), len(cluster.get(task["type"], []))
    if not size:
        raise ConfigError(f"{TF_CONFIG} task is a {task['type']}, but the cluster lists no {task['type']}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < size:
        raise ConfigError(f"{TF_CONFIG} task index must be 0..{size - 1} (the cluster lists {size} "
                          f"{task['type']} address(es)), got {index!r}")
    return config


__all__ = ["TF_CONFIG", "WORKER_JOBS", "read_tf_config"]
