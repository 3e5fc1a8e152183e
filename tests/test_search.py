"""Subset search end to end on tiny models: ranked table, resume, setup checks, budget/component errors, presets."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsefit.backbones import load_backbone
from sparsefit.config import RunConfig, TrainConfig
from sparsefit.errors import SparseFitError
from sparsefit.methods import get_method
from sparsefit.runner import run_episode
from sparsefit.search import (BEST_FILE, TABLE_FILE, TRIALS_FILE, Rung, SearchSettings, build_candidates,
                              parse_rungs, run_search)

ROOT = Path(__file__).resolve().parents[1]


def _settings(model: str, **extra) -> SearchSettings:
    base = dict(dataset="sample-nli", model=model, budget=0.2, lrs=(1e-2,), components=("ln", "self.q,ln"),
                rungs=(Rung(2, 1), Rung(3, 2)), keep=0.5, n_train=9, n_val=3, validation_seeds=(11, 12),
                max_new_tokens=6, threads=1)
    return SearchSettings(**{**base, **extra})


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("model", ["tiny-causal", "tiny-t5"])
def test_search_ranks_resumes_and_writes_a_usable_preset(tmp_path, model):
    torch.set_num_threads(1)
    backbone = load_backbone(model)
    out = tmp_path / "search"
    ranked = run_search(_settings(model), out, progress=False, backbone=backbone)
    assert [r["rank"] for r in ranked] == [1, 2, 3]  # ln, self.q,ln and fish at 20%
    assert {r["method"] for r in ranked} == {"sparsefit", "fish"}
    finalists = [r for r in ranked if r["rung"] == 2]
    assert len(finalists) == 2 and ranked[:2] == finalists  # keep 0.5 of 3 -> 2 go on, ranked first
    assert all(r["episodes"] == 2 and r["steps"] == 3 for r in finalists)
    assert all(0 < r["trainable_percent"] <= 20.0 + 1e-6 for r in ranked)
    trials = _lines(out / TRIALS_FILE)
    assert len(trials) == 3 + 2 * 2
    assert (out / TABLE_FILE).read_text().startswith("rank,")

    # validation examples come from the training split, disjoint from the shots of the same episode
    # (checked on the sampler the search uses): nothing from an eval split is ever loaded
    from sparsefit.data import load_examples
    from sparsefit.episodes import sample_episode
    episode = sample_episode("sample-nli", load_examples("sample-nli", None, "train"),
                             load_examples("sample-nli", None, "train"), 11, 9, 3)
    assert not {e.id for e in episode.train} & {e.id for e in episode.eval}

    # resume: nothing runs again; a lost last trial is the only one redone
    again = run_search(_settings(model), out, progress=False, backbone=backbone)
    assert again == ranked and len(_lines(out / TRIALS_FILE)) == 7
    lines = (out / TRIALS_FILE).read_text().splitlines()
    (out / TRIALS_FILE).write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # crash mid-write
    run_search(_settings(model), out, progress=False, backbone=backbone)
    assert len(_lines(out / TRIALS_FILE)) == 7  # the cut line was dropped and its trial redone

    # best_preset.json trains the same configuration through `run`
    preset = json.loads((out / BEST_FILE).read_text())
    assert preset["steps"] == 3 and preset["lr"] == 1e-2
    options = {"preset": str(out / BEST_FILE)}
    config = RunConfig(dataset="sample-nli", train_split="train", eval_split="train", model=model,
                       method=preset["method"], method_options=options, n_train=6, n_eval=3, max_new_tokens=4,
                       train=TrainConfig(batch_size=2))
    results = run_episode(config, tmp_path / "run", backbone=backbone, progress=False, evaluate=False)
    assert results["train_config"]["lr"] == 1e-2 and results["train_config"]["steps"] == 3


def test_excluded_reporting_episodes_never_reach_the_search_pool():
    from sparsefit.data import load_examples
    from sparsefit.episodes import sample_episode
    from sparsefit.search import search_pool
    settings = _settings("tiny-causal", exclude_eval_seeds=(7004, 6290), n_eval=6)
    full = load_examples("sample-nli", None, "train")
    pool = search_pool(settings)
    for seed in (7004, 6290):
        hidden = {e.id for e in sample_episode("sample-nli", full, full, seed, 9, 6).eval}
        assert len(hidden) == 6 and not hidden & {e.id for e in pool}
    assert len(pool) == len(full) - len({e.id for s in (7004, 6290)
                                         for e in sample_episode("sample-nli", full, full, s, 9, 6).eval})


def test_a_folder_of_another_setup_is_refused(tmp_path):
    out = tmp_path / "search"
    quick = dict(components=("ln",), fish=False, rungs=(Rung(1, 1),))
    run_search(_settings("tiny-causal", **quick), out, progress=False)
    with pytest.raises(SparseFitError, match="another setup \\(model: 'tiny-causal' there, 'tiny-t5' now\\)"):
        run_search(_settings("tiny-t5", **quick), out, progress=False)
    with pytest.raises(SparseFitError, match="another setup \\(budget"):
        run_search(_settings("tiny-causal", **{**quick, "budget": 0.3}), out, progress=False)
    assert len(_lines(out / TRIALS_FILE)) == 1  # nothing was added by the refused runs


def test_budget_nothing_fits_and_unknown_component_are_clear_errors():
    with pytest.raises(SparseFitError, match="no candidate subset fits the budget of 0.0001%.*the smallest, 'ln'"):
        build_candidates(_settings("tiny-causal", budget=1e-6, components=None))
    with pytest.raises(SparseFitError, match="unknown component 'slef.q'"):
        build_candidates(_settings("tiny-causal", components=("slef.q,ln",)))
    with pytest.raises(SparseFitError, match="steps:episodes"):
        parse_rungs("20-1")


def test_preset_file_errors_name_file_and_key(tmp_path):
    path = tmp_path / "preset.json"
    path.write_text(json.dumps({"components": "ln", "learning_rate": 1e-3}))
    backbone = load_backbone("tiny-causal")
    with pytest.raises(SparseFitError, match=f"{path}, field 'learning_rate': unknown key in preset file"):
        get_method("sparsefit", preset=str(path)).prepare(backbone.model, backbone.arch)
    path.write_text(json.dumps({"method": "fish", "budget": 0.01, "lr": 1e-3}))
    with pytest.raises(SparseFitError, match="this preset is for method 'fish'"):
        get_method("sparsefit", preset=str(path)).prepare(backbone.model, backbone.arch)
    assert get_method("fish", preset=str(path)).training_defaults() == {"lr": 1e-3}


def test_cli_search_error_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sparsefit", "search", "--dataset", "sample-nli", "--model",
                             "tiny-causal", "--budget", "0.00001%", "--out", str(tmp_path / "s")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "no candidate subset fits the budget" in result.stderr
