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
                rungs=(Rung(2, 1), Rung(3, 2)), keep=0.5, n_train=9, n_val=3, validation_seeds=(11, 12, 13),
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
    for row in ranked:  # a candidate's seconds are what all its trials cost, over every rung it reached
        assert row["seconds"] == pytest.approx(sum(t["seconds"] for t in trials if t["candidate"] == row["candidate"]))
    assert len(trials) == 3 + 2 * 2
    # each rung draws fresh validation episodes; only the last rung generates answers
    assert {t["seed"] for t in trials if t["steps"] == 2} == {11}
    assert {t["seed"] for t in trials if t["steps"] == 3} == {12, 13}
    assert all(t["accuracy"] is None for t in trials if t["steps"] == 2)
    assert all(t["accuracy"] is not None and t["nbertscore"] is not None for t in trials if t["steps"] == 3)
    assert all([c["steps"] for c in t["checkpoints"]] == [t["steps"]] for t in trials)  # check_every 10 > steps
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
    # the search's own shot count (6) differs from the reported runs' (9): the reported draw must be rebuilt
    # with theirs, since the shots come first and move the eval sample
    settings = _settings("tiny-causal", exclude_eval_seeds=(7004, 6290), n_eval=6, n_train=6, report_n_train=9)
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
    # fish may not choose the frozen embedding: a budget past the rest fails before any training
    with pytest.raises(SparseFitError, match="only [0-9,]+ are not excluded; lower --budget or pass --no-fish"):
        build_candidates(_settings("tiny-causal", budget=0.99))
    assert {c.method for c in build_candidates(_settings("tiny-causal", budget=0.99, fish=False))} == {"sparsefit"}


