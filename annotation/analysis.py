"""Turn a study's ratings into the numbers a paper reports: QC, scores, agreement, human vs automatic.

Reads the study database with SQL + pandas (no store internals, no torch). The scale, scores, binary
collapse and gate policy come from the study's protocol snapshot (`studies.protocol_json`).

    result = run_analysis("study.db", "s1", QCSettings(min_seconds=5))
    result.report        # JSON-safe dict (what `analyze --json` prints)
    result.item_scores   # one row per item x question: human score + automatic metrics
    print(format_report(result.report))

QC rules (applied in this order; each rating is counted under the first rule that removes it):
  1. unknown_rating       rating value not on the study's scale, or question not model/gold
  2. gate_wrong           the annotator answered the item's gate question wrongly (gate enabled, filter on,
                          and the protocol's optional gate.exclude_wrong is not false) - for both policies:
                          "block" should leave no ratings, "record" keeps rating but we drop them
  3. too_fast             item x annotator took less than `min_seconds` (assignment time, else the largest
                          rating time; unknown time is kept)
  4. low_gold_acceptance  all ratings of annotators whose share of gold explanations rated positive is below
                          `min_gold_acceptance` (computed on ratings that passed 1-3; no gold ratings: kept)
"""

from __future__ import annotations

import json
import math
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from math import lcm
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from annotation import agreement as agr
from annotation import significance as sig
from annotation.errors import AnnotationError

QUESTIONS = ("model", "gold")
SYSTEM_KEYS = ("model", "method", "dataset")
KNOWN_METRICS = ("bertscore_f1", "meteor", "bleu")
EXCLUSION_RULES = ("unknown_rating", "gate_wrong", "too_fast", "low_gold_acceptance")
# bootstrap work cap for item-level correlations (resamples x items); keeps 100k ratings under 5 s
CORRELATION_BOOT_BUDGET = 1_500_000
MIN_CORRELATION_BOOT = 100
MIN_BOOT = 100  # fewer resamples give intervals that are mostly noise (the CLI refuses them)


@dataclass
class QCSettings:
    min_seconds: float = 0.0            # 0 = off
    min_gold_acceptance: float = 0.0    # share in [0, 1]; 0 = off
    gate_filter: bool = True
    n_boot: int = 1000
    seed: int = 0
    ci_level: float = 0.95


@dataclass
class StudyData:
    study: dict[str, Any]
    protocol: dict[str, Any]
    items: pd.DataFrame         # one row per item, with system fields and metric_<name> columns
    ratings: pd.DataFrame       # one row per rating, joined with its assignment
    gate: dict[str, int]        # assignment-level gate counts
    metric_names: list[str]


@dataclass
class AnalysisResult:
    report: dict[str, Any]
    item_scores: pd.DataFrame
    ratings: pd.DataFrame = field(repr=False)


# ---------------------------------------------------------------- loading

def connect_readonly(db_path: str | Path) -> sqlite3.Connection:
    """Open a study database read-only; never creates a file. Not a file / not SQLite / no study tables:
    AnnotationError with one line saying so."""
    path = Path(db_path)
    if not path.exists():
        raise AnnotationError("study database not found (check --db)", path=str(path))
    if not path.is_file():
        raise AnnotationError("is a directory, not a study database file (check --db)", path=str(path))
    try:
        conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=30)
        conn.execute("PRAGMA busy_timeout=30000")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise AnnotationError(f"not a SQLite database ({err})", path=str(path)) from err
    missing = {"studies", "items", "ratings", "assignments", "annotators"} - tables
    if missing:
        conn.close()
        raise AnnotationError(f"not a study database (no table {', '.join(sorted(missing))})", path=str(path))
    return conn


def study_ids(db_path: str | Path) -> list[tuple[str, str]]:
    """(id, name) of every study in the database, newest first."""
    with connect_readonly(db_path) as conn:
        return [(row[0], row[1] or "") for row in
                conn.execute("SELECT id, name FROM studies ORDER BY created_at DESC, id")]


ITEM_FIELDS = ("record_id", "dataset", "gold_label", "pred_label", "correct", "model", "method")


def load_study(db_path: str | Path, study_id: str, *, full: bool = False) -> StudyData:
    """Read one study. `full` also loads the rating columns only exports need (comment, created_at)."""
    extra = ", r.comment, r.created_at, r.shown_position, r.origin" if full else ""
    with connect_readonly(db_path) as conn:
        study = pd.read_sql_query("SELECT * FROM studies WHERE id = ?", conn, params=(study_id,))
        if study.empty:
            known = ", ".join(sid for sid, _ in study_ids(db_path)) or "none"
            raise AnnotationError(f"no study {study_id!r} in this database (studies: {known})",
                                  path=str(db_path), field="study")
        # the items' own columns win; the record fills what is empty (json_extract keeps parsing in C)
        filled = ", ".join(f"COALESCE({c}, json_extract(record_json, '$.{'id' if c == 'record_id' else c}')) AS {c}"
                           for c in ITEM_FIELDS)
        try:
            metric_names = _metric_names(conn, study_id)
            # numeric metrics only (a string or boolean metric is not a score); parsed by SQLite, in C
            paths = [f'$.metrics."{name}"' for name in metric_names]
            metric_sql = "".join(f", CASE WHEN json_type(record_json, ?) IN ('integer', 'real') THEN "
                                 f"json_extract(record_json, ?) END AS metric_{i}" for i in range(len(paths)))
            items = pd.read_sql_query(
                f"SELECT id AS item_id, position, {filled}, json_extract(record_json, '$.pred_explanation') AS "
                "pred_explanation, json_extract(record_json, '$.gold_explanations[0]') AS gold_explanation, "
                f"json_extract(record_json, '$.inputs') AS inputs_json{metric_sql} FROM items WHERE study_id = ?",
                conn, params=(*(p for path in paths for p in (path, path)), study_id))
        except (sqlite3.OperationalError, pd.errors.DatabaseError) as err:
            raise AnnotationError(f"an item's predictions record is not valid JSON ({err})", path=str(db_path),
                                  field="items.record_json") from err
        ratings = pd.read_sql_query(
            "SELECT r.item_id, r.annotator_id, r.question, r.rating, r.shortcomings_json, "
            f"r.seconds_spent AS rating_seconds, a.gate_answer, a.gate_correct, a.seconds_spent AS item_seconds{extra} "
            "FROM ratings r LEFT JOIN assignments a "
            "ON a.item_id = r.item_id AND a.annotator_id = r.annotator_id AND a.study_id = r.study_id "
            "WHERE r.study_id = ?", conn, params=(study_id,))
        gate_rows = conn.execute(
            "SELECT COUNT(*), SUM(a.gate_correct = 0), SUM(a.gate_correct = 0 AND NOT EXISTS "
            "(SELECT 1 FROM ratings r WHERE r.item_id = a.item_id AND r.annotator_id = a.annotator_id "
            "AND r.study_id = a.study_id)) FROM assignments a WHERE a.study_id = ? AND a.gate_correct "
            "IS NOT NULL", (study_id,)).fetchone()
    study_row = study.iloc[0].to_dict()
    try:
        protocol = json.loads(study_row.get("protocol_json") or "")
    except json.JSONDecodeError as err:
        raise AnnotationError(f"the study's protocol snapshot is not valid JSON ({err.msg})",
                              path=str(db_path), field="studies.protocol_json") from err
    items = _expand_items(items, metric_names)
    gate = {"answered": int(gate_rows[0] or 0), "wrong": int(gate_rows[1] or 0),
            "wrong_without_ratings": int(gate_rows[2] or 0)}
    return StudyData(study_row, protocol, items, ratings, gate, metric_names)


