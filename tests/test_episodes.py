"""Few-shot episodes: FEB sizes, disjointness, reproducibility across processes, ComVE expansion."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from sparsefit.data import Example, data_hash, load_examples
from sparsefit.episodes import (FEB_SEEDS, default_eval, default_shots, expand_training_rows, sample_episode)
from sparsefit.errors import SparseFitError

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
needs_esnli = pytest.mark.skipif(not (SHARED / "esnli" / "labels.dev").exists(),
                                 reason="shared e-SNLI dev data not found at ../shared/data/esnli")
needs_comve = pytest.mark.skipif(not (SHARED / "comve" / "Dev Data").exists(),
                                 reason="shared ComVE data not found at ../shared/data/comve")


@pytest.fixture(scope="module")
def esnli_dev() -> list[Example]:
    if not (SHARED / "esnli" / "labels.dev").exists():
        pytest.skip("shared e-SNLI dev data not found at ../shared/data/esnli")
    return load_examples("esnli", SHARED / "esnli", "dev")


def test_feb_seeds():
    assert len(FEB_SEEDS) == 60 and len(set(FEB_SEEDS)) == 60
    assert FEB_SEEDS[:3] == (7004, 3639, 6290) and FEB_SEEDS[-3:] == (5320, 588, 4791)


def test_defaults_follow_feb():
    assert default_shots("esnli") == (16, None) and default_eval("esnli") == (116, None)
    assert default_shots("comve") == (24, None) and default_eval("comve") == (175, None)
    assert default_shots("sbic") == (24, None) and default_eval("sbic") == (175, None)
    assert default_shots("ecqa") == (None, 48) and default_eval("ecqa") == (None, 350)
    assert default_shots("my-task") == (None, 48) and default_eval("my-task") == (None, None)


def test_esnli_episode_from_one_split(esnli_dev):
    episode = sample_episode("esnli", esnli_dev, esnli_dev, FEB_SEEDS[0])
    assert Counter(e.label for e in episode.train) == {"entailment": 16, "neutral": 16, "contradiction": 16}
    assert Counter(e.label for e in episode.eval) == {"entailment": 116, "neutral": 116, "contradiction": 116}
    train_ids = {e.id for e in episode.train}
    assert not train_ids & {e.id for e in episode.eval}  # same pool: shots never evaluated
    assert len({e.id for e in episode.eval}) == 348
    assert episode.shots == episode.train and episode.seed == FEB_SEEDS[0]
    assert len({e.label for e in episode.train[:6]}) > 1  # shots are mixed, not label by label


def test_same_seed_same_episode_different_seed_different(esnli_dev):
    first = sample_episode("esnli", esnli_dev, esnli_dev, 7004)
    shuffled_pool = list(reversed(esnli_dev))  # input order must not matter
    again = sample_episode("esnli", shuffled_pool, shuffled_pool, 7004)
    assert data_hash(first.train) == data_hash(again.train) and data_hash(first.eval) == data_hash(again.eval)
    other = sample_episode("esnli", esnli_dev, esnli_dev, 3639)
    assert {e.id for e in other.train} != {e.id for e in first.train}


def _episode_hash_in_subprocess(hash_seed: str) -> str:
    code = ("from sparsefit.data import load_examples, data_hash\n"
            "from sparsefit.episodes import sample_episode\n"
            "pool = load_examples('sample-nli', None, 'train')\n"
            "e = sample_episode('sample-nli', pool, pool, 2689)\n"
            "print(data_hash(e.train) + data_hash(e.eval))\n")
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                            cwd=ROOT)
    return result.stdout.strip()


def test_episode_is_identical_across_processes_and_hash_seeds():
    pool = load_examples("sample-nli", None, "train")
    here = sample_episode("sample-nli", pool, pool, 2689)
    expected = data_hash(here.train) + data_hash(here.eval)
    assert _episode_hash_in_subprocess("1") == expected
    assert _episode_hash_in_subprocess("12345") == expected


def test_sample_nli_quickstart_split():
    pool = load_examples("sample-nli", None, "train")
    episode = sample_episode("sample-nli", pool, pool, 7004)
    assert len(episode.train) == 48 and len(episode.eval) == 42
    assert Counter(e.label for e in episode.eval) == {"entailment": 14, "neutral": 14, "contradiction": 14}
    assert not {e.id for e in episode.train} & {e.id for e in episode.eval}


def test_overrides_split_evenly_and_shortage_is_explained():
    pool = load_examples("sample-nli", None, "train")
    episode = sample_episode("sample-nli", pool, pool, 1, n_train=9, n_eval=10)  # 10 → 3 per label
    assert Counter(e.label for e in episode.train) == {"entailment": 3, "neutral": 3, "contradiction": 3}
    assert len(episode.eval) == 9
    with pytest.raises(SparseFitError, match="needs 31 examples labelled 'entailment' but only 30 are available"):
        sample_episode("sample-nli", pool, pool, 1, n_train=93)
    with pytest.raises(SparseFitError, match="needs 20 examples labelled 'entailment' but only 14"):
        sample_episode("sample-nli", pool, pool, 1, n_eval=60)
    with pytest.raises(SparseFitError, match="fewer than the 3 labels"):
        sample_episode("sample-nli", pool, pool, 1, n_train=2)


def test_duplicate_ids_in_pool_are_rejected():
    pool = load_examples("sample-nli", None, "train")
    with pytest.raises(SparseFitError, match="twice"):
        sample_episode("sample-nli", pool + pool[:1], pool, 1)


@needs_comve
def test_comve_training_rows_are_expanded_per_explanation():
    train = load_examples("comve", SHARED / "comve", "train")
    dev = load_examples("comve", SHARED / "comve", "dev")
    episode = sample_episode("comve", train, dev, 7004)
    assert len(episode.shots) == 48 and len(episode.train) == 144
    assert Counter(e.label for e in episode.shots) == {"choice1": 24, "choice2": 24}
    assert Counter(e.label for e in episode.eval) == {"choice1": 175, "choice2": 175}
    assert all(len(e.explanations) == 3 for e in episode.eval)
    first = episode.shots[0]
    rows = [e for e in episode.train if e.id.startswith(first.id + "#")]
    assert [r.explanations[0] for r in rows] == list(first.explanations)
    assert all(r.inputs == first.inputs and r.label == first.label for r in rows)


def test_expand_training_rows_keeps_single_reference_examples():
    single = Example("a", "t", "train", {"x": "1"}, "l", ("only",))
    multi = Example("b", "t", "train", {"x": "2"}, "l", ("one", "two"))
    assert [e.id for e in expand_training_rows([single, multi])] == ["a", "b#1", "b#2"]


def test_ecqa_draws_random_totals():
    train = load_examples("ecqa", FIXTURES / "ecqa", "train")
    dev = load_examples("ecqa", FIXTURES / "ecqa", "dev")
    episode = sample_episode("ecqa", train, dev, 7004, n_train=2, n_eval=2)
    assert len(episode.train) == 2 and len(episode.eval) == 2
    with pytest.raises(SparseFitError, match="needs 48 examples but only 3 are available"):
        sample_episode("ecqa", train, dev, 7004)


def test_user_task_defaults_to_48_random_shots_and_the_rest():
    pool = [Example(f"u{i:03d}", "mine", "train", {"text": f"t{i}"}, "a" if i % 3 else "b", ("e",))
            for i in range(60)]
    episode = sample_episode("mine", pool, pool, 7004)
    assert len(episode.train) == 48 and len(episode.eval) == 12
    assert {e.id for e in episode.train} | {e.id for e in episode.eval} == {e.id for e in pool}
