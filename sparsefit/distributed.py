"""Episodes as Ray tasks: one machine's cores or GPUs, or a cluster.

`run_on_ray(pending, address, batch_episodes)` cuts each variant's unfinished episodes into chunks and runs
every chunk as one Ray task (`num_gpus=1` when the episodes train on CUDA, else `num_cpus=1`). A task loads
the backbone itself, trains its chunk (episode-batched where the method allows, `sparsefit.batched`) into a
temporary folder on the worker, and returns the files; the driver writes each episode's folder
(`<folder>.partial`, then renamed), so an episode folder is complete or absent and the output folder need
not be shared between machines. Resume is the caller's: finished episodes are never submitted.

Addresses: 'local' starts a Ray on this machine; 'auto' joins the cluster this machine belongs to;
host:port (or ray://host:port) joins that cluster. An address that does not answer is one SparseFitError
line within CONNECT_TIMEOUT_S + JOIN_TIMEOUT_S seconds (a port that answers but is not Ray).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from sparsefit.errors import SparseFitError

CONNECT_TIMEOUT_S = 10.0
JOIN_TIMEOUT_S = 30.0
# what a worker process needs to find the code, the models folder and the offline hub cache as the driver does
FORWARDED_ENV = ("SPARSEFIT_MODELS_DIR", "HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM", "OMP_NUM_THREADS")


def _runtime_env() -> dict[str, Any]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {"PYTHONPATH": path, **{k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}}
    return {"env_vars": env}


def _host_port(address: str) -> tuple[str, int] | None:
    text = address.removeprefix("ray://")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def connect(address: str, *, num_cpus: int | None = None) -> None:
    """Start or join Ray (a second call in the same process reuses the running connection)."""
    import ray
    if ray.is_initialized():
        return
    options: dict[str, Any] = {"runtime_env": _runtime_env(), "include_dashboard": False,
                               "logging_level": "ERROR", "log_to_driver": False}
    if address == "local":  # loopback only: a local Ray needs no other interface
        options.update(num_cpus=num_cpus, _node_ip_address="127.0.0.1")
        _init_or_fail(options, address, timeout=None)
        return
    target = _host_port(address)
    if address != "auto" and target is None:
        raise SparseFitError(f"--ray {address!r}: give 'auto', host:port or ray://host:port", field="ray")
    if target is not None:
        try:
            socket.create_connection(target, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise SparseFitError(f"no Ray cluster answers at {address} ({err.strerror or err}); start one with "
                                 "'ray start --head' or check the address", field="ray") from None
    options.pop("include_dashboard")
    _init_or_fail({**options, "address": address}, address, timeout=JOIN_TIMEOUT_S)


def _init_or_fail(options: dict[str, Any], address: str, timeout: float | None) -> None:
    """ray.init, as one SparseFitError line; joining gives up after `timeout` s (a port that answers but is not
    Ray makes ray.init wait for minutes)."""
    import threading
    import ray
    outcome: list[BaseException | None] = []

    def start() -> None:
        try:
            ray.init(**options)
            outcome.append(None)
        except BaseException as err:  # noqa: BLE001 -- reported below
            outcome.append(err)
    if timeout is None:
        start()
    else:
        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        thread.join(timeout)
    if not outcome:
        raise SparseFitError(f"the Ray cluster at {address} did not answer within {timeout:.0f} s (is it a Ray "
                             "head node's GCS port, usually 6379?)", field="ray")
    err = outcome[0]
    if err is not None:
        first = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
        raise SparseFitError(f"cannot start or join Ray at {address!r}: {first}", field="ray") from None


def _chunks(pending: Sequence[Any], batch_episodes: int | None, workers: int) -> list[list[Any]]:
    """Each variant's episodes in chunks: K when given, one when sequential, else spread over the workers."""
    from sparsefit.batched import batchable_reason
    chunks: list[list[Any]] = []
    for label in dict.fromkeys(item.label for item in pending):
        items = [item for item in pending if item.label == label]
        if batch_episodes in (None, 1) or batchable_reason(items[0].config):
            size = 1
        else:
            size = batch_episodes or math.ceil(len(items) / max(1, workers))
        chunks.extend(items[i: i + size] for i in range(0, len(items), size))
    return chunks