def _metric_names(conn: sqlite3.Connection, study_id: str) -> list[str]:
    """Names of the numeric metrics found in the study's records: known ones first, then the rest sorted."""
    found = {row[0] for row in conn.execute(
        "SELECT DISTINCT j.key FROM items, json_each(items.record_json, '$.metrics') AS j WHERE items.study_id = ? "
        "AND json_type(items.record_json, '$.metrics') = 'object' AND j.type IN ('integer', 'real')", (study_id,))
        if isinstance(row[0], str) and '"' not in row[0]}
    return [m for m in KNOWN_METRICS if m in found] + sorted(found - set(KNOWN_METRICS))


def _expand_items(items: pd.DataFrame, metric_names: list[str]) -> pd.DataFrame:
    """Normalise item fields; name the metric columns metric_<name>."""
    items["correct"] = [None if pd.isna(c) else bool(c) for c in items["correct"]]
    items = items.rename(columns={f"metric_{i}": f"metric_{name}" for i, name in enumerate(metric_names)})
    for name in metric_names:
        items[f"metric_{name}"] = pd.to_numeric(items[f"metric_{name}"], errors="coerce").astype(float)
    for column in ("dataset", "model", "method", "gold_label"):
        items[column] = items[column].fillna("?").astype(str)
    return items


def input_keys(items: pd.DataFrame) -> pd.Series:
    """What makes two items "the same input" for paired tests: the record's inputs (key order ignored),
    else its record id. Items of different systems in one study have different record ids (ids are unique
    in a predictions file) but the same inputs."""
    def key(text: Any, record_id: Any) -> str:
        if isinstance(text, str):
            try:
                return "inputs:" + json.dumps(json.loads(text), sort_keys=True, ensure_ascii=False)
            except json.JSONDecodeError:
                pass
        return f"id:{record_id}"
    return pd.Series([key(t, r) for t, r in zip(items["inputs_json"], items["record_id"])], index=items.index)


# ---------------------------------------------------------------- protocol helpers

@dataclass
class Scale:
    values: list[str]            # ordered low score -> high score
    scores: dict[str, float]
    labels: dict[str, str]
    positive: set[str]
    # exact scores: score = numerator / denominator with one common integer denominator, so item sums are
    # integers and equal item scores (7/9 from any row order) are equal floats
    numerators: dict[str, int] = field(default_factory=dict)
    denominator: int = 1

    @classmethod
    def from_protocol(cls, protocol: dict[str, Any]) -> "Scale":
        points = protocol.get("scale") or []
        if len(points) < 2:
            raise AnnotationError("the study's protocol has no rating scale", field="protocol.scale")
        ordered = sorted(points, key=lambda p: float(p["score"]))
        fractions = {p["value"]: exact_score(float(p["score"])) for p in points}
        denominator = lcm(*(f.denominator for f in fractions.values()))
        return cls([p["value"] for p in ordered], {p["value"]: float(p["score"]) for p in points},
                   {p["value"]: p.get("label", p["value"]) for p in points},
                   set(protocol.get("binary_positive") or []),
                   {v: int(f * denominator) for v, f in fractions.items()}, denominator)


def exact_score(score: float) -> Fraction:
    """The simple fraction a preset meant (0.6666666666666666 -> 2/3), else the score to 1e-9."""
    simple = Fraction(score).limit_denominator(1000)
    if abs(float(simple) - score) <= 1e-12 * max(1.0, abs(score)):
        return simple
    return Fraction(round(score * 10**9), 10**9)


def gate_filter_active(protocol: dict[str, Any], settings: QCSettings) -> bool:
    gate = protocol.get("gate") or {}
    return bool(settings.gate_filter and gate.get("enabled") and gate.get("exclude_wrong", True))


# ---------------------------------------------------------------- QC

