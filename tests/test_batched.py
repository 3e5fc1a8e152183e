"""Episode-batched training equals training the episodes one by one (tiny T5 and tiny causal, real runs).

K episodes trained at once on one frozen base (sparsefit.batched) must save the same deltas (to fp32
tolerance) and generate the same predictions as K sequential `run_episode` calls; each folder has the
same files. The tiny models have no dropout, and LoRA runs with lora_dropout=0 (dropout masks cannot match).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparsefit.backbones import load_backbone
from sparsefit.batched import run_episode_group
from sparsefit.config import RunConfig, TrainConfig
from sparsefit.errors import SparseFitError
from sparsefit.experiments import MEASURED_METRICS, TABLE_METRICS, episode_dir, make_variants, results_table, run_episodes
from sparsefit.runner import run_episode

torch.set_num_threads(1)
SEEDS = [7004, 3639, 6290, 9428]
QUALITY = [key for key, _ in TABLE_METRICS if key not in MEASURED_METRICS]
FILES = {"config.json", "manifest.json", "delta.safetensors", "predictions.jsonl", "results.json"}
CASES = [("tiny-t5", "sparsefit", {"components": "self.k,ln"}), ("tiny-t5", "lora", {"lora_dropout": 0.0}),
         ("tiny-t5", "ln_tuning", {}), ("tiny-causal", "sparsefit", {"components": "self.q,ln"}),
         ("tiny-causal", "lora", {"lora_dropout": 0.0}), ("tiny-causal", "ln_tuning", {})]


def tiny(model: str, method: str, options: dict, **overrides) -> RunConfig:
    # a high lr so that 3 steps move every trained tensor well past float noise
    return RunConfig(dataset="sample-nli", model=model, method=method, method_options=dict(options), n_train=6,
                     n_eval=3, max_new_tokens=6, eval_batch_size=4, device="cpu",
                     train=TrainConfig(steps=3, batch_size=2, threads=1, lr=1e-2), **overrides)


def generations(folder: Path) -> list[str]:
    return [json.loads(line)["raw_generation"] for line in (folder / "predictions.jsonl").read_text().splitlines()]


def assert_same_episode(solo: Path, batched: Path, trained_from: Path | None = None) -> None:
    assert {p.name for p in batched.iterdir()} == {p.name for p in solo.iterdir()} == FILES
    a, b = load_file(str(solo / "delta.safetensors")), load_file(str(batched / "delta.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-5, msg=name)
    assert generations(batched) == generations(solo)
    manifests = [json.loads((f / "manifest.json").read_text()) for f in (solo, batched)]
    assert manifests[0]["selection"] == manifests[1]["selection"] and manifests[0]["trainable"] == manifests[1]["trainable"]


@pytest.mark.parametrize("model,method,options", CASES, ids=[f"{m}-{n}" for m, n, _ in CASES])
def test_four_batched_episodes_equal_four_sequential_runs(tmp_path, model, method, options):
    variants = make_variants([tiny(model, method, options)])
    solo = run_episodes(variants, tmp_path / "solo", SEEDS, progress=False)
    batched = run_episodes(variants, tmp_path / "batched", SEEDS, progress=False, batch_episodes=4)
    for seed in SEEDS:
        folder_a, folder_b = (episode_dir(tmp_path / kind, variants[0], seed) for kind in ("solo", "batched"))
        assert_same_episode(folder_a, folder_b)
        # the trained tensors did move: the comparison is not between two untouched copies of the base
        moved = json.loads((folder_b / "results.json").read_text())
        assert moved["batched_episodes"] == 4 and moved["first_loss"] != moved["last_loss"]
    for row_a, row_b in zip(solo, batched):
        for key in (*QUALITY, "first_loss", "last_loss"):
            assert row_b[key] == pytest.approx(row_a[key], abs=1e-4), key
    table_a, table_b = results_table(solo), results_table(batched)
    assert [{k: v for k, v in r.items() if k.split("_")[0] in QUALITY} for r in table_b] == \
        [{k: v for k, v in r.items() if k.split("_")[0] in QUALITY} for r in table_a]


def test_odd_group_with_different_training_set_sizes(tmp_path):
    """K=3 at batch size 2, episodes of 3, 6 and 9 shots (each its own epochs and data order)."""
    backbone = load_backbone("tiny-t5")
    configs = [tiny("tiny-t5", "sparsefit", {"components": "self.k,ln"}, seed=s, name=f"e{s}") for s in SEEDS[:3]]
    for config, n in zip(configs, (3, 6, 9)):
        config.n_train = n
    rows = run_episode_group(configs, [tmp_path / f"b{c.seed}" for c in configs], backbone, progress=False)
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    for config, row in zip(configs, rows):
        solo = run_episode(config, tmp_path / f"s{config.seed}", backbone=backbone, progress=False)
        assert row["n_train"] == solo["n_train"] == config.n_train
        assert_same_episode(tmp_path / f"s{config.seed}", tmp_path / f"b{config.seed}")
    assert not list(tmp_path.glob("*.partial"))
    # the shared base model came back untouched (sparsefit trains copies of the base's own tensors)
    assert all(torch.equal(p, before[n]) for n, p in backbone.model.named_parameters())


def test_unbatchable_variants_run_one_at_a_time_with_a_note(tmp_path, capsys):
    # a tied LM head on a decoder-only model is applied to target tokens only: no per-episode routing
    notes: list[str] = []
    configs = [tiny("tiny-causal", "sparsefit", {"components": "lm_head"}), tiny("tiny-t5", "ia3", {})]
    variants = make_variants(configs)
    rows = run_episodes(variants, tmp_path, SEEDS[:2], progress=False, batch_episodes=0, notify=notes.append)
    assert len(rows) == 4 and all({p.name for p in episode_dir(tmp_path, v, s).iterdir()} == FILES
                                  for v in variants for s in SEEDS[:2])
    assert any("LM head" in n and "one at a time" in n for n in notes), notes
    assert any("ia3" in n and "no episode-batched trainer" in n for n in notes), notes
    assert all("batched_episodes" not in r for r in rows)


def test_protocol_bench_cpu_table_shows_batched_equals_sequential(capsys):
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location("gpu_protocol", Path(__file__).resolve().parents[1] / "bench"
                                                  / "gpu_protocol.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["gpu_protocol"] = bench  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    assert bench.main(["--cpu", "--models", "tiny-t5", "--no-compile", "--steps", "2", "--warmup", "0",
                       "--episodes", "3", "--k", "3", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split("  ")[0]: line.split() for line in lines if line.startswith(("(a)", "seq", "batched"))}
    assert set(rows) == {"(a) 1 episode eager fp32", "seq 3 episodes", "batched K=3"}
    assert float(rows["batched K=3"][-1]) < 1e-4  # max |trained delta - sequential| over the 3 episodes


def test_a_diverging_group_writes_no_folder(tmp_path):
    config = tiny("tiny-t5", "sparsefit", {"components": "self.k,ln,ffn"})
    config.train.lr, config.train.steps = 1e12, 30
    variants = make_variants([config])
    with pytest.raises(SparseFitError, match=r"diverged at step \d+ for episode seed\(s\)"):
        run_episodes(variants, tmp_path, SEEDS[:2], progress=False, batch_episodes=2)
    assert list(tmp_path.rglob("*.json")) == [] and list(tmp_path.rglob("*.partial")) == []
