"""Analysis of a study database: scores, QC, agreement and correlations against independent computations.

Databases are real SQLite files built through `annotation.schema.open_db` with rows written as the schema
says (the store is not used, so these tests only depend on the schema contract).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from annotation.analysis import QCSettings, analyze, format_report, run_analysis
from annotation.schema import open_db
from conftest import free_port

REPO = Path(__file__).resolve().parents[1]

PROTOCOL = {
    "name": "evil-test", "title": "Rate explanations", "instructions_md": "Rate.",
    "question": "Given {context}, does this explanation justify the answer to the question?",
    "contexts": {"esnli": "the two sentences above", "default": "the input above"},
    "scale": [
        {"value": "yes", "label": "Yes", "score": 1.0, "key": "1"},
        {"value": "weak_yes", "label": "Weak yes", "score": 2 / 3, "key": "2"},
        {"value": "weak_no", "label": "Weak no", "score": 1 / 3, "key": "3"},
        {"value": "no", "label": "No", "score": 0.0, "key": "4"},
    ],
    "binary_positive": ["yes", "weak_yes"],
    "gate": {"enabled": True, "policy": "record"},
    "rate": ["model", "gold"],
    "shortcomings": [{"value": "restates_input", "label": "Restates the input"},
                     {"value": "insufficient", "label": "Insufficient justification"},
                     {"value": "confusing_or_wrong", "label": "Confusing or wrong"},
                     {"value": "none", "label": "None of these"}],
    "judge_as_if_label_correct": True, "comment": True,
    "defaults": {"items_per_page": 10, "annotators_per_item": 3, "only_correct": True, "per_label": 2},
}
SCORE = {p["value"]: p["score"] for p in PROTOCOL["scale"]}
VALUES = [p["value"] for p in PROTOCOL["scale"]]


def make_record(record_id: str, *, dataset="esnli", model="t5-base", method="sparsefit", gold_label="entailment",
                pred_label=None, metrics=None) -> dict:
    pred_label = gold_label if pred_label is None else pred_label
    return {
        "id": record_id, "dataset": dataset, "split": "dev",
        "inputs": {"premise": f"premise {record_id}", "hypothesis": f"hypothesis {record_id}"},
        "prompt": f"explain nli hypothesis: h premise: p {record_id}", "gold_label": gold_label,
        "gold_explanations": [f"gold explanation {record_id}", "second reference"], "pred_label": pred_label,
        "pred_explanation": f"model explanation {record_id}",
        "raw_generation": f"{pred_label} because model explanation {record_id}",
        "correct": pred_label == gold_label, "model": model, "method": method, "trainable_percent": 6.84,
        "seed": 7004, "metrics": metrics if metrics is not None else {"bertscore_f1": None, "bleu": None},
    }


class StudyBuilder:
    """Writes a study, its items, annotators, assignments and ratings following annotation/schema.py."""

    def __init__(self, db_path: Path, study_id: str = "s1", protocol: dict | None = None):
        self.db_path, self.study_id = db_path, study_id
        self.protocol = copy.deepcopy(protocol or PROTOCOL)
        self.db = open_db(db_path)
        self.db["studies"].insert({
            "id": study_id, "name": f"study {study_id}", "created_at": "2026-01-01T00:00:00+00:00",
            "preset": self.protocol["name"], "protocol_json": json.dumps(self.protocol),
            "predictions_path": "preds.jsonl", "predictions_sha256": "0" * 64, "items_per_page": 10,
            "annotators_per_item": 3, "selection_json": "{}", "abandon_minutes": 30, "completion_code": "C0DE",
            "status": "open"})
        self.items: dict[str, dict] = {}
        self._annotators: set[str] = set()

    def add_item(self, record_id: str, **record_fields) -> str:
        record = make_record(record_id, **record_fields)
        item_id = f"{self.study_id}-{record_id}"
        self.db["items"].insert({
            "id": item_id, "study_id": self.study_id, "record_id": record_id, "position": len(self.items),
            "dataset": record["dataset"], "gold_label": record["gold_label"], "pred_label": record["pred_label"],
            "correct": int(record["correct"]), "model": record["model"], "method": record["method"],
            "record_json": json.dumps(record)})
        self.items[item_id] = record
        return item_id

    def annotator(self, name: str) -> str:
        annotator_id = f"ann-{name}"
        if annotator_id not in self._annotators:
            self.db["annotators"].insert({"id": annotator_id, "study_id": self.study_id, "token": f"SECRET-{name}",
                                          "source": "link", "created_at": "2026-01-01T00:00:00+00:00"})
            self._annotators.add(annotator_id)
        return annotator_id

    def assign(self, item_id: str, name: str, *, gate_correct: int | None = 1, seconds: float | None = 60.0) -> None:
        self.db["assignments"].insert({
            "study_id": self.study_id, "item_id": item_id, "annotator_id": self.annotator(name),
            "status": "submitted", "assigned_at": "2026-01-01T00:00:00+00:00",
            "submitted_at": "2026-01-01T00:01:00+00:00", "order_json": json.dumps(["gold", "model"]),
            "gate_answer": "entailment" if gate_correct else "neutral", "gate_correct": gate_correct,
            "seconds_spent": seconds})

    def rate(self, item_id: str, name: str, question: str, value: str, *, shortcomings=None, seconds=None) -> None:
        self.db["ratings"].insert({
            "study_id": self.study_id, "item_id": item_id, "annotator_id": self.annotator(name),
            "question": question, "shown_position": 1 if question == "gold" else 2, "rating": value,
            "score": SCORE.get(value, 0.0),
            "shortcomings_json": None if shortcomings is None else json.dumps(shortcomings),
            "comment": None, "seconds_spent": seconds, "created_at": "2026-01-01T00:01:00+00:00", "origin": "app"})

    def rate_item(self, item_id: str, name: str, model: str, gold: str | None = None, **assign_kwargs) -> None:
        self.assign(item_id, name, **assign_kwargs)
        self.rate(item_id, name, "model", model)
        if gold is not None:
            self.rate(item_id, name, "gold", gold)


def random_study(db_path: Path, *, seed: int = 1, systems=(("t5-base", "sparsefit"), ("t5-base", "lora"),
                                                           ("t5-large", "sparsefit")), items_per_system: int = 12):
    """Three systems, items with 3 raters except some with 2 and one with 1, metrics on every record."""
    rng = random.Random(seed)
    builder = StudyBuilder(db_path)
    labels = ["entailment", "neutral", "contradiction"]
    for s, (model, method) in enumerate(systems):
        for i in range(items_per_system):
            gold = labels[i % 3]
            pred = gold if i % 4 else labels[(i + 1) % 3]
            metrics = {"bertscore_f1": round(rng.uniform(40, 95), 2), "bleu": round(rng.uniform(0, 40), 1),
                       "meteor": None if i == 5 else round(rng.uniform(0, 1), 3)}
            item = builder.add_item(f"{s}-{i}", model=model, method=method, gold_label=gold, pred_label=pred,
                                    metrics=metrics)
            raters = 1 if i == 0 else (2 if i % 5 == 1 else 3)
            for r in range(raters):
                bias = s * 0.15
                weights = [0.25 + bias, 0.25, 0.25, 0.25 - bias / 2]
                builder.rate_item(item, f"a{(i + r) % 6}", rng.choices(VALUES, weights)[0],
                                  rng.choices(VALUES, [0.5, 0.3, 0.1, 0.1])[0])
    return builder


# ---------------------------------------------------------------- independent reference computations

def reference_item_scores(builder: StudyBuilder, question: str) -> dict[str, float]:
    """Exact item means (fractions), so tied items are equal floats whatever the row order."""
    rows = builder.db.execute("SELECT item_id, rating FROM ratings WHERE question = ?", [question]).fetchall()
    scores = defaultdict(list)
    for item_id, rating in rows:
        scores[item_id].append(Fraction(SCORE[rating]).limit_denominator(1000))
    return {item: float(sum(v) / len(v)) for item, v in scores.items()}


def find(rows, **where):
    matches = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    assert len(matches) == 1, (where, matches)
    return matches[0]


def test_system_scores_match_independent_computation(tmp_path):
    builder = random_study(tmp_path / "study.db")
    report = analyze(builder.db_path, "s1")
    for question in ("model", "gold"):
        item_scores = reference_item_scores(builder, question)
        per_system = defaultdict(list)
        for item_id, score in item_scores.items():
            rec = builder.items[item_id]
            per_system[(rec["model"], rec["method"], rec["dataset"])].append(score * 100)
        assert len(per_system) == 3
        for (model, method, dataset), values in per_system.items():
            row = find(report["scores"], model=model, method=method, dataset=dataset, question=question)
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            assert row["n_items"] == len(values)
            assert row["mean"] == pytest.approx(mean)
            assert row["std"] == pytest.approx(std)
            assert row["stderr"] == pytest.approx(std / math.sqrt(len(values)))
            assert row["ci_low"] < mean < row["ci_high"]
            # a 95% bootstrap interval of a mean is about +-1.96 standard errors
            assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * 1.96 * std / math.sqrt(len(values)), rel=0.35)
    # seeded: the same call gives the same intervals; another seed different ones
    assert analyze(builder.db_path, "s1")["scores"] == report["scores"]
    other = analyze(builder.db_path, "s1", QCSettings(seed=5))["scores"]
    assert [r["ci_low"] for r in other] != [r["ci_low"] for r in report["scores"]]
    json.dumps(report, allow_nan=False)


def test_breakdowns_by_gold_label_and_correctness(tmp_path):
    builder = random_study(tmp_path / "study.db")
    report = analyze(builder.db_path, "s1")
    item_scores = reference_item_scores(builder, "model")
    for key, field in (("gold_label", "gold_label"), ("correct", "correct")):
        groups = defaultdict(list)
        for item_id, score in item_scores.items():
            rec = builder.items[item_id]
            groups[(rec["model"], rec["method"], rec[field])].append(score * 100)
        rows = [r for r in report[f"breakdown_by_{key}"] if r["question"] == "model"]
        assert len(rows) == len(groups)
        for (model, method, value), values in groups.items():
            row = find(rows, model=model, method=method, **{key: value})
            assert row["n_items"] == len(values)
            assert row["mean"] == pytest.approx(sum(values) / len(values))


def test_agreement_in_report_matches_statsmodels_and_krippendorff(tmp_path):
    import krippendorff

    builder = random_study(tmp_path / "study.db")
    report = analyze(builder.db_path, "s1")
    row = find(report["agreement"], scope="all", question="model")
    ratings = builder.db.execute("SELECT item_id, annotator_id, rating FROM ratings WHERE question='model'").fetchall()
    by_item = defaultdict(list)
    for item_id, _, rating in ratings:
        by_item[item_id].append(rating)
    # kappas use the items with the modal rater count (3 here); 1- and 2-rater items are dropped and counted
    three = [v for v in by_item.values() if len(v) == 3]
    assert row["raters_per_item_for_kappa"] == 3
    assert row["items_dropped_for_kappa"] == len(by_item) - len(three)
    table = np.array([[sum(r in ("yes", "weak_yes") for r in v), sum(r in ("weak_no", "no") for r in v)]
                      for v in three])
    assert row["fleiss_kappa_binary"]["value"] == pytest.approx(sm_fleiss_kappa(table, method="fleiss"))
    assert row["randolph_free_marginal_kappa_binary"]["value"] == pytest.approx(
        sm_fleiss_kappa(table, method="randolph"))
    # alpha uses every rating (missing ones are missing data); the package wants raters x units
    annotators = sorted({a for _, a, _ in ratings})
    items = sorted(by_item)
    matrix = np.full((len(annotators), len(items)), np.nan)
    order = {"no": 0, "weak_no": 1, "weak_yes": 2, "yes": 3}
    for item_id, annotator_id, rating in ratings:
        matrix[annotators.index(annotator_id), items.index(item_id)] = order[rating]
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal",
                                  value_domain=[0, 1, 2, 3])
    assert row["krippendorff_alpha_ordinal"]["value"] == pytest.approx(expected)
    unanimous = sum(len(v) >= 2 and len({r in ("yes", "weak_yes") for r in v}) == 1 for v in by_item.values())
    assert row["unanimous_items_binary"] == unanimous


def test_correlations_match_scipy_at_item_and_system_level(tmp_path):
    builder = random_study(tmp_path / "study.db")
    report = analyze(builder.db_path, "s1", QCSettings(n_boot=300))
    corr = report["correlations"]
    item_scores = reference_item_scores(builder, "model")
    for metric in ("bertscore_f1", "bleu", "meteor"):
        pairs = [(s, builder.items[i]["metrics"][metric]) for i, s in sorted(item_scores.items())
                 if builder.items[i]["metrics"][metric] is not None]
        human, auto = zip(*pairs)
        item = find(corr["item_level"], metric=metric)
        assert item["n"] == len(pairs)
        assert item["spearman"]["value"] == pytest.approx(scipy_stats.spearmanr(human, auto).statistic)
        assert item["kendall"]["value"] == pytest.approx(scipy_stats.kendalltau(human, auto).statistic)
        assert item["spearman"]["ci_low"] <= item["spearman"]["value"] <= item["spearman"]["ci_high"]
        systems = defaultdict(list)
        for item_id, score in item_scores.items():
            rec = builder.items[item_id]
            if rec["metrics"][metric] is not None:
                systems[(rec["model"], rec["method"])].append((score, rec["metrics"][metric]))
        sys_h = [np.mean([h for h, _ in v]) for _, v in sorted(systems.items())]
        sys_a = [np.mean([a for _, a in v]) for _, v in sorted(systems.items())]
        system = find(corr["system_level"], metric=metric)
        assert system["n_systems"] == 3
        assert system["spearman"]["value"] == pytest.approx(scipy_stats.spearmanr(sys_h, sys_a).statistic)
        assert system["kendall"]["value"] == pytest.approx(scipy_stats.kendalltau(sys_h, sys_a).statistic)
        assert system["kendall"]["ci_low"] is not None


def test_undefined_statistics_are_none_with_a_reason(tmp_path):
    """All ratings identical, one system, no metrics: no NaN anywhere, reasons instead."""
    builder = StudyBuilder(tmp_path / "same.db")
    for i in range(4):
        item = builder.add_item(f"r{i}", metrics={"bertscore_f1": 50.0 + i})
        for name in ("a", "b", "c"):
            builder.rate_item(item, name, "yes", "yes")
    report = analyze(builder.db_path, "s1")
    json.dumps(report, allow_nan=False)
    row = find(report["agreement"], scope="all", question="model")
    assert row["fleiss_kappa_binary"]["value"] is None and "one category" in row["fleiss_kappa_binary"]["reason"]
    assert row["randolph_free_marginal_kappa_binary"]["value"] == pytest.approx(1.0)
    assert row["krippendorff_alpha_ordinal"]["value"] is None and row["krippendorff_alpha_ordinal"]["reason"]
    assert row["unanimous_items_binary"] == 4 and row["percent_agreement_binary"]["value"] == pytest.approx(100)
    item = find(report["correlations"]["item_level"], metric="bertscore_f1")
    assert item["spearman"]["value"] is None and "human scores are all equal" in item["spearman"]["reason"]
    system = find(report["correlations"]["system_level"], metric="bertscore_f1")
    assert system["spearman"]["value"] is None and "at least 3 systems" in system["spearman"]["reason"]
    text = format_report(report)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE) and "undefined: all ratings fall in one category" in text


def test_qc_rules_exclude_and_count(tmp_path):
    builder = StudyBuilder(tmp_path / "qc.db")
    items = [builder.add_item(f"r{i}") for i in range(6)]
    for item in items:  # good annotators: accept gold, take their time
        builder.rate_item(item, "good1", "yes", "yes")
        builder.rate_item(item, "good2", "weak_no", "weak_yes")
    builder.rate_item(items[0], "gatewrong", "no", "no", gate_correct=0)                # 2 ratings
    builder.rate_item(items[1], "fast", "no", "yes", seconds=2.0)                       # 2 ratings
    builder.assign(items[2], "fast2", seconds=None)                                     # time from ratings
    builder.rate(items[2], "fast2", "model", "no", seconds=1.0)
    builder.rate(items[2], "fast2", "gold", "yes", seconds=1.5)
    for item in items[:4]:                                                              # 8 ratings
        builder.rate_item(item, "rejecter", "yes", "no")
    builder.rate_item(items[5], "mystery", "maybe", None)                               # not on the scale
    builder.rate_item(items[5], "modelonly", "yes", None)                               # kept: no gold ratings
    builder.assign(items[4], "blocked", gate_correct=0)                                 # blocked, no ratings

    settings = QCSettings(min_seconds=5, min_gold_acceptance=0.5)
    result = run_analysis(builder.db_path, "s1", settings)
    qc = result.report["qc"]
    assert qc["excluded"] == {"unknown_rating": 1, "gate_wrong": 2, "too_fast": 4, "low_gold_acceptance": 8}
    assert qc["ratings_total"] == 24 + 2 + 2 + 2 + 8 + 1 + 1
    assert qc["ratings_kept"] == 25
    assert [a["annotator_id"] for a in qc["annotators_excluded"]] == ["ann-rejecter"]
    assert qc["annotators_excluded"][0]["gold_acceptance"] == 0.0
    assert qc["annotators_without_gold_ratings"] == 1  # modelonly (mystery's one rating went under rule 1)
    assert qc["gate_assignments"] == {"answered": 6 * 2 + 1 + 1 + 1 + 4 + 1 + 1 + 1, "wrong": 2,
                                      "wrong_without_ratings": 1}
    kept_model = find(result.report["scores"], question="model")
    # good1 (yes) and good2 (weak no) on every item, plus modelonly's yes on the last one
    assert kept_model["mean"] == pytest.approx((5 * (1 + 1 / 3) / 2 + (1 + 1 / 3 + 1) / 3) / 6 * 100)

    # switching rules off brings the ratings back, and each count drops to 0
    loose = analyze(builder.db_path, "s1", QCSettings(gate_filter=False))["qc"]
    assert loose["excluded"] == {"unknown_rating": 1, "gate_wrong": 0, "too_fast": 0, "low_gold_acceptance": 0}
    # a protocol that says not to exclude wrong gate answers
    other = StudyBuilder(tmp_path / "keep.db", protocol={**PROTOCOL, "gate": {"enabled": True, "policy": "record",
                                                                             "exclude_wrong": False}})
    item = other.add_item("x")
    other.rate_item(item, "a", "yes", "yes", gate_correct=0)
    assert analyze(other.db_path, "s1")["qc"]["excluded"]["gate_wrong"] == 0


def test_shortcomings_and_rating_distribution(tmp_path):
    builder = StudyBuilder(tmp_path / "sc.db")
    items = [builder.add_item(f"r{i}") for i in range(3)]
    builder.assign(items[0], "a")
    builder.rate(items[0], "a", "model", "no", shortcomings=["restates_input", "insufficient"])
    builder.assign(items[1], "a")
    builder.rate(items[1], "a", "model", "weak_no", shortcomings=["insufficient"])
    builder.assign(items[2], "a")
    builder.rate(items[2], "a", "model", "yes", shortcomings=["none"])
    report = analyze(builder.db_path, "s1")
    freq = {r["shortcoming"]: (r["count"], r["share"], r["label"]) for r in report["shortcomings"]}
    assert freq == {"insufficient": (2, 2 / 3, "Insufficient justification"),
                    "restates_input": (1, 1 / 3, "Restates the input"), "none": (1, 1 / 3, "None of these")}
    dist = {r["rating"]: r["count"] for r in report["rating_distribution"] if r["question"] == "model"}
    assert dist == {"yes": 1, "weak_yes": 0, "weak_no": 1, "no": 1}


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "annotation.analysis_cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_analyze_prints_text_and_json(tmp_path):
    builder = random_study(tmp_path / "study.db")
    done = _run_cli("analyze", "--db", str(builder.db_path), "--study", "s1", "--json", "--min-seconds", "5")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == json.loads(json.dumps(analyze(builder.db_path, "s1", QCSettings(min_seconds=5))))
    done = _run_cli("analyze", "--db", str(builder.db_path), "--study", "s1")
    assert done.returncode == 0, done.stderr
    assert "Fleiss' kappa" in done.stdout and "Randolph's free-marginal kappa" in done.stdout
    assert "t5-large" in done.stdout
    missing = _run_cli("analyze", "--db", str(builder.db_path), "--study", "nope")
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr and "Traceback" not in missing.stderr


def test_app_cli_dispatches_to_the_analysis_commands(tmp_path):
    """`python -m annotation analyze` (the app's CLI) reaches the same report through register_cli."""
    if not (REPO / "annotation" / "cli.py").exists():
        pytest.skip("annotation/cli.py (the app's CLI) is not in this checkout")
    builder = random_study(tmp_path / "study.db", items_per_system=4)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "annotation", "analyze", "--db", str(builder.db_path), "--study",
                           "s1", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["qc"]["ratings_total"] == builder.db.execute(
        "SELECT COUNT(*) FROM ratings").fetchone()[0]
    missing = subprocess.run([sys.executable, "-m", "annotation", "analyze", "--db", str(builder.db_path),
                              "--study", "nope"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no study 'nope'" in missing.stderr and "Traceback" not in missing.stderr


# ---------------------------------------------------------------- Results tab, really launched


def test_results_tab_refuses_without_password_and_shows_tables(tmp_path):
    import gradio as gr
    from gradio_client import Client

    from annotation.results_ui import build_results_tab

    builder = random_study(tmp_path / "study.db")
    with gr.Blocks() as demo:
        password = gr.Textbox(label="Admin password", type="password")
        with gr.Tab("Results"):
            build_results_tab(str(builder.db_path), lambda p: p == "open-sesame", password)
    demo.queue()
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        refused = client.predict("wrong", api_name="/results_studies")
        assert "password" in str(refused).lower()
        listed = client.predict("open-sesame", api_name="/results_studies")
        assert "s1" in json.dumps(listed)
        status, scores, agreement, qc, correlations, *plots, by_label, by_correct, shortcomings = client.predict(
            "wrong", "s1", 0, 0, True, api_name="/results_analyze")
        assert "password" in status.lower() and not scores["data"] and not by_label["data"]
        status, scores, agreement, qc, correlations, *plots, by_label, by_correct, shortcomings = client.predict(
            "open-sesame", "s1", 0, 0, True, api_name="/results_analyze")
        assert "s1" in status
        expected = analyze(builder.db_path, "s1")
        assert len(scores["data"]) == len(expected["scores"])
        header = scores["headers"]
        first = dict(zip(header, scores["data"][0]))
        assert float(first["mean"]) == pytest.approx(expected["scores"][0]["mean"], abs=0.05)
        assert any("Fleiss" in h for h in agreement["headers"])
        assert len(plots) == 3 and all(p is not None for p in plots)
        assert len(by_label["data"]) == len(expected["breakdown_by_gold_label"])
        assert len(by_correct["data"]) == len(expected["breakdown_by_correct"])
        qc_counts = dict(qc["data"])
        assert qc_counts["ratings kept"] == expected["qc"]["ratings_kept"]
        refused_file, message = client.predict("wrong", "s1", "csv", 0, 0, True, api_name="/results_export")
        assert refused_file is None and "password" in message.lower()
        exported, message = client.predict("open-sesame", "s1", "csv", 0, 0, True, api_name="/results_export")
        import pandas as pd
        assert len(pd.read_csv(exported)) == builder.db.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    finally:
        demo.close()


def test_analysis_of_a_study_run_through_the_real_store(tmp_path):
    """Ratings written by the app's store (gate 'block' policy, blind order, checklist) are analysed right."""
    from annotation.store import RatingInput, StudySettings, Store

    labels = ["entailment", "neutral", "contradiction"]
    records = [make_record(f"e{i}", gold_label=labels[i % 3], metrics={"bertscore_f1": 40.0 + 7 * i})
               for i in range(6)]
    predictions = tmp_path / "preds.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in records))
    store = Store(tmp_path / "app.db")
    study_id = store.create_study(predictions, StudySettings(preset="evil", items_per_page=6, annotators_per_item=3,
                                                             per_label=0))
    annotators = store.add_annotators(study_id, 3)
    for a_index, annotator in enumerate(annotators):
        for step in range(10):
            assignment = store.next_assignment(annotator)
            if assignment is None:
                break
            gold = store.item(assignment.item_id)["gold_label"]
            wrong = a_index == 0 and step == 0  # one wrong gate answer: the item ends with no ratings
            assignment = store.answer_gate(annotator, assignment.id, "neutral" if wrong and gold != "neutral"
                                           else ("entailment" if wrong else gold))
            if wrong:
                continue
            position = int(assignment.item_id.rsplit("e", 1)[1])
            model_value = ["yes", "weak_yes", "weak_no", "no"][(position + a_index) % 4]
            store.submit(annotator, assignment.id, {
                "model": RatingInput(model_value, ["none"] if model_value == "yes" else ["insufficient"]),
                "gold": RatingInput("yes", ["none"])})
    db_path = tmp_path / "app.db"
    report = analyze(db_path, study_id)
    qc = report["qc"]
    assert qc["gate_assignments"]["wrong"] == 1 and qc["gate_assignments"]["wrong_without_ratings"] == 1
    assert qc["excluded"]["gate_wrong"] == 0 and qc["ratings_kept"] == qc["ratings_total"] > 0
    with open_db(db_path).conn as conn:
        rows = conn.execute("SELECT item_id, rating FROM ratings WHERE question = 'model'").fetchall()
    per_item = defaultdict(list)
    for item_id, rating in rows:
        per_item[item_id].append(SCORE[rating])
    item_means = [sum(v) / len(v) * 100 for v in per_item.values()]
    model_row = find(report["scores"], question="model")
    assert model_row["n_items"] == len(per_item) and model_row["mean"] == pytest.approx(np.mean(item_means))
    assert find(report["scores"], question="gold")["mean"] == pytest.approx(100.0)
    assert sum(r["count"] for r in report["shortcomings"] if r["question"] == "model") == len(rows)
    assert find(report["correlations"]["item_level"], metric="bertscore_f1")["n"] == len(per_item)


# ---------------------------------------------------------------- ties, row order, stable seeds

def tied_study(db_path: Path, order_seed: int | None, drop_system: bool = False) -> StudyBuilder:
    """Items whose exact scores tie (7/9, 5/9, ...), ratings inserted in a shuffled order."""
    builder = StudyBuilder(db_path)
    plan = []
    for s, (model, method) in enumerate((("t5-base", "sparsefit"), ("t5-base", "lora"))):
        if drop_system and s == 1:
            continue
        for i in range(18):
            item = builder.add_item(f"{s}-{i}", model=model, method=method,
                                    metrics={"bertscore_f1": float(40 + (i * 7) % 11), "bleu": float(i % 4)})
            for r in range(3):
                plan.append((item, f"a{(i + r) % 5}", VALUES[(i * (r + 1) + s) % 3],
                             VALUES[(i + r) % 2]))
    if order_seed is not None:
        random.Random(order_seed).shuffle(plan)
    for item, name, model_value, gold_value in plan:
        if builder.db.execute("SELECT 1 FROM assignments WHERE item_id = ? AND annotator_id = ?",
                              [item, f"ann-{name}"]).fetchone() is None:
            builder.assign(item, name)
        builder.rate(item, name, "model", model_value)
        builder.rate(item, name, "gold", gold_value)
    return builder


def numbers(report: dict) -> str:
    return json.dumps({k: v for k, v in report.items() if k != "study"}, sort_keys=True)


def test_tied_item_scores_match_scipy_and_do_not_depend_on_row_order(tmp_path):
    first = tied_study(tmp_path / "a.db", order_seed=None)
    reports = [analyze(first.db_path, "s1", QCSettings(n_boot=200))]
    for seed in (1, 2):
        shuffled = tied_study(tmp_path / f"shuffled{seed}.db", order_seed=seed)
        reports.append(analyze(shuffled.db_path, "s1", QCSettings(n_boot=200)))
    assert numbers(reports[1]) == numbers(reports[0]) == numbers(reports[2])  # every number, CIs included
    item_scores = reference_item_scores(first, "model")
    assert len(set(item_scores.values())) < len(item_scores) / 3  # many exact ties
    for metric in ("bertscore_f1", "bleu"):
        human = [item_scores[i] for i in sorted(item_scores)]
        auto = [first.items[i]["metrics"][metric] for i in sorted(item_scores)]
        row = find(reports[0]["correlations"]["item_level"], metric=metric)
        assert row["spearman"]["value"] == pytest.approx(scipy_stats.spearmanr(human, auto).statistic, abs=1e-12)
        assert row["kendall"]["value"] == pytest.approx(scipy_stats.kendalltau(human, auto).statistic, abs=1e-12)


def test_a_systems_ci_does_not_depend_on_the_other_systems(tmp_path):
    both = analyze(tied_study(tmp_path / "both.db", order_seed=3).db_path, "s1", QCSettings(n_boot=300))
    alone = analyze(tied_study(tmp_path / "alone.db", order_seed=4, drop_system=True).db_path, "s1",
                    QCSettings(n_boot=300))
    for question in ("model", "gold"):
        with_other = find(both["scores"], method="sparsefit", question=question)
        without = find(alone["scores"], method="sparsefit", question=question)
        assert with_other == without
    assert find(both["agreement"], scope="t5-base | sparsefit | esnli", question="model") == \
        find(alone["agreement"], scope="t5-base | sparsefit | esnli", question="model")
    other_seed = analyze(tied_study(tmp_path / "seed.db", order_seed=3).db_path, "s1", QCSettings(n_boot=300, seed=9))
    def ci(report: dict) -> tuple:
        row = find(report["scores"], method="sparsefit", question="model")
        return row["ci_low"], row["ci_high"]
    assert ci(other_seed) != ci(both)  # the seed still matters


# ---------------------------------------------------------------- significance, agreement CIs, tables

def test_paired_tests_between_systems_and_against_gold(tmp_path):
    """Two systems on the same inputs (different record ids): one clearly better; model vs gold per system."""
    builder = StudyBuilder(tmp_path / "pairs.db")
    for i in range(30):
        good = builder.add_item(f"good-{i}", model="m", method="good")
        bad = builder.add_item(f"bad-{i}", model="m", method="bad")
        # the same inputs for both systems: the record's inputs decide the pairing, not its id
        for item in (good, bad):
            record = builder.items[item]
            record["inputs"] = {"premise": f"premise {i}", "hypothesis": f"hypothesis {i}"}
            builder.db["items"].update(item, {"record_json": json.dumps(record)})
        for r in range(3):
            builder.rate_item(good, f"a{r}", VALUES[(i + r) % 2], "yes")          # yes / weak yes
            builder.rate_item(bad, f"a{r}", VALUES[2 + (i + r) % 2], "yes")       # weak no / no
    report = analyze(builder.db_path, "s1", QCSettings(n_boot=2000))
    pairs = report["significance"]["between_systems"]
    assert len(pairs) == 1 and pairs[0]["n_items"] == 30
    pair = pairs[0]
    scores = reference_item_scores(builder, "model")
    expected = np.mean([scores[f"s1-bad-{i}"] - scores[f"s1-good-{i}"] for i in range(30)]) * 100
    sign = 1 if pair["a"]["method"] == "bad" else -1
    assert pair["mean_diff"] == pytest.approx(sign * expected)
    assert pair["ci_low"] <= pair["mean_diff"] <= pair["ci_high"] and (pair["ci_high"] < 0 or pair["ci_low"] > 0)
    assert pair["p_permutation"] == pytest.approx(1 / 2001) and not pair["exact"] and "p_bootstrap" not in pair
    assert pair["p_permutation_holm"] == pair["p_permutation"]  # one test in the family
    vs_gold = {r["method"]: r for r in report["significance"]["model_vs_gold"]}
    assert vs_gold["bad"]["mean_diff"] < -50 and vs_gold["bad"]["p_permutation"] < 0.01
    assert vs_gold["good"]["paired_ratings"] == 90 and vs_gold["good"]["n_items"] == 30


def test_paired_permutation_p_matches_exact_enumeration():
    from itertools import product

    from annotation.significance import holm, paired_test

    diffs = np.array([3.0, 1.0, 2.0, -1.0, 4.0, 0.5, 2.0, -0.5])
    observed = abs(diffs.mean())
    flips = [abs((np.array(signs) * diffs).mean()) >= observed - 1e-12 for signs in product((1, -1), repeat=8)]
    exact = np.mean(flips)
    test = paired_test(diffs, 40000, np.random.default_rng(0))  # 2^8 <= 40000: enumerated exactly
    assert test.exact and test.n_resamples == 256 and test.p_permutation == pytest.approx(exact)
    sampled = paired_test(np.concatenate([diffs, diffs]), 40000, np.random.default_rng(0))  # 2^16 > 40000
    assert not sampled.exact and sampled.n_resamples == 40000
    assert test.mean_diff == pytest.approx(diffs.mean())
    # tiny studies where every difference has one sign: the exact sign-flip p, never 0
    for few, expected in (([-33.3, -44.4, -22.2], 2 / 8), ([10.0, 10.0], 2 / 4)):
        assert paired_test(np.array(few), 1000, np.random.default_rng(0)).p_permutation == pytest.approx(expected)
    from statsmodels.stats.multitest import multipletests

    ps = [0.01, 0.04, 0.03, 0.2, None, 0.005]
    present = [p for p in ps if p is not None]
    reference = iter(multipletests(present, method="holm")[1])
    assert holm(ps) == [None if p is None else pytest.approx(next(reference)) for p in ps]


def test_agreement_has_cis_per_dataset_rows_and_warns_about_dropped_items(tmp_path):
    builder = random_study(tmp_path / "study.db")  # items with 1, 2 and 3 raters
    for i in range(4):
        item = builder.add_item(f"other-{i}", dataset="comve", gold_label="choice1")
        for name in ("a", "b"):
            builder.rate_item(item, name, VALUES[i % 4], "yes")
    report = analyze(builder.db_path, "s1", QCSettings(n_boot=300))
    row = find(report["agreement"], scope="all", question="model")
    for name in ("fleiss_kappa_binary", "randolph_free_marginal_kappa_binary", "krippendorff_alpha_ordinal"):
        stat = row[name]
        assert stat["ci_low"] is not None and stat["ci_low"] <= stat["value"] <= stat["ci_high"], (name, stat)
    assert row["n_boot"] == 300 and row["rater_counts_dropped"] == [1, 2]
    esnli = find(report["agreement"], scope="dataset esnli", question="model")
    comve = find(report["agreement"], scope="dataset comve", question="model")
    assert esnli["items"] + comve["items"] == row["items"] and comve["raters_per_item_for_kappa"] == 2
    assert any("leave out" in w and "[model] all items" in w for w in report["warnings"])
    assert "warning: agreement [model] all items" in format_report(report)
    single = analyze(random_study(tmp_path / "one.db").db_path, "s1", QCSettings(n_boot=100))
    assert not [r for r in single["agreement"] if r["scope_kind"] == "dataset"]  # would repeat "all"


def test_feb_table_in_text_markdown_latex_and_json(tmp_path):
    from annotation.analysis import format_feb_table

    builder = random_study(tmp_path / "study.db")
    report = analyze(builder.db_path, "s1", QCSettings(n_boot=200))
    rows = json.loads(format_feb_table(report, "json"))
    assert len(rows) == 3 and {r["method"] for r in rows} == {"sparsefit", "lora"}
    for row in rows:
        model = find(report["scores"], model=row["model"], method=row["method"], question="model")
        assert row["model_score"] == model["mean"] and row["model_n_items"] == model["n_items"]
        assert row["gold_ci_low"] == find(report["scores"], model=row["model"], method=row["method"],
                                          question="gold")["ci_low"]
    markdown = format_feb_table(report, "markdown").splitlines()
    assert markdown[0].startswith("| dataset | model | method |") and len(markdown) == 2 + 3
    latex = format_feb_table(report, "latex")
    assert latex.startswith("\\begin{tabular}") and "\\midrule" in latex and "95\\%" in latex
    assert f"{rows[0]['model_score']:.1f}" in format_feb_table(report, "text")
    with pytest.raises(Exception, match="unknown table format"):
        format_feb_table(report, "xlsx")


def test_cli_errors_are_one_line_and_create_nothing(tmp_path):
    builder = random_study(tmp_path / "study.db", items_per_system=3)
    missing = tmp_path / "typo.db"
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("this is not a database\n")
    other_sqlite = tmp_path / "other.sqlite"
    sqlite3.connect(other_sqlite).execute("CREATE TABLE notes (text TEXT)").connection.commit()
    csv_file = tmp_path / "r.csv"
    csv_file.write_text("item,annotator,rating\ns1-0-1,W1,yes\n")
    cases = [
        (["analyze", "--db", str(missing), "--study", "s1"], "not found"),
        (["export", "--db", str(missing), "--study", "s1", "--format", "csv", "--out", str(tmp_path / "o.csv")],
         "not found"),
        (["import-ratings", "--db", str(missing), "--study", "s1", "--file", str(tmp_path)], "directory"),
        (["analyze", "--db", str(not_sqlite), "--study", "s1"], "not a SQLite database"),
        (["import-ratings", "--db", str(not_sqlite), "--study", "s1", "--file", str(csv_file)],
         "not a SQLite database"),
        (["import-ratings", "--db", str(other_sqlite), "--study", "s1", "--file", str(csv_file)],
         "not a study database"),
        (["analyze", "--db", str(tmp_path), "--study", "s1"], "directory"),
        (["import-ratings", "--db", str(builder.db_path), "--study", "s1", "--file", str(tmp_path)], "directory"),
        (["analyze", "--db", str(builder.db_path), "--study", "s1", "--bootstrap", "1"], "at least 100"),
    ]
    for args, expected in cases:
        done = _run_cli(*args)
        assert done.returncode == 2, (args, done.stderr)
        assert expected in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not missing.exists() and not (tmp_path / "o.csv").exists()
    assert [r[0] for r in sqlite3.connect(other_sqlite).execute("SELECT name FROM sqlite_master")] == ["notes"]
    table = _run_cli("analyze", "--db", str(builder.db_path), "--study", "s1", "--table", "markdown")
    assert table.returncode == 0 and table.stdout.startswith("| dataset |")