def apply_qc(data: StudyData, scale: Scale, settings: QCSettings) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Add score/binary/qc_exclusion columns to the ratings; return them and the QC section of the report."""
    ratings = data.ratings.copy()
    ratings["score"] = ratings["rating"].map(scale.scores)
    ratings["score_numerator"] = ratings["rating"].map(scale.numerators)
    ratings["scale_rank"] = ratings["rating"].map({value: i for i, value in enumerate(scale.values)})
    ratings["binary"] = ratings["rating"].isin(scale.positive).astype(int)
    exclusion = pd.Series(None, index=ratings.index, dtype=object)

    def mark(mask: pd.Series, rule: str) -> None:
        exclusion[mask & exclusion.isna()] = rule

    mark(ratings["score"].isna() | ~ratings["question"].isin(QUESTIONS), "unknown_rating")
    gate_on = gate_filter_active(data.protocol, settings)
    if gate_on:
        mark(ratings["gate_correct"].fillna(1).astype(float) == 0, "gate_wrong")
    if settings.min_seconds > 0:
        seconds = pd.to_numeric(ratings["item_seconds"], errors="coerce").astype(float)
        # no assignment time: the rating rows' time (the app stores the item's time on each of them);
        # numeric before grouping, else an all-empty column takes pandas' slow per-group path
        rating_seconds = pd.to_numeric(ratings["rating_seconds"], errors="coerce").astype(float)
        seconds = seconds.fillna(rating_seconds.groupby([ratings["item_id"], ratings["annotator_id"]])
                                 .transform("max"))
        mark(seconds < settings.min_seconds, "too_fast")
    survivors = ratings[exclusion.isna()]
    acceptance = _gold_acceptance(survivors)
    excluded_annotators: list[dict[str, Any]] = []
    if settings.min_gold_acceptance > 0:
        low = acceptance[acceptance["gold_acceptance"] < settings.min_gold_acceptance]
        mark(ratings["annotator_id"].isin(low.index), "low_gold_acceptance")
        excluded_annotators = [{"annotator_id": aid, "gold_acceptance": float(row.gold_acceptance),
                                "gold_ratings": int(row.gold_ratings)} for aid, row in low.iterrows()]
    ratings["qc_exclusion"] = exclusion
    counts = exclusion.value_counts()
    kept = ratings[exclusion.isna()]
    qc = {
        "ratings_total": int(len(ratings)),
        "ratings_kept": int(len(kept)),
        "excluded": {rule: int(counts.get(rule, 0)) for rule in EXCLUSION_RULES},
        "rules": {"gate_filter": gate_on, "gate_policy": (data.protocol.get("gate") or {}).get("policy"),
                  "min_seconds": settings.min_seconds, "min_gold_acceptance": settings.min_gold_acceptance},
        "gate_assignments": data.gate,
        "annotators_total": int(ratings["annotator_id"].nunique()),
        "annotators_kept": int(kept["annotator_id"].nunique()),
        "annotators_excluded": excluded_annotators,
        # kept whatever the gold-acceptance threshold, since there is nothing to judge them by
        "annotators_without_gold_ratings": int(survivors["annotator_id"].nunique() - len(acceptance)),
        "items_total": int(len(data.items)),
        "items_rated": int(kept["item_id"].nunique()),
    }
    return ratings, qc


def _gold_acceptance(ratings: pd.DataFrame) -> pd.DataFrame:
    gold = ratings[ratings["question"] == "gold"]
    grouped = gold.groupby("annotator_id")["binary"]
    return pd.DataFrame({"gold_acceptance": grouped.mean(), "gold_ratings": grouped.size()})


# ---------------------------------------------------------------- scores

def item_scores(kept: pd.DataFrame, items: pd.DataFrame, scale: Scale | None = None) -> pd.DataFrame:
    """One row per item x question: mean mapped rating, number of ratings, joined with item fields.

    The item score is computed exactly (integer sum of score numerators / (ratings x common denominator),
    one float division), so it does not depend on row order. Rows are sorted by record id, item id and
    question: every later bootstrap sees items in an order fixed by the predictions, not by the database.
    """
    grouped = kept.groupby(["item_id", "question"], sort=False)
    if scale is None or "score_numerator" not in kept:
        table = grouped.agg(human_score=("score", "mean"), n_ratings=("score", "size"),
                            positive_share=("binary", "mean")).reset_index()
    else:
        table = grouped.agg(score_sum=("score_numerator", "sum"), n_ratings=("score", "size"),
                            positive_sum=("binary", "sum")).reset_index()
        table["score_sum"] = table["score_sum"].astype(np.int64)
        table["human_score"] = table["score_sum"].to_numpy(np.int64) / (
            table["n_ratings"].to_numpy(np.int64) * scale.denominator)
        table["positive_share"] = table["positive_sum"] / table["n_ratings"]
        table = table.drop(columns=["positive_sum"])
    table = table.merge(items, on="item_id", how="left")
    return table.sort_values(["record_id", "item_id", "question"], kind="stable").reset_index(drop=True)


def _summary(values: np.ndarray, rng: np.random.Generator | None, settings: QCSettings) -> dict[str, Any]:
    """mean x100, std, stderr (and a bootstrap CI when rng is given) of item scores.

    Sums are exact (math.fsum), so the numbers do not depend on the order of the items."""
    values = np.asarray(values, float) * 100
    n = int(values.size)
    mean = math.fsum(values) / n if n else None
    std = math.sqrt(math.fsum((values - mean) ** 2) / (n - 1)) if n >= 2 else None
    out: dict[str, Any] = {"n_items": n, "mean": mean, "std": std,
                           "stderr": std / math.sqrt(n) if std is not None else None}
    if rng is not None:
        if n >= 2:
            low, high = agr.percentile_ci(agr.bootstrap_means_grouped(values, settings.n_boot, rng),
                                          settings.ci_level)
        else:
            low = high = None
        out.update(ci_low=low, ci_high=high)
    return out


def system_scores(scores: pd.DataFrame, settings: QCSettings) -> list[dict[str, Any]]:
    rows = []
    for (model, method, dataset, question), group in scores.groupby(
            [*SYSTEM_KEYS, "question"], sort=True):
        # one generator per group, from its key: a CI does not change when other systems come or go
        rng = sig.stable_rng(settings.seed, "scores", model, method, dataset, question)
        rows.append({"model": model, "method": method, "dataset": dataset, "question": question,
                     "n_ratings": int(group["n_ratings"].sum()),
                     **_summary(group["human_score"].to_numpy(), rng, settings)})
    return rows


def breakdown(scores: pd.DataFrame, by: str, settings: QCSettings) -> list[dict[str, Any]]:
    rows = []
    for (model, method, dataset, question, group_value), group in scores.groupby(
            [*SYSTEM_KEYS, "question", by], sort=True, dropna=False):
        value = None if pd.isna(group_value) else (bool(group_value) if by == "correct" else group_value)
        rows.append({"model": model, "method": method, "dataset": dataset, "question": question, by: value,
                     **_summary(group["human_score"].to_numpy(), None, settings)})
    return rows


def rating_distribution(kept: pd.DataFrame, scale: Scale) -> list[dict[str, Any]]:
    rows = []
    for question, group in kept.groupby("question", sort=True):
        counts = group["rating"].value_counts()
        for value in reversed(scale.values):
            count = int(counts.get(value, 0))
            rows.append({"question": question, "rating": value, "label": scale.labels[value],
                         "count": count, "share": count / len(group)})
    return rows


def shortcoming_frequencies(kept: pd.DataFrame, items: pd.DataFrame,
                            protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """Share of ratings (that answered the checklist) naming each shortcoming, per system and question."""
    labels = {opt["value"]: opt.get("label", opt["value"]) for opt in protocol.get("shortcomings") or []}
    answered = kept[kept["shortcomings_json"].notna()]
    if answered.empty:
        return []
    answered = answered.merge(items[["item_id", *SYSTEM_KEYS]], on="item_id", how="left")
    # few distinct answers (checklist combinations): count them, then parse each distinct one once
    combos = answered.groupby([*SYSTEM_KEYS, "question", "shortcomings_json"]).size()
    totals: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}
    for (model, method, dataset, question, text), count in combos.items():
        group = (model, method, dataset, question)
        totals[group] = totals.get(group, 0) + int(count)
        for value in dict.fromkeys(_parse_list(text)):
            counts[(*group, value)] = counts.get((*group, value), 0) + int(count)
    rows = []
    for (model, method, dataset, question, value), count in sorted(counts.items()):
        total = totals[(model, method, dataset, question)]
        rows.append({"model": model, "method": method, "dataset": dataset, "question": question,
                     "shortcoming": value, "label": labels.get(value, value), "count": count,
                     "ratings_answered": total, "share": count / total})
    return rows


def _parse_list(text: Any) -> list[str]:
    try:
        value = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


# ---------------------------------------------------------------- agreement

def agreement_section(kept: pd.DataFrame, items: pd.DataFrame, scale: Scale,
                      settings: QCSettings | None = None) -> list[dict[str, Any]]:
    """Agreement per question: over all items, per dataset and per system (with bootstrap CIs over items
    when settings are given; each scope has its own generator seeded from its key)."""
    # count tables over every item once per question (items in record-id order), then each scope is a
    # subset of their rows: no regrouping of the ratings per scope
    ordered = items.sort_values(["record_id", "item_id"], kind="stable").reset_index(drop=True)
    codes = pd.Index(ordered["item_id"]).get_indexer(kept["item_id"])
    systems = list(zip(ordered["model"], ordered["method"], ordered["dataset"]))
    system_index = {key: i for i, key in enumerate(dict.fromkeys(systems))}
    system_codes = np.array([system_index[key] for key in systems], dtype=np.int64)
    datasets = ordered["dataset"].to_numpy()
    questions = kept["question"].to_numpy()
    binary_values = kept["binary"].to_numpy().astype(int)
    ranks = kept["scale_rank"].to_numpy()
    rows = []
    for question in sorted(set(questions)):
        chosen = (questions == question) & (codes >= 0)
        binary = agr.count_table(codes[chosen], binary_values[chosen], len(ordered), 2)
        full = agr.count_table(codes[chosen], ranks[chosen].astype(int), len(ordered), len(scale.values))
        rated = full.sum(axis=1) > 0

        def add(scope: str, kind: str, mask: np.ndarray) -> None:
            rng = None if settings is None else sig.stable_rng(settings.seed, "agreement", question, kind, scope)
            rows.append({"scope": scope, "scope_kind": kind, "question": question,
                         **agreement_from_tables(binary[mask], full[mask], rng, settings)})

        add("all", "all", rated)
        if len(set(datasets[rated])) > 1:  # with one dataset its row would repeat "all"
            for dataset in sorted(set(datasets[rated])):
                add(f"dataset {dataset}", "dataset", rated & (datasets == dataset))
        for key in sorted({s for s, r in zip(systems, rated) if r}):
            add(" | ".join(key), "system", rated & (system_codes == system_index[key]))
    return rows


def agreement_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """Per question: a line when the kappas over all items left out items with an unusual number of raters,
    and how many per-dataset / per-system scopes did the same (their rows say how many items)."""
    out = []
    for question in sorted({row["question"] for row in rows}):
        mine = [r for r in rows if r["question"] == question and r["items_dropped_for_kappa"]
                and r["raters_per_item_for_kappa"]]
        for row in (r for r in mine if r["scope_kind"] == "all"):
            counts = ", ".join(map(str, row["rater_counts_dropped"]))
            used = row["items"] - row["items_dropped_for_kappa"]
            out.append(f"agreement [{question}] all items: the kappas use the {used} items with "
                       f"{row['raters_per_item_for_kappa']} raters and leave out "
                       f"{row['items_dropped_for_kappa']} item(s) with {counts} rater(s); Krippendorff's alpha "
                       "uses every item with 2 or more")
        others = [r for r in mine if r["scope_kind"] != "all"]
        if others:
            out.append(f"agreement [{question}]: {len(others)} per-dataset/per-system scope(s) also leave items out "
                       "of the kappas (items_dropped_for_kappa in their rows)")
    return out


def agreement_stats(ratings: pd.DataFrame, scale: Scale, rng: np.random.Generator | None = None,
                    settings: QCSettings | None = None) -> dict[str, Any]:
    """Kappas on the binary collapse (items with the modal rater count), alpha on the full scale.

    With a generator: percentile bootstrap CIs for the two kappas and alpha, resampling items (the modal
    rater count stays fixed; kappa items are those of the resample that have it)."""
    item_codes, item_index = pd.factorize(ratings["item_id"], sort=False)
    n_items = len(item_index)
    binary = agr.count_table(item_codes, ratings["binary"].to_numpy(), n_items, 2)
    ranks = ratings["rating"].map({v: i for i, v in enumerate(scale.values)}).to_numpy().astype(int)
    full = agr.count_table(item_codes, ranks, n_items, len(scale.values))
    return agreement_from_tables(binary, full, rng, settings)


def agreement_from_tables(binary: np.ndarray, full: np.ndarray, rng: np.random.Generator | None = None,
                          settings: QCSettings | None = None) -> dict[str, Any]:
    """`agreement_stats` from the items x (negative, positive) and items x scale-point count tables."""
    n_items = len(binary)
    raters = binary.sum(axis=1)
    modal = agr.kappa_rater_count(binary)
    if modal is None:
        kappa_table = binary[:0]
        fleiss = randolph = agr.Stat.undefined("no item has two or more raters", n=0)
    else:
        kappa_table = binary[raters == modal]
        fleiss, randolph = agr.fleiss_kappa(kappa_table), agr.randolph_kappa(kappa_table)
    alpha = agr.krippendorff_alpha_ordinal(full)
    n_boot = 0
    if rng is not None and settings is not None and n_items >= 2:
        n_boot = settings.n_boot
        samples = agr.bootstrap_agreement_resamples(binary, full, modal, n_boot, rng)
        for stat, name in ((fleiss, "fleiss"), (randolph, "randolph"), (alpha, "alpha")):
            if stat.value is not None:
                stat.set_ci(samples[name], settings.ci_level)
    dropped_counts = sorted({int(c) for c in raters[(raters != modal)]}) if modal else []
    return {
        "items": n_items,
        "items_with_2plus_raters": int((raters >= 2).sum()),
        "raters_per_item_for_kappa": modal,
        "items_dropped_for_kappa": int(n_items - len(kappa_table)),
        "rater_counts_dropped": dropped_counts,
        "n_boot": n_boot,
        "fleiss_kappa_binary": fleiss.to_json(),
        "randolph_free_marginal_kappa_binary": randolph.to_json(),
        "krippendorff_alpha_ordinal": alpha.to_json(),
        "percent_agreement_binary": agr.percent_agreement(binary).to_json(),
        "percent_agreement_scale": agr.percent_agreement(full).to_json(),
        "unanimous_items_binary": agr.unanimous_items(binary),
        "unanimous_items_scale": agr.unanimous_items(full),
    }


# ---------------------------------------------------------------- human vs automatic

def correlation_section(scores: pd.DataFrame, metric_names: list[str], settings: QCSettings) -> dict[str, Any]:
    model_scores = scores[scores["question"] == "model"]
    item_level = []
    for metric in metric_names:
        paired = model_scores.dropna(subset=[f"metric_{metric}", "human_score"])
        human, auto = paired["human_score"].to_numpy(float), paired[f"metric_{metric}"].to_numpy(float)
        rng = sig.stable_rng(settings.seed, "correlation", "item", metric)
        item_level.append({"metric": metric, **_item_correlations(human, auto, rng, settings)})
    system_level = _system_correlations(model_scores, metric_names, settings)
    return {"human_question": "model", "item_level": item_level, "system_level": system_level,
            "note": "item level pools all rated items; system level needs >= 3 systems and bootstraps items "
                    "within each system"}


def _item_correlations(human: np.ndarray, auto: np.ndarray, rng: np.random.Generator,
                       settings: QCSettings) -> dict[str, Any]:
    n = len(human)
    reason = agr.correlation_undefined_reason(human, auto)
    if reason:
        return {"n": n, "n_boot": 0, **{name: agr.Stat.undefined(reason, n=n).to_json()
                                        for name in agr.CORRELATIONS}}
    n_boot = int(min(settings.n_boot, max(MIN_CORRELATION_BOOT, CORRELATION_BOOT_BUDGET // n)))
    out: dict[str, Any] = {"n": n, "n_boot": n_boot}
    idx = rng.integers(0, n, size=(n_boot, n))
    for name, func in agr.CORRELATIONS.items():
        samples = _bootstrap_correlation(human, auto, idx, name)
        out[name] = agr.Stat(func(human, auto), n=n).set_ci(samples, settings.ci_level).to_json()
    return out


def _bootstrap_correlation(human: np.ndarray, auto: np.ndarray, idx: np.ndarray, name: str) -> np.ndarray:
    """The correlation on each resample (row of idx): vectorised where memory allows, else one by one."""
    if name == "spearman":
        return agr.bootstrap_spearman(human, auto, idx)
    return agr.bootstrap_kendall(human, auto, idx)


def _system_correlations(model_scores: pd.DataFrame, metric_names: list[str],
                         settings: QCSettings) -> list[dict[str, Any]]:
    """Per metric: correlation of system means (human vs metric, over items having that metric).

    CI: stratified bootstrap, resampling items inside each system (the same draws for every metric; one
    generator per system, from its key). Resamples: as for item level, capped by the items in all systems.
    """
    if not metric_names:
        return []
    n_boot = sig.resample_count(settings.n_boot, len(model_scores), CORRELATION_BOOT_BUDGET, MIN_CORRELATION_BOOT)
    groups = list(model_scores.groupby(list(SYSTEM_KEYS), sort=True))
    k = len(metric_names)
    point = np.full((len(groups), 2, k), np.nan)               # system x (human, metric) x metric
    boot = np.full((n_boot, len(groups), 2, k), np.nan)
    for j, (key, g) in enumerate(groups):
        rng = sig.stable_rng(settings.seed, "correlation", "system", *key)
        metric_values = g[[f"metric_{m}" for m in metric_names]].to_numpy(float)
        valid = np.isfinite(metric_values).astype(float)       # item x metric
        human = g["human_score"].to_numpy(float)[:, None] * valid
        columns = np.concatenate([human, np.nan_to_num(metric_values) * valid, valid], axis=1)
        n = len(g)
        draws = agr.resample_weights(rng.integers(0, n, size=(n_boot, n)), n)
        with np.errstate(invalid="ignore", divide="ignore"):
            sums = draws.astype(float) @ columns                # resample x (human | metric | count)
            boot[:, j, 0, :] = sums[:, :k] / sums[:, 2 * k:]
            boot[:, j, 1, :] = sums[:, k:2 * k] / sums[:, 2 * k:]
            total = columns.sum(axis=0)
            point[j, 0, :] = total[:k] / total[2 * k:]
            point[j, 1, :] = total[k:2 * k] / total[2 * k:]
    rows = []
    for m, metric in enumerate(metric_names):
        present = np.isfinite(point[:, 1, m])
        n = int(present.sum())
        row: dict[str, Any] = {"metric": metric, "n_systems": n, "n_boot": n_boot}
        human, auto = point[present, 0, m], point[present, 1, m]
        reason = f"needs at least 3 systems, got {n}" if n < 3 else agr.correlation_undefined_reason(human, auto)
        for name, func in agr.CORRELATIONS.items():
            if reason:
                row[name] = agr.Stat.undefined(reason, n=n).to_json()
                continue
            samples = _rowwise_correlation(boot[:, present, 0, m], boot[:, present, 1, m], name)
            row[name] = agr.Stat(func(human, auto), n=n).set_ci(samples, settings.ci_level).to_json()
        rows.append(row)
    return rows


def _rowwise_correlation(x: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    """Spearman or Kendall tau-b for each row of x against the same row of y (few columns)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        if name == "spearman":
            rx, ry = agr.rowwise_ranks(x), agr.rowwise_ranks(y)
            rx, ry = rx - rx.mean(axis=1, keepdims=True), ry - ry.mean(axis=1, keepdims=True)
            return (rx * ry).sum(axis=1) / np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
        sx = np.sign(x[:, :, None] - x[:, None, :])
        sy = np.sign(y[:, :, None] - y[:, None, :])
        return (sx * sy).sum(axis=(1, 2)) / np.sqrt((sx * sx).sum(axis=(1, 2)) * (sy * sy).sum(axis=(1, 2)))


