"""Few-shot episodes (FEB): a seed picks the training shots and the evaluation sample.

Defaults (REFERENCE §1): e-SNLI 16 shots per label and 116 eval per label (= 348); ComVE and SBIC 24
shots and 175 eval per label; ECQA 48 shots and 350 eval drawn at random (answers vary per question);
sample-nli 16 per label and the rest for evaluation; user tasks 48 random shots and the rest.

Sampling is reproducible: candidates are sorted by id and drawn with `random.Random(seed)`, so the same
seed and pools give the same episode on any machine and under any PYTHONHASHSEED. When the train and
eval pools overlap (e.g. only the e-SNLI dev split is available), evaluation examples are drawn from
what is left after the shots (disjoint by id and by identical inputs).

ComVE training rows: FEB repeats every ComVE training example once per reference explanation (3 each).
`sample_episode` therefore returns `Episode.train` already expanded for ComVE: 48 shots → 144 rows,
one row per (shot, explanation), ids suffixed ``#1``, ``#2``, ``#3`` (see `expand_training_rows`);
`Episode.shots` keeps the 48 sampled examples. For every other dataset `train` is the shots themselves
(SBIC's training split already has one example per implied statement, as in FEB).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field, replace
from typing import Sequence

from sparsefit.data import FIXED_LABELS, Example
from sparsefit.errors import SparseFitError

FEB_SEEDS: tuple[int, ...] = (
    7004, 3639, 6290, 9428, 7056, 4864, 4273, 7632, 2689, 8219, 4523, 2175, 7356, 8975, 51, 4199, 4182, 1331,
    2796, 6341, 7009, 1111, 1967, 1319, 741, 7740, 1335, 9933, 6339, 3112, 1349, 8483, 2348, 834, 6895, 4823,
    2913, 9962, 178, 2147, 8160, 1936, 9991, 6924, 6595, 5358, 2638, 6227, 8384, 2769, 4512, 2051, 4779, 2498,
    176, 9599, 1181, 5320, 588, 4791,
)

# dataset → ((train per label, train total), (eval per label, eval total)); (None, None) eval = the rest
_DEFAULTS: dict[str, tuple[tuple[int | None, int | None], tuple[int | None, int | None]]] = {
    "esnli": ((16, None), (116, None)),
    "comve": ((24, None), (175, None)),
    "sbic": ((24, None), (175, None)),
    "ecqa": ((None, 48), (None, 350)),
    "sample-nli": ((16, None), (None, None)),
}
_USER_TASK_DEFAULTS = ((None, 48), (None, None))
EXPANDED_DATASETS = ("comve",)


@dataclass
class Episode:
    seed: int
    train: list[Example]  # training rows (ComVE: one per shot and explanation)
    eval: list[Example]
    shots: list[Example] = field(default_factory=list)  # the sampled training examples before expansion


def default_shots(dataset: str) -> tuple[int | None, int | None]:
    """(train examples per label or None, train total or None) for `dataset`."""
    return _DEFAULTS.get(dataset, _USER_TASK_DEFAULTS)[0]


def default_eval(dataset: str) -> tuple[int | None, int | None]:
    """(eval examples per label or None, eval total or None); (None, None) = all examples not used as shots."""
    return _DEFAULTS.get(dataset, _USER_TASK_DEFAULTS)[1]


def expand_training_rows(examples: Sequence[Example]) -> list[Example]:
    """One training row per reference explanation; ids get ``#k`` when an example has several."""
    rows: list[Example] = []
    for example in examples:
        if len(example.explanations) == 1:
            rows.append(example)
            continue
        for k, explanation in enumerate(example.explanations, start=1):
            rows.append(replace(example, id=f"{example.id}#{k}", explanations=(explanation,)))
    return rows


def _resolve_counts(defaults: tuple[int | None, int | None], total: int | None, balanced: bool,
                    n_labels: int, what: str) -> tuple[int | None, int | None]:
    """Apply a total override: balanced datasets split it evenly (rounded down) across labels."""
    if total is None:
        return defaults
    if total < 1:
        raise SparseFitError(f"{what} must be at least 1, got {total}", field=what)
    if not balanced:
        return None, total
    if total < n_labels:
        raise SparseFitError(f"{what}={total} is fewer than the {n_labels} labels of a label-balanced dataset",
                             field=what)
    return total // n_labels, None


def _inputs_key(example: Example) -> str:
    return json.dumps(example.inputs, sort_keys=True, ensure_ascii=False)


def _sorted_unique(pool: Sequence[Example], name: str) -> list[Example]:
    ordered = sorted(pool, key=lambda example: example.id)
    for before, after in zip(ordered, ordered[1:]):
        if before.id == after.id:
            raise SparseFitError(f"{name} has the id '{after.id}' twice; ids must be unique", field=name)
    return ordered


def _draw(rng: random.Random, pool: list[Example], per_label: int | None, total: int | None,
          labels: Sequence[str], what: str) -> list[Example]:
    if per_label is None and total is None:
        return list(pool)
    if per_label is None:
        if total > len(pool):  # type: ignore[operator]
            raise SparseFitError(f"{what} needs {total} examples but only {len(pool)} are available", field=what)
        return rng.sample(pool, total)  # type: ignore[arg-type]
    drawn: list[Example] = []
    for label in labels:
        candidates = [example for example in pool if example.label == label]
        if per_label > len(candidates):
            raise SparseFitError(f"{what} needs {per_label} examples labelled '{label}' but only "
                                 f"{len(candidates)} are available", field=what)
        drawn.extend(rng.sample(candidates, per_label))
    return drawn


def sample_episode(dataset: str, train_pool: Sequence[Example], eval_pool: Sequence[Example], seed: int,
                   n_train: int | None = None, n_eval: int | None = None) -> Episode:
    """Draw the shots, then the evaluation sample, for one seed (see the module docstring)."""
    balanced = dataset in FIXED_LABELS
    labels = FIXED_LABELS.get(dataset, ())
    train_counts = _resolve_counts(default_shots(dataset), n_train, balanced, len(labels), "n_train")
    eval_counts = _resolve_counts(default_eval(dataset), n_eval, balanced, len(labels), "n_eval")
    rng = random.Random(seed)
    shots = _draw(rng, _sorted_unique(train_pool, "train pool"), *train_counts, labels, "n_train")
    shot_ids = {example.id for example in shots}
    shot_inputs = {_inputs_key(example) for example in shots}
    remaining = [example for example in _sorted_unique(eval_pool, "eval pool")
                 if example.id not in shot_ids and _inputs_key(example) not in shot_inputs]
    evaluation = _draw(rng, remaining, *eval_counts, labels, "n_eval")
    rng.shuffle(shots)  # mix labels; the trainer's batches should not come label by label
    train = expand_training_rows(shots) if dataset in EXPANDED_DATASETS else list(shots)
    return Episode(seed=seed, train=train, eval=evaluation, shots=shots)
