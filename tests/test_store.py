"""Store tests on a real SQLite file: selection, overlap, abandonment, idempotency, concurrency, errors."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from annotation.errors import AnnotationError
from annotation.flow import AnnotatorFlow
from annotation.protocol import load_preset
from annotation.sample_data import write_simulated_esnli
from annotation.store import RatingInput, Store, StudySettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "esnli").exists(), reason=f"shared dev data not found at {DATA}")


class Clock:
    """A clock the test can move forward, to exercise abandonment without sleeping."""

    def __init__(self):
        self.now = datetime(2026, 1, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def predictions(tmp_path: Path) -> Path:
    return write_simulated_esnli(tmp_path / "predictions.jsonl", DATA, count=60, accuracy=0.7, seed=3)


def make_store(tmp_path: Path, clock=None) -> Store:
    return Store(tmp_path / "studies.db", **({"clock": clock} if clock else {}))


def rate_all(store: Store, annotator, assignment) -> None:
    store.answer_gate(annotator, assignment.id, store.item(assignment.item_id)["gold_label"])
    store.submit(annotator, assignment.id, {q: RatingInput("weak_yes") for q in assignment.order})


def test_selection_is_correct_only_label_balanced_and_seeded(tmp_path, predictions):
    store = make_store(tmp_path)
    first = store.create_study(predictions, StudySettings(per_label=3, seed=5, name="a"))
    again = store.create_study(predictions, StudySettings(per_label=3, seed=5, name="b"))
    other = store.create_study(predictions, StudySettings(per_label=3, seed=6, name="c"))
    records = {json.loads(l)["id"]: json.loads(l) for l in predictions.read_text().splitlines()}
    chosen = lambda sid: [r["record_id"] for r in store.db["items"].rows_where("study_id = ?", [sid],  # noqa: E731
                                                                               order_by="position")]
    assert all(records[i]["correct"] for i in chosen(first))
    assert Counter(records[i]["gold_label"] for i in chosen(first)) == {"entailment": 3, "neutral": 3,
                                                                       "contradiction": 3}
    assert chosen(first) == chosen(again) and set(chosen(first)) != set(chosen(other))
    study = store.study(first)
    assert study["protocol"]["scale"] == load_preset("feb")["scale"]  # the preset is copied into the study
    assert study["protocol"]["resolved"]["gate_questions"]["esnli"]["options"]


def test_each_item_gets_exactly_k_annotators_and_nobody_twice(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=2, annotators_per_item=3, items_per_page=4))
    annotators = store.add_annotators(study, 8)  # 8 x 4 = 32 slots for 6 x 3 = 18 needed
    for annotator in annotators:
        while (assignment := store.next_assignment(annotator)) is not None:
            rate_all(store, annotator, assignment)
    rows = list(store.db.query("SELECT item_id, annotator_id FROM assignments WHERE status = 'submitted'"))
    per_item = Counter(r["item_id"] for r in rows)
    assert len(per_item) == 6 and set(per_item.values()) == {3}
    assert len({(r["item_id"], r["annotator_id"]) for r in rows}) == len(rows)
    assert store.db["ratings"].count == 18 * 2  # model and gold rated per annotation
    assert store.study_progress(study)["items_complete"] == 6
    assert max(store.progress(a).done for a in annotators) == 4


def test_double_submit_is_idempotent_and_a_retry_replaces(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=1))
    annotator = store.add_annotators(study, 1)[0]
    assignment = store.next_assignment(annotator)
    store.answer_gate(annotator, assignment.id, store.item(assignment.item_id)["gold_label"])
    ratings = {q: RatingInput("yes") for q in assignment.order}
    store.submit(annotator, assignment.id, ratings)
    store.submit(annotator, assignment.id, ratings)
    store.submit(annotator, assignment.id, {q: RatingInput("no") for q in assignment.order})
    rows = list(store.db["ratings"].rows)
    assert len(rows) == 2 and {r["rating"] for r in rows} == {"no"} and {r["score"] for r in rows} == {0.0}
    assert {r["shown_position"] for r in rows} == {1, 2}
    # the ratings are on disk: a brand-new connection sees them
    assert sqlite3.connect(tmp_path / "studies.db").execute("SELECT count(*) FROM ratings").fetchone()[0] == 2


def test_abandoned_items_return_to_the_pool(tmp_path, predictions):
    clock = Clock()
    store = make_store(tmp_path, clock)
    study = store.create_study(predictions, StudySettings(per_label=1, annotators_per_item=1, abandon_minutes=10))
    first, second = store.add_annotators(study, 2)
    held = [store.next_assignment(first)]
    others = []
    while (a := store.next_assignment(second)) is not None:  # takes every other item
        rate_all(store, second, a)
        others.append(a.item_id)
    assert held[0].item_id not in others and len(others) == 2
    clock.now += timedelta(minutes=11)
    third = store.add_annotators(study, 1)[0]
    taken = store.next_assignment(third)
    assert taken.item_id == held[0].item_id  # the abandoned item went back to the pool
    rate_all(store, third, taken)
    with pytest.raises(AnnotationError, match="given to someone else"):
        store.submit(first, held[0].id, {q: RatingInput("yes") for q in held[0].order})
    assert store.next_assignment(first) is None  # nothing left: the only item is complete


def test_resume_returns_the_same_item(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=2))
    annotator = store.add_annotators(study, 1)[0]
    flow = AnnotatorFlow(store)
    view = flow.start(token=annotator.token)
    again = AnnotatorFlow(Store(tmp_path / "studies.db")).start(token=annotator.token)  # "reopened tab"
    assert view["stage"] == "gate" and again["assignment_id"] == view["assignment_id"]
    gold = store.item(store.assignment(annotator, view["assignment_id"]).item_id)["gold_label"]
    rate_view = flow.answer_gate(annotator.token, view["assignment_id"], gold)
    assert rate_view["stage"] == "rate" and rate_view["answer"] == gold
    resumed = flow.start(token=annotator.token)
    assert resumed["stage"] == "rate" and resumed["assignment_id"] == view["assignment_id"]
    assert [e["text"] for e in resumed["explanations"]] == [e["text"] for e in rate_view["explanations"]]


def test_gate_block_policy_and_hidden_gold(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=1, items_per_page=2))
    annotator = store.add_annotators(study, 1)[0]
    flow = AnnotatorFlow(store)
    view = flow.start(token=annotator.token)
    gold = store.item(store.assignment(annotator, view["assignment_id"]).item_id)["gold_label"]
    text = json.dumps(view)
    assert "explanations" not in view and '"gold' not in text and '"model' not in text
    wrong = next(o for o in view["gate"]["options"] if o != gold)
    after = flow.answer_gate(annotator.token, view["assignment_id"], wrong)
    assert "ends here" in after["message"] and after["assignment_id"] != view["assignment_id"]
    row = store.db["assignments"].get(view["assignment_id"])
    assert row["status"] == "gate_failed" and row["gate_correct"] == 0 and store.db["ratings"].count == 0
    assert after["progress"]["text"] == "Item 2 of 2"


def test_token_isolation(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=1))
    alice, bob = store.add_annotators(study, 2)
    flow = AnnotatorFlow(store)
    alice_view = flow.start(token=alice.token)
    stolen = flow.submit(bob.token, alice_view["assignment_id"], "yes", "yes")
    assert not stolen["ok"] and "not assigned to your link" in stolen["message"]
    assert flow.start(token="not-a-token")["stage"] == "error"
    assert store.db["ratings"].count == 0


def test_concurrent_submits_from_threads(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=2, annotators_per_item=3, items_per_page=6))
    annotators = store.add_annotators(study, 6)
    errors: list[BaseException] = []

    def work(annotator):
        try:
            while (assignment := store.next_assignment(annotator)) is not None:
                store.answer_gate(annotator, assignment.id, store.item(assignment.item_id)["gold_label"])
                ratings = {q: RatingInput("yes") for q in assignment.order}
                threads = [threading.Thread(target=store.submit, args=(annotator, assignment.id, ratings))
                           for _ in range(2)]  # a double click from two requests at once
                [t.start() for t in threads]
                [t.join() for t in threads]
        except BaseException as err:  # surfaced below
            errors.append(err)

    workers = [threading.Thread(target=work, args=(a,)) for a in annotators]
    [w.start() for w in workers]
    [w.join() for w in workers]
    assert not errors
    per_item = Counter(r["item_id"] for r in store.db.query(
        "SELECT item_id FROM assignments WHERE status = 'submitted'"))
    assert set(per_item.values()) == {3} and len(per_item) == 6
    assert store.db["ratings"].count == 6 * 3 * 2


def test_bad_predictions_file_names_line_and_field(tmp_path, predictions):
    lines = predictions.read_text().splitlines()
    broken = json.loads(lines[2])
    del broken["gold_label"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1], json.dumps(broken)]) + "\n")
    store = make_store(tmp_path)
    with pytest.raises(AnnotationError) as info:
        store.create_study(bad)
    assert "bad.jsonl:3" in str(info.value) and "gold_label" in str(info.value)
    none_correct = tmp_path / "wrong.jsonl"
    none_correct.write_text("\n".join(json.dumps({**json.loads(l), "correct": False}) for l in lines) + "\n")
    with pytest.raises(AnnotationError, match="no correctly predicted records"):
        store.create_study(none_correct)
    assert store.db["studies"].count == 0


def test_bad_preset_names_field(tmp_path):
    preset = load_preset("feb")
    del preset["scale"][0]["score"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(preset))
    with pytest.raises(AnnotationError, match=r"mine.json, field 'scale\[0\].score'"):
        load_preset(path)
    with pytest.raises(AnnotationError, match="unknown preset"):
        load_preset("nope")


def test_preset_without_gate_rates_only_the_model_explanation(tmp_path, predictions):
    preset = load_preset("feb")
    preset.update(name="model-only", rate=["model"], gate={"enabled": False, "policy": "record"})
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(preset=preset, per_label=1))
    token = store.add_annotators(study, 1)[0].token
    flow = AnnotatorFlow(store)
    view = flow.start(token=token)
    assert view["stage"] == "rate" and [e["slot"] for e in view["explanations"]] == ["A"]
    record = json.loads(store.item(store.db["assignments"].get(view["assignment_id"])["item_id"])["record_json"])
    assert view["explanations"][0]["text"] == record["pred_explanation"]
    after = flow.submit(token, view["assignment_id"], "weak_no")
    assert after["ok"] and after["progress"]["text"] == "Item 2 of 10"
    assert [(r["question"], r["score"]) for r in store.db["ratings"].rows] == [("model", 1 / 3)]