# ---------------------------------------------------------------- significance

def significance_section(scores: pd.DataFrame, kept: pd.DataFrame, items: pd.DataFrame, scale: Scale,
                         settings: QCSettings) -> dict[str, Any]:
    """Paired tests: systems against each other on the inputs they share, and model vs gold explanations."""
    return {"between_systems": _system_pairs(scores, settings),
            "model_vs_gold": _model_vs_gold(kept, items, scale, settings),
            "note": "paired over items: systems are matched on the same dataset and the record's inputs (record "
                    "ids when inputs are missing), model vs gold on the same items rated by the same annotators; "
                    "differences are x100; p_permutation: sign-flip permutation test (exact when 'exact'); "
                    "p_permutation_holm: Holm's correction over the rows of each list"}


def _system_pairs(scores: pd.DataFrame, settings: QCSettings) -> list[dict[str, Any]]:
    model_scores = scores[scores["question"] == "model"]
    keys = input_keys(model_scores).to_numpy()
    rows: list[dict[str, Any]] = []
    for dataset, group in model_scores.groupby("dataset", sort=True):
        # per system: input key -> score (a system with the same input twice: the mean of those items)
        per_system = {}
        for system, sub in group.groupby(["model", "method"], sort=True):
            sums: dict[str, list[float]] = {}
            for key, score in zip(keys[model_scores.index.get_indexer(sub.index)], sub["human_score"]):
                sums.setdefault(key, []).append(score)
            per_system[system] = {k: (v[0] if len(v) == 1 else math.fsum(v) / len(v)) for k, v in sums.items()}
        systems = list(per_system)
        for i, first in enumerate(systems):
            for second in systems[i + 1:]:
                shared = sorted(per_system[first].keys() & per_system[second].keys())
                if not shared:
                    continue
                rng = sig.stable_rng(settings.seed, "paired", dataset, *first, *second)
                diffs = np.array([per_system[first][k] - per_system[second][k] for k in shared]) * 100
                test = sig.paired_test(diffs, settings.n_boot, rng, settings.ci_level)
                rows.append({"dataset": dataset, "a": {"model": first[0], "method": first[1]},  # a - b
                             "b": {"model": second[0], "method": second[1]}, "question": "model",
                             **test.to_json()})
    _add_holm(rows)
    return rows