def test_validation_sizes_the_pool_cannot_give_name_the_search_flags(tmp_path):
    with pytest.raises(SparseFitError, match="field '--n-val': --n-val needs 500 examples labelled .* in the "
                                             "search pool \\(90 examples: the training split\\)"):
        run_search(_settings("tiny-causal", n_val=1500), tmp_path / "s", progress=False)
    with pytest.raises(SparseFitError, match="field '--n-train': --n-train needs 100 examples"):
        run_search(_settings("tiny-causal", n_train=300), tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()  # refused before any folder or model


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
    path.write_text(json.dumps({"budget": "2%", "lr": 3e-4}))  # no "method": a budget makes it fish's
    assert get_method("fish", preset=str(path)).training_defaults() == {"lr": 3e-4}
    with pytest.raises(SparseFitError, match="this preset is for method 'fish'"):
        get_method("sparsefit", preset=str(path)).prepare(backbone.model, backbone.arch)
    for bad, message in [({"components": "ln", "lr": "3e-4"}, "field 'lr': 'lr' must be a positive number"),
                         ({"components": "ln", "steps": 0}, "field 'steps': 'steps' must be a whole number"),
                         ({"components": ["ln"]}, "field 'components': 'components' must be a string"),
                         ({"method": "fish", "budget": 5}, "budget 5 is ambiguous")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(SparseFitError, match=message):
            get_method(bad.get("method", "sparsefit"), preset=str(path)).prepare(backbone.model, backbone.arch)


def test_cli_search_error_is_one_line(tmp_path):
    from sparsefit.backbones import resolve_model_path
    resolve_model_path("tiny-causal")  # built here, once: its first build prints progress bars on stderr
    result = subprocess.run([sys.executable, "-m", "sparsefit", "search", "--dataset", "sample-nli", "--model",
                             "tiny-causal", "--budget", "0.00001%", "--out", str(tmp_path / "s")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "no candidate subset fits the budget" in result.stderr
    same_split = subprocess.run([sys.executable, "-m", "sparsefit", "search", "--dataset", "sample-nli", "--model",
                                 "tiny-causal", "--train-split", "dev", "--budget", "0.00001%", "--out",
                                 str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    note, error = same_split.stderr.splitlines()  # a reminder first, then the one-line error
    assert note.startswith("note: searching on the 'dev' split") and "--exclude-eval-of" in note
    assert error.startswith("error: ")


def test_search_flags_read_the_reported_runs_settings_and_refuse_a_repeated_validation_seed():
    import argparse
    from sparsefit.search import register_cli, settings_from_args
    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    base = ["search", "--dataset", "esnli", "--train-split", "dev", "--exclude-eval-of", "7004,6290"]
    settings = settings_from_args(parser.parse_args(base + ["--n-train", "12", "--report-train-split", "train"]))
    assert (settings.n_train, settings.report_n_train, settings.report_train_split) == (12, None, "train")
    with pytest.raises(SparseFitError, match="--validation-seeds repeats a seed"):
        settings_from_args(parser.parse_args(base + ["--validation-seeds", "1,2,2"]))


def test_checkpoints_choose_the_steps_of_the_preset(tmp_path):
    """With a checkpoint every step, the preset's steps are those of the best mean checkpoint of the last rung."""
    from sparsefit.search import best_checkpoint
    settings = _settings("tiny-causal", components=("ln",), fish=False, rungs=(Rung(4, 2),), check_every=1)
    ranked = run_search(settings, tmp_path / "s", progress=False)
    trials = _lines(tmp_path / "s" / TRIALS_FILE)
    assert all([c["steps"] for c in t["checkpoints"]] == [1, 2, 3, 4] for t in trials)
    steps, accuracy, loss = best_checkpoint(trials)
    means = {k: (sum(c["label_accuracy"] for t in trials for c in t["checkpoints"] if c["steps"] == k) / 2,
                 sum(c["val_loss"] for t in trials for c in t["checkpoints"] if c["steps"] == k) / 2)
             for k in range(1, 5)}
    assert means[steps][0] == max(m[0] for m in means.values()) and accuracy == pytest.approx(means[steps][0])
    assert loss == min(m[1] for m in means.values() if m[0] == means[steps][0])
    assert ranked[0]["best_steps"] == steps
    assert json.loads((tmp_path / "s" / BEST_FILE).read_text())["steps"] == steps


@pytest.mark.parametrize("model,lr,steps", [("tiny-causal", 3e-3, 80), ("tiny-t5", 1e-2, 40)])
def test_teacher_forced_label_accuracy_equals_greedy_generation(model, lr, steps):
    """The one-pass validation score says, per example, whether greedy decoding gets the label right (as parsed)."""
    from sparsefit.data import load_examples
    from sparsefit.generate import generate
    from sparsefit.prompts import format_input, format_target, is_correct, parse_generation
    from sparsefit.train import train, validation_score
    torch.manual_seed(0)
    torch.set_num_threads(1)
    backbone = load_backbone(model)
    examples = load_examples("sample-nli", None, "train")[:12]
    inputs, targets = [format_input(e) for e in examples], [format_target(e) for e in examples]
    method = get_method("full")
    model_ = method.prepare(backbone.model, backbone.arch)
    config = TrainConfig(lr=lr, steps=steps // 2, batch_size=4, threads=1)
    seen = []
    for trained in (0, steps // 2, steps):  # untrained, half-trained (a mix, e.g. "becaused"), memorised
        if trained:
            train(backbone, method, model_, inputs, targets, config, progress=False)
        result = validation_score(backbone, model_, inputs, targets, config)
        texts = generate(backbone, model_, inputs, batch_size=4, max_new_tokens=24, progress=False)
        greedy = [is_correct(parse_generation(t, e.dataset)[0], e.label, e.dataset) for t, e in zip(texts, examples)]
        assert result.matches == greedy, (texts, [e.label for e in examples])
        assert result.label_accuracy == pytest.approx(100 * sum(greedy) / len(greedy))
        assert result.loss > 0
        seen.append(sum(greedy))
    assert seen[-1] > seen[0]  # the check is not vacuous: training made the model answer the gold labels
