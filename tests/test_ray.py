"""Episodes as Ray tasks on a local Ray (loopback only, 2 CPUs): same table as sequential, resume, bad address.

Workers are real Ray worker processes that import sparsefit, load the tiny model and return the episode's
files; the driver writes the folders.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsefit.config import RunConfig, TrainConfig
from sparsefit.errors import SparseFitError
from sparsefit.experiments import MEASURED_METRICS, TABLE_METRICS, episode_dir, make_variants, results_table, run_episodes

ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[1]
SEEDS = [7004, 3639]
QUALITY = [key for key, _ in TABLE_METRICS if key not in MEASURED_METRICS]


def variants():
    config = RunConfig(dataset="sample-nli", model="tiny-t5", method="sparsefit", n_train=6, n_eval=3,
                       max_new_tokens=6, eval_batch_size=4, device="cpu",
                       train=TrainConfig(steps=2, batch_size=2, threads=1))
    return make_variants([config])


@pytest.fixture(scope="module")
def local_ray():
    from sparsefit.distributed import _runtime_env
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", runtime_env=_runtime_env(),
             log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def quality(rows):
    return [{k: v for k, v in row.items() if k.split("_")[0] in QUALITY} for row in results_table(rows)]


# runs first: the module's local Ray is not started yet (a running connection would be reused)
def test_a_ray_address_that_does_not_answer_is_one_line(tmp_path):
    with pytest.raises(SparseFitError, match="no Ray cluster answers at 127.0.0.1:1"):
        from sparsefit.distributed import connect
        connect("127.0.0.1:1")
    done = subprocess.run([sys.executable, "-m", "sparsefit", "episodes", "--model", "tiny-t5", "--method",
                           "sparsefit", "--seeds", "1", "--out", str(tmp_path), "--ray", "127.0.0.1:1", "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: field 'ray': no Ray cluster answers at 127.0.0.1:1 (Connection refused); start one with "
        "'ray start --head' or check the address"]
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_ray_table_equals_sequential_and_resume_submits_nothing(local_ray, tmp_path):
    notes: list[str] = []
    on_ray = run_episodes(variants(), tmp_path / "ray", SEEDS, progress=False, ray_address="local",
                          batch_episodes=2, notify=notes.append)
    assert notes == ["Ray: 2 episodes in 1 tasks on 2 CPUs"]  # one task trained both episodes together
    for seed in SEEDS:
        folder = episode_dir(tmp_path / "ray", variants()[0], seed)
        assert {p.name for p in folder.iterdir()} == {"config.json", "manifest.json", "delta.safetensors",
                                                      "predictions.jsonl", "results.json"}
    assert not list((tmp_path / "ray").glob("*/*.partial"))
    solo = run_episodes(variants(), tmp_path / "solo", SEEDS, progress=False)
    assert quality(on_ray) == quality(solo)

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "ray").glob("*/seed-*/results.json")}
    again: list[str] = []
    resumed = run_episodes(variants(), tmp_path / "ray", SEEDS, progress=False, ray_address="local", notify=again.append)
    assert again == [] and resumed == on_ray  # all finished: no task submitted, same rows
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