def _model_vs_gold(kept: pd.DataFrame, items: pd.DataFrame, scale: Scale, settings: QCSettings) -> list[dict]:
    pair = ["item_id", "annotator_id"]
    model = kept.loc[kept["question"] == "model", [*pair, "score_numerator"]]
    gold = kept.loc[kept["question"] == "gold", [*pair, "score_numerator"]]
    both = model.merge(gold, on=pair, suffixes=("_model", "_gold"))
    if both.empty:
        return []
    both["diff"] = both["score_numerator_model"] - both["score_numerator_gold"]
    per_item = both.groupby("item_id", sort=False).agg(diff_sum=("diff", "sum"), raters=("diff", "size"))
    per_item = per_item.reset_index().merge(items[["item_id", "record_id", *SYSTEM_KEYS]], on="item_id")
    per_item = per_item.sort_values(["record_id", "item_id"], kind="stable")
    # exact per-item difference: integer sum over one common denominator, one division
    per_item["diff"] = per_item["diff_sum"].to_numpy(np.int64) * 100 / (
        per_item["raters"].to_numpy(np.int64) * scale.denominator)
    rows = []
    for (model_id, method, dataset), group in per_item.groupby(list(SYSTEM_KEYS), sort=True):
        diffs = group["diff"].to_numpy(float)
        rng = sig.stable_rng(settings.seed, "model_vs_gold", model_id, method, dataset)
        test = sig.paired_test(diffs, settings.n_boot, rng, settings.ci_level)
        rows.append({"model": model_id, "method": method, "dataset": dataset,
                     "paired_ratings": int(group["raters"].sum()), **test.to_json()})
    _add_holm(rows)
    return rows