def _wants_gpu(config: Any, resources: dict[str, float]) -> bool:
    device = (config.device or "auto").lower()
    if device == "cpu":
        return False
    if resources.get("GPU", 0) < 1:
        if device.startswith("cuda"):
            raise SparseFitError(f"--device {device}: the Ray cluster has no GPU; use --device cpu or auto",
                                 field="device")
        return False
    return True


def run_chunk(configs: Sequence[Any], batch_episodes: int | None) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
    """Worker side: train and evaluate a chunk of one variant; return each episode's results and files."""
    from sparsefit.backbones import load_backbone
    from sparsefit.experiments import PlannedEpisode, run_variant_batched, seed_everything
    from sparsefit.runner import run_episode
    work = Path(tempfile.mkdtemp(prefix="sparsefit-ray-"))
    try:
        items = [PlannedEpisode("chunk", c, work / f"seed-{c.seed}") for c in configs]
        backbone = load_backbone(configs[0].model, device=configs[0].device, dtype=configs[0].dtype)
        if batch_episodes not in (None, 1) and len(items) > 1:
            run_variant_batched("chunk", items, backbone, len(items), False, lambda message: None)
        for item in items:
            if item.result is None:
                seed_everything(item.config.seed)
                item.result = run_episode(item.config, item.folder, backbone=backbone, progress=False)
        return [(item.result, {p.name: p.read_bytes() for p in sorted(item.folder.iterdir()) if p.is_file()})
                for item in items]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _write_folder(folder: Path, files: dict[str, bytes]) -> None:
    from sparsefit.batched import PARTIAL_SUFFIX
    partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, data in files.items():
        if name != "results.json":
            (partial / name).write_bytes(data)
    (partial / "results.json").write_bytes(files["results.json"])  # last, as the runner does
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def _task_error(err: BaseException) -> SparseFitError:
    cause = getattr(err, "cause", None)
    if isinstance(cause, SparseFitError):
        return cause
    text = str(cause or err).strip().splitlines()
    return SparseFitError(f"a Ray task failed: {text[-1] if text else err.__class__.__name__}")


def run_on_ray(pending: Sequence[Any], address: str, batch_episodes: int | None, *, progress: bool = True,
               notify: Callable[[str], None] = print, num_cpus: int | None = None) -> None:
    """Run the pending episodes (experiments.PlannedEpisode) as Ray tasks; fills each one's `result`."""
    import ray
    from tqdm import tqdm
    connect(address, num_cpus=num_cpus)
    resources = ray.cluster_resources()
    use_gpu = _wants_gpu(pending[0].config, resources)
    workers = int(resources.get("GPU" if use_gpu else "CPU", 1))
    task = ray.remote(num_gpus=1, num_cpus=1)(run_chunk) if use_gpu else ray.remote(num_cpus=1)(run_chunk)
    chunks = _chunks(pending, batch_episodes, workers)
    notify(f"Ray: {len(pending)} episodes in {len(chunks)} tasks on {workers} {'GPU' if use_gpu else 'CPU'}"
           f"{'s' if workers != 1 else ''}")
    waiting = {task.remote([item.config for item in chunk], batch_episodes): chunk for chunk in chunks}
    bar = tqdm(total=len(pending), desc="episodes (ray)", unit="episode", disable=not progress)
    failure: SparseFitError | None = None
    while waiting:
        ready, _ = ray.wait(list(waiting), num_returns=1)
        chunk = waiting.pop(ready[0])
        try:
            returned = ray.get(ready[0])
        except Exception as err:  # noqa: BLE001 -- a task's error (RayTaskError) becomes one line
            failure = failure or _task_error(err)
            continue
        for item, (result, files) in zip(chunk, returned):
            _write_folder(item.folder, files)
            item.result = result
            bar.update()
    bar.close()
    if failure is not None:
        raise failure
