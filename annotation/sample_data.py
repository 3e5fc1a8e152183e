"""Simulated predictions files for trying the app and for tests, built from the e-SNLI dev release.

The "model" here is a stand-in, not a trained model: its label is the gold label for a chosen share of
records (the rest get another label) and its explanation is the second reference explanation. Real studies
use the predictions file the backend writes.
"""

from __future__ import annotations

import random
from pathlib import Path

from sparsefit.predictions import PredictionRecord, write_predictions

ESNLI_LABELS = ["entailment", "neutral", "contradiction"]


def esnli_dev_rows(data_dir: str | Path, limit: int) -> list[dict[str, str]]:
    """The first `limit` examples of the tokenized e-SNLI dev files (`<data_dir>/esnli/*.dev`)."""
    folder = Path(data_dir) / "esnli"
    names = {"premise": "s1.dev", "hypothesis": "s2.dev", "label": "labels.dev",
             "expl_1": "preproc1_expl_1.dev", "expl_2": "preproc1_expl_2.dev", "expl_3": "preproc1_expl_3.dev"}
    columns = {key: (folder / name).read_text(encoding="utf-8").splitlines()[:limit] for key, name in names.items()}
    return [{key: columns[key][i] for key in names} for i in range(limit)]


def simulated_esnli_predictions(data_dir: str | Path, count: int = 30, accuracy: float = 0.8,
                                seed: int = 0) -> list[PredictionRecord]:
    rng = random.Random(seed)
    records = []
    for index, row in enumerate(esnli_dev_rows(data_dir, count)):
        correct = rng.random() < accuracy
        label = row["label"] if correct else rng.choice([l for l in ESNLI_LABELS if l != row["label"]])
        explanation = row["expl_2"] or row["expl_1"]
        records.append(PredictionRecord(
            id=f"esnli-dev-{index}", dataset="esnli", split="validation",
            inputs={"premise": row["premise"], "hypothesis": row["hypothesis"]},
            prompt=f"explain nli hypothesis: {row['hypothesis']} premise: {row['premise']}",
            gold_label=row["label"], gold_explanations=[e for e in (row["expl_1"], row["expl_2"], row["expl_3"]) if e],
            pred_label=label, pred_explanation=explanation, raw_generation=f"{label} because {explanation}",
            correct=correct, model="simulated", method="none", trainable_percent=None, seed=seed,
            metrics={}, label_options=list(ESNLI_LABELS)))
    return records


def write_simulated_esnli(path: str | Path, data_dir: str | Path, count: int = 30, accuracy: float = 0.8,
                          seed: int = 0) -> Path:
    return write_predictions(path, simulated_esnli_predictions(data_dir, count, accuracy, seed))