def _add_holm(rows: list[dict[str, Any]]) -> None:
    for row, adjusted in zip(rows, sig.holm([row["p_permutation"] for row in rows])):
        row["p_permutation_holm"] = adjusted


# ---------------------------------------------------------------- FEB Table 3

TABLE_FORMATS = ("text", "markdown", "latex", "json")


def feb_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Dataset x (model, method) rows: model explanation score, gold explanation score, items, CIs, and
    the Holm-corrected permutation p of model vs gold (the shape of FEB's Table 3)."""
    scores = {(r["dataset"], r["model"], r["method"], r["question"]): r for r in report["scores"]}
    tests = {(r["dataset"], r["model"], r["method"]): r
             for r in (report.get("significance") or {}).get("model_vs_gold", [])}
    rows = []
    for dataset, model, method in sorted({key[:3] for key in scores}):
        row: dict[str, Any] = {"dataset": dataset, "model": model, "method": method}
        for question in QUESTIONS:
            found = scores.get((dataset, model, method, question)) or {}
            row[f"{question}_score"] = found.get("mean")
            row[f"{question}_ci_low"] = found.get("ci_low")
            row[f"{question}_ci_high"] = found.get("ci_high")
            row[f"{question}_n_items"] = found.get("n_items", 0)
            row[f"{question}_n_ratings"] = found.get("n_ratings", 0)
        row["p_model_vs_gold_holm"] = (tests.get((dataset, model, method)) or {}).get("p_permutation_holm")
        rows.append(row)
    return rows


def format_feb_table(report: dict[str, Any], fmt: str = "text") -> str:
    """The FEB-Table-3-shaped table as text, Markdown, LaTeX (booktabs) or JSON."""
    if fmt not in TABLE_FORMATS:
        raise AnnotationError(f"unknown table format {fmt!r}: use one of {', '.join(TABLE_FORMATS)}", field="table")
    rows = report.get("feb_table") or feb_table(report)
    if fmt == "json":
        return json.dumps(rows, indent=2, allow_nan=False, ensure_ascii=False)
    level = int(round(report["settings"]["ci_level"] * 100))

    def cell(row: dict, question: str, plus_minus: str) -> str:
        if row[f"{question}_score"] is None:
            return "-"
        ci = (f" [{_num(row[f'{question}_ci_low'])}, {_num(row[f'{question}_ci_high'])}]"
              if row[f"{question}_ci_low"] is not None else "")
        return f"{row[f'{question}_score']:.1f}{ci}"

    headers = ["dataset", "model", "method", f"model expl. ({level}% CI)", "n", f"gold expl. ({level}% CI)", "n",
               "p (model vs gold, Holm)"]
    body = [[r["dataset"], r["model"], r["method"], cell(r, "model", ""), str(r["model_n_items"]),
             cell(r, "gold", ""), str(r["gold_n_items"]), _p(r["p_model_vs_gold_holm"])] for r in rows]
    if fmt == "text":
        return _table(headers, body)
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body])
    lines = ["\\begin{tabular}{lll" + "r" * (len(headers) - 3) + "}", "\\toprule",
             " & ".join(_latex(h) for h in headers) + " \\\\", "\\midrule"]
    lines += [" & ".join(_latex(c) for c in row) + " \\\\" for row in body]
    return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"])


def _p(value: float | None) -> str:
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


LATEX_ESCAPES = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                                "_": r"\_", "{": r"\{", "}": r"\}", "<": "$<$", "~": r"\textasciitilde{}",
                                "^": r"\textasciicircum{}"})


def _latex(text: str) -> str:
    return text.translate(LATEX_ESCAPES)


# ---------------------------------------------------------------- entry points

def run_analysis(db_path: str | Path, study_id: str, settings: QCSettings | None = None,
                 progress=None) -> AnalysisResult:
    """Load, QC, score and correlate one study. `progress(fraction, desc)` is called between steps."""
    settings = settings or QCSettings()
    step = progress or (lambda fraction, desc: None)
    step(0.0, "loading ratings")
    data = load_study(db_path, study_id)
    scale = Scale.from_protocol(data.protocol)
    step(0.2, "quality control")
    ratings, qc = apply_qc(data, scale, settings)
    kept = ratings[ratings["qc_exclusion"].isna()]
    scores = item_scores(kept, data.items, scale)
    step(0.35, "scores")
    report: dict[str, Any] = {
        "study": {"id": data.study["id"], "name": data.study.get("name"), "preset": data.study.get("preset"),
                  "status": data.study.get("status"),
                  "scale": [{"value": v, "label": scale.labels[v], "score": scale.scores[v]}
                            for v in reversed(scale.values)],
                  "binary_positive": sorted(scale.positive), "gate": data.protocol.get("gate")},
        "settings": asdict(settings),
        "qc": qc,
        "scores": system_scores(scores, settings),
        "breakdown_by_gold_label": breakdown(scores, "gold_label", settings),
        "breakdown_by_correct": breakdown(scores, "correct", settings),
        "rating_distribution": rating_distribution(kept, scale),
        "shortcomings": shortcoming_frequencies(kept, data.items, data.protocol),
    }
    # the correlation bootstraps are numpy work that releases the GIL: on a second core they overlap with
    # agreement and the paired tests. Every section has its own generators, so the numbers are the same
    # either way; the thread gets its own copy of the item scores (pandas objects are not shared).
    with ThreadPoolExecutor(max_workers=1) as pool:
        correlations = pool.submit(correlation_section, scores.copy(), list(data.metric_names), settings)
        step(0.5, "agreement")
        report["agreement"] = agreement_section(kept, data.items, scale, settings)
        step(0.65, "significance")
        report["significance"] = significance_section(scores, kept, data.items, scale, settings)
        step(0.75, "correlations")
        report["correlations"] = correlations.result()
    report["feb_table"] = feb_table(report)
    report["warnings"] = analysis_warnings(report, settings)
    step(1.0, "done")
    return AnalysisResult(json_safe(report), scores, ratings)


def analysis_warnings(report: dict[str, Any], settings: QCSettings) -> list[str]:
    out = []
    if settings.n_boot < MIN_BOOT:
        out.append(f"only {settings.n_boot} bootstrap resamples: the intervals and p-values are not reliable "
                   f"(use at least {MIN_BOOT}; 1000 is the default)")
    return out + agreement_warnings(report["agreement"])


def analyze(db_path: str | Path, study_id: str, settings: QCSettings | None = None) -> dict[str, Any]:
    """The JSON-safe report of one study (see `run_analysis`)."""
    return run_analysis(db_path, study_id, settings).report


def json_safe(value: Any) -> Any:
    """Plain Python types, NaN/inf -> None, so json.dumps(..., allow_nan=False) always works."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


# ---------------------------------------------------------------- text report

def _num(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_stat(stat: dict[str, Any], digits: int = 3) -> str:
    if stat["value"] is None:
        return f"undefined: {stat['reason']}"
    text = f"{stat['value']:.{digits}f}"
    if stat.get("ci_low") is not None and stat.get("ci_high") is not None:
        text += f" [{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"
    if stat.get("ci_note"):
        text += f" ({stat['ci_note']})"
    return text


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """A readable plain-text version of the report."""
    study, qc = report["study"], report["qc"]
    level = int(round(report["settings"]["ci_level"] * 100))
    parts = [f"Study {study['id']} ({study.get('name') or 'unnamed'}, preset {study.get('preset')})",
             "Scale: " + ", ".join(f"{p['label']}={p['score']:.3g}" for p in study["scale"])
             + f"; positive (binary) = {', '.join(study['binary_positive'])}", ""]
    for warning in report.get("warnings") or []:
        parts.append(f"warning: {warning}")
    if report.get("warnings"):
        parts.append("")
    parts.append("Quality control")
    rules = qc["rules"]
    parts.append(f"  ratings {qc['ratings_total']}, kept {qc['ratings_kept']}; annotators {qc['annotators_total']}, "
                 f"kept {qc['annotators_kept']}; items {qc['items_total']}, rated after QC {qc['items_rated']}")
    parts.append(f"  rules: gate filter {'on' if rules['gate_filter'] else 'off'} (policy {rules['gate_policy']}), "
                 f"min seconds {rules['min_seconds']:g}, min gold acceptance {rules['min_gold_acceptance']:g}")
    parts.append("  excluded: " + ", ".join(f"{k} {v}" for k, v in qc["excluded"].items()))
    gate = qc["gate_assignments"]
    parts.append(f"  gate answers {gate['answered']}, wrong {gate['wrong']} "
                 f"({gate['wrong_without_ratings']} blocked with no ratings)")
    for ann in qc["annotators_excluded"]:
        parts.append(f"  excluded annotator {ann['annotator_id']}: gold acceptance "
                     f"{ann['gold_acceptance']:.2f} on {ann['gold_ratings']} gold ratings")
    if qc["ratings_kept"] == 0:
        parts += ["", "No ratings left to analyse" + (" after QC." if qc["ratings_total"] else " (none yet).")]
    parts += ["", f"Scores (mean of item scores x100, bootstrap {level}% CI over items)"]
    parts.append(_table(["model", "method", "dataset", "question", "items", "mean", "std", "stderr", "CI"],
                        [[r["model"], r["method"], r["dataset"], r["question"], str(r["n_items"]), _num(r["mean"]),
                          _num(r["std"]), _num(r["stderr"]),
                          f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]"] for r in report["scores"]]))
    for key, label in (("gold_label", "gold label"), ("correct", "prediction correct")):
        parts += ["", f"By {label}"]
        parts.append(_table(["model", "method", "dataset", "question", label, "items", "mean", "stderr"],
                            [[r["model"], r["method"], r["dataset"], r["question"], str(r[key]),
                              str(r["n_items"]), _num(r["mean"]), _num(r["stderr"])]
                             for r in report[f"breakdown_by_{key}"]]))
    parts += ["", "Rating distribution (after QC)"]
    parts.append(_table(["question", "rating", "count", "share"],
                        [[r["question"], r["label"], str(r["count"]), f"{r['share']:.2f}"]
                         for r in report["rating_distribution"]]))
    if report["shortcomings"]:
        parts += ["", "Shortcomings (share of ratings that answered the checklist)"]
        parts.append(_table(["model", "method", "dataset", "question", "shortcoming", "count", "share"],
                            [[r["model"], r["method"], r["dataset"], r["question"], r["label"], str(r["count"]),
                              f"{r['share']:.2f}"] for r in report["shortcomings"]]))
    parts += ["", "Agreement (binary collapse for kappas and percent agreement; ordinal alpha on the full scale)"]
    for row in report["agreement"]:
        kappa_items = (f"kappas on {row['items'] - row['items_dropped_for_kappa']} items with "
                       f"{row['raters_per_item_for_kappa']} raters ({row['items_dropped_for_kappa']} dropped)"
                       if row["raters_per_item_for_kappa"] else "no item has 2 or more raters")
        parts.append(f"  [{row['question']}] {row['scope']}: {row['items']} items, {kappa_items}")
        parts.append(f"      Fleiss' kappa {format_stat(row['fleiss_kappa_binary'])}; Randolph's free-marginal kappa "
                     f"{format_stat(row['randolph_free_marginal_kappa_binary'])}; Krippendorff's alpha (ordinal) "
                     f"{format_stat(row['krippendorff_alpha_ordinal'])}")
        parts.append(f"      percent agreement binary {format_stat(row['percent_agreement_binary'], 1)}, scale "
                     f"{format_stat(row['percent_agreement_scale'], 1)}; unanimous items binary "
                     f"{row['unanimous_items_binary']}, scale {row['unanimous_items_scale']}")
    significance = report.get("significance")
    if significance:
        parts += ["", f"Paired tests (differences x100, {level}% bootstrap CI; p from a sign-flip permutation "
                      "test over items, exact when 2^items <= resamples; Holm-corrected within each list)"]
        pairs = significance["between_systems"]
        parts.append("  Systems on the same inputs (model explanations): "
                     + ("none share inputs" if not pairs else ""))
        if pairs:
            parts.append(_table(["dataset", "A", "B", "items", "A - B", "CI", "p", "p Holm"],
                                [[r["dataset"], f"{r['a']['model']} {r['a']['method']}",
                                  f"{r['b']['model']} {r['b']['method']}", str(r["n_items"]), _num(r["mean_diff"]),
                                  f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]",
                                  _p(r["p_permutation"]), _p(r["p_permutation_holm"])] for r in pairs]))
        tests = significance["model_vs_gold"]
        if tests:
            parts.append("  Model vs gold explanation (same items, same annotators):")
            parts.append(_table(["model", "method", "dataset", "items", "model - gold", "CI", "p", "p Holm"],
                                [[r["model"], r["method"], r["dataset"], str(r["n_items"]), _num(r["mean_diff"]),
                                  f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]",
                                  _p(r["p_permutation"]), _p(r["p_permutation_holm"])] for r in tests]))
    if report.get("feb_table"):
        parts += ["", f"Table (FEB Table 3 shape: mean score x100 [{level}% CI], items)", format_feb_table(report)]
    corr = report["correlations"]
    parts += ["", f"Human (model explanations) vs automatic metrics ({level}% bootstrap CI)"]
    if not corr["item_level"]:
        parts.append("  no automatic metrics in the predictions records")
    for item, system in zip(corr["item_level"], corr["system_level"]):
        parts.append(f"  {item['metric']}: item level (n={item['n']}, {item['n_boot']} resamples) Spearman "
                     f"{format_stat(item['spearman'])}, Kendall {format_stat(item['kendall'])}")
        parts.append(f"  {' ' * len(item['metric'])}  system level (n={system['n_systems']}) Spearman "
                     f"{format_stat(system['spearman'])}, Kendall {format_stat(system['kendall'])}")
    return "\n".join(parts)
