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


def test_a_submission_is_final_and_a_resubmission_changes_nothing(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=1))
    annotator = store.add_annotators(study, 1)[0]
    assignment = store.next_assignment(annotator)
    store.answer_gate(annotator, assignment.id, store.item(assignment.item_id)["gold_label"])
    store.submit(annotator, assignment.id, {q: RatingInput("yes") for q in assignment.order}, "first")
    before = [dict(r) for r in store.db["ratings"].rows]
    store.submit(annotator, assignment.id, {q: RatingInput("yes") for q in assignment.order})  # double click
    store.submit(annotator, assignment.id, {q: RatingInput("no") for q in assignment.order}, "changed my mind")
    # the hostile replay from the issue, through the flow: an old, submitted assignment id with new values
    flow = AnnotatorFlow(store)
    store.next_assignment(annotator)  # the annotator has moved on to another item
    replay = flow.submit(annotator.token, assignment.id, "no", "no", comment="rewritten")
    assert replay["ok"] and "already saved" in replay["message"]
    assert [dict(r) for r in store.db["ratings"].rows] == before  # not one byte changed
    assert {r["rating"] for r in before} == {"yes"} and {r["comment"] for r in before} == {"first"}
    assert {r["shown_position"] for r in before} == {1, 2}
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
    assert after["progress"]["text"] == "Item 2 of 2 (1 ended at the question)"  # not counted as rated


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
    assert after["ok"] and after["progress"]["text"] == "Item 2 of 3"  # the study has 3 items, not a page of 10
    assert [(r["question"], r["score"]) for r in store.db["ratings"].rows] == [("model", 1 / 3)]


# ------------------------------------------------------------------ holes from the hostile-participant review


def test_a_made_up_prolific_id_cannot_enter_without_the_study_key(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=2, max_signups=2))
    key = store.study(study)["entry_key"]
    flow = AnnotatorFlow(store)
    for wrong in ("", "guess", key[:-1]):
        view = flow.start(study=study, prolific_pid="any-made-up-PID", key=wrong)
        assert view["stage"] == "error" and "not valid" in view["message"]
    unknown = flow.start(study="no-such-study", prolific_pid="PID", key=key)
    assert unknown["message"] == flow.start(study=study, prolific_pid="PID", key="x")["message"]  # no oracle
    assert store.db["annotators"].count == 0 and store.db["assignments"].count == 0
    first = flow.start(study=study, prolific_pid="P1", key=key)
    assert first["stage"] == "gate"
    assert flow.start(study=study, prolific_pid="P2", key=key)["stage"] == "gate"
    full = flow.start(study=study, prolific_pid="P3", key=key)
    assert full["stage"] == "error" and "full" in full["message"]
    assert flow.start(study=study, prolific_pid="P1", key=key)["assignment_id"] == first["assignment_id"]


def test_gate_answers_outside_the_options_shown_are_refused_and_not_stored(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=3, items_per_page=10))
    annotator = store.add_annotators(study, 1)[0]
    assignment = store.next_assignment(annotator)
    gold = store.item(assignment.item_id)["gold_label"]
    for answer in ("x" * 100_000, "entailment; DROP TABLE ratings", gold + " "  + gold):
        with pytest.raises(AnnotationError, match="choose one of the answers shown"):
            store.answer_gate(annotator, assignment.id, answer)
    assert store.assignment(annotator, assignment.id).gate_answer is None
    answered = store.answer_gate(annotator, assignment.id, "  " + gold.upper() + " ")  # as shown, any case
    assert answered.gate_answer == gold and answered.gate_correct == 1


def test_open_sign_ups_are_capped_at_twice_the_annotators_needed_by_default(tmp_path, predictions):
    """A participant holds the study key: made-up PROLIFIC_PIDs must not let them take every item slot."""
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=2, items_per_page=4, annotators_per_item=3))
    items = store.study_progress(study)["items"]
    needed = -(-items * 3 // 4)
    assert store.study(study)["max_signups"] == 2 * needed
    flow, key = AnnotatorFlow(store), store.study(study)["entry_key"]
    views = [flow.start(study=study, prolific_pid=f"FAKE{i}", key=key) for i in range(2 * needed + 3)]
    assert all(v["stage"] != "error" for v in views[:2 * needed])
    assert all(v["stage"] == "error" and "full" in v["message"] for v in views[2 * needed:])
    assert store.db["annotators"].count == 2 * needed
    assert flow.start(study=study, prolific_pid="FAKE0", key=key)["stage"] != "error"  # who signed up comes back
    store.set_max_signups(study, 0)  # the researcher lifts the cap
    assert flow.start(study=study, prolific_pid="LATE", key=key)["stage"] != "error"
    with pytest.raises(AnnotationError, match="must be 0"):
        store.set_max_signups(study, -1)
    with pytest.raises(AnnotationError, match="must be 0"):
        store.create_study(predictions, StudySettings(per_label=2, max_signups=-1, name="negative"))
    uncapped = store.create_study(predictions, StudySettings(per_label=2, max_signups=0, name="uncapped"))
    assert store.study(uncapped)["max_signups"] is None


def test_no_completion_code_without_work(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=3, items_per_page=10))
    flow = AnnotatorFlow(store)
    key = store.study(study)["entry_key"]
    view = flow.start(study=study, prolific_pid="CLICKER", key=key)
    for _ in range(10):  # the attack from the issue: wrong gate answers as fast as possible
        if view["stage"] != "gate":
            break
        gold = store.item(store.assignment(_by_token(store, view["token"]), view["assignment_id"]).item_id)["gold_label"]
        view = flow.answer_gate(view["token"], view["assignment_id"], next(o for o in view["gate"]["options"]
                                                                          if o != gold))
    assert view["stage"] == "done" and view["completion_code"] == "" and "completion_url" not in view
    assert "ended for you" in view["thanks"]
    assert store.db.execute("SELECT count(*) FROM assignments WHERE status = 'gate_failed'").fetchone()[0] == 3
    row = store.db.execute("SELECT completion_code, blocked_at FROM annotators").fetchone()
    assert row[0] is None and row[1]
    # a page filled only with gate failures (fewer than the limit) earns no code either
    small = store.create_study(predictions, StudySettings(per_label=1, items_per_page=2, name="small"))
    other = store.add_annotators(small, 1)[0]
    for _ in range(2):
        a = store.next_assignment(other)
        item = store.item(a.item_id)
        options = store.study(small)["protocol"]["resolved"]["gate_questions"][item["dataset"]]["options"]
        store.answer_gate(other, a.id, next(o for o in options if o != item["gold_label"]))
    done = flow.start(token=other.token)
    assert done["stage"] == "done" and done["completion_code"] == "" and done["progress"]["done"] == 2
    # real work earns a personal code, recorded on the annotator
    worker = store.add_annotators(small, 1)[0]
    while (a := store.next_assignment(worker)) is not None:
        rate_all(store, worker, a)
    earned = flow.start(token=worker.token)
    assert earned["completion_code"].startswith("SF-") and earned["completion_code"] != store.study(small)["completion_code"]
    assert store.db["annotators"].get(worker.id)["completion_code"] == earned["completion_code"]


def _by_token(store: Store, token: str):
    return store.annotator_by_token(token)


def test_quota_and_slots_hold_under_random_interleavings(tmp_path, predictions):
    """Abandon, re-hold, late answers to old items and new items in random order: after every step no item
    holds more than k slots, nobody holds two items and nobody's page goes past its quota."""
    import random as random_module
    clock = Clock()
    store = make_store(tmp_path, clock)
    study = store.create_study(predictions, StudySettings(per_label=2, annotators_per_item=2, items_per_page=1,
                                                          abandon_minutes=5))
    people = store.add_annotators(study, 6)
    seen: dict[str, list] = {p.id: [] for p in people}
    rng = random_module.Random(7)
    for _ in range(600):
        person = rng.choice(people)
        action = rng.random()
        try:
            if action < 0.35:
                got = store.next_assignment(person)
                if got:
                    seen[person.id].append(got)
            elif action < 0.5:
                clock.now += timedelta(minutes=rng.choice([1, 6]))  # sometimes long enough to abandon
            elif seen[person.id]:
                old = rng.choice(seen[person.id])  # any item this person ever had, current or long gone
                if action < 0.7:
                    store.answer_gate(person, old.id, store.item(old.item_id)["gold_label"])
                else:
                    store.submit(person, old.id, {q: RatingInput("yes") for q in old.order})
        except AnnotationError:
            pass  # refusals are fine; breaking an invariant is not
        _assert_invariants(store, study, quota=1, per_item=2)
    assert store.db.execute("SELECT count(*) FROM assignments WHERE status = 'submitted'").fetchone()[0] > 0


def _assert_invariants(store: Store, study: str, *, quota: int, per_item: int) -> None:
    over_item = store.db.execute(
        "SELECT item_id, count(*) FROM assignments WHERE study_id = ? AND status IN ('assigned', 'submitted') "
        "GROUP BY item_id HAVING count(*) > ?", [study, per_item]).fetchall()
    over_page = store.db.execute(
        "SELECT annotator_id, sum(status IN ('assigned', 'submitted', 'gate_failed')), sum(status = 'assigned') "
        "FROM assignments WHERE study_id = ? GROUP BY annotator_id HAVING sum(status IN ('assigned', "
        "'submitted', 'gate_failed')) > ? OR sum(status = 'assigned') > 1", [study, quota]).fetchall()
    drift = store.db.execute(
        "SELECT i.id FROM items i WHERE i.study_id = ? AND i.taken != (SELECT count(*) FROM assignments a "
        "WHERE a.item_id = i.id AND a.status IN ('assigned', 'submitted'))", [study]).fetchall()
    assert not over_item and not over_page and not drift, (over_item, over_page, drift)


def test_next_item_comes_from_an_index_not_a_scan(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=2))
    plan = " | ".join(row[3] for row in store.db.execute(
        "EXPLAIN QUERY PLAN SELECT i.id FROM items i WHERE i.study_id = ? AND i.taken < ? AND NOT EXISTS "
        "(SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.annotator_id = ?) "
        "ORDER BY i.taken DESC, i.position DESC LIMIT 1", [study, 3, "x"]).fetchall())
    assert "USING INDEX" in plan and "TEMP B-TREE" not in plan and "SCAN i " not in plan + " ", plan


def test_a_version_1_database_is_migrated_in_place(tmp_path, predictions):
    store = make_store(tmp_path)
    study = store.create_study(predictions, StudySettings(per_label=1, annotators_per_item=2))
    annotator = store.add_annotators(study, 1)[0]
    rate_all(store, annotator, store.next_assignment(annotator))
    conn = sqlite3.connect(tmp_path / "studies.db")
    for table, column in (("studies", "entry_key"), ("studies", "max_signups"), ("annotators", "completion_code"),
                          ("annotators", "gate_fail_streak"), ("annotators", "blocked_at")):
        conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    for name in ("items_taken_insert", "items_taken_update", "items_taken_delete"):
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DROP INDEX idx_items_study_id_taken_position")
    conn.execute("ALTER TABLE items DROP COLUMN taken")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    migrated = Store(tmp_path / "studies.db")
    assert migrated.study(study)["entry_key"]
    held = migrated.db.execute("SELECT count(*) FROM assignments WHERE status IN ('assigned', 'submitted')").fetchone()[0]
    assert held == 2 and migrated.db.execute("SELECT sum(taken) FROM items").fetchone()[0] == held
    assert migrated.db.execute("PRAGMA user_version").fetchone()[0] == 3
    assert migrated.db["ratings"].count == 2  # nothing stored was lost
    second = migrated.add_annotators(study, 1)[0]
    assert migrated.next_assignment(second).item_id == migrated.db["assignments"].get(1)["item_id"]  # fullest first
    _assert_invariants(migrated, study, quota=10, per_item=2)


def test_predictions_with_nan_deep_nesting_surrogates_or_a_folder_are_refused(tmp_path, predictions):
    lines = predictions.read_text().splitlines()
    cases = {"nan": ('"metrics": {"bleu": NaN}', "field 'metrics.bleu'", "NaN"),
             "inf": ('"trainable_percent": Infinity', "field 'trainable_percent'", "Infinity"),
             "deep": ('"extra": ' + "[" * 5000 + "]" * 5000, "nested deeper", "nested deeper"),
             "surrogate": ('"label_options": ["\\ud800"]', "field 'label_options[0]'", "surrogate"),
             "huge": ('"prompt": "' + "x" * 30_000 + '"', "field 'prompt'", "longer than the limit")}
    store = make_store(tmp_path)
    for name, (extra, where, what) in cases.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(lines[0] + "\n" + lines[1][:-1] + ", " + extra + "}\n")
        with pytest.raises(AnnotationError) as info:
            store.create_study(bad)
        message = str(info.value)
        assert f"{name}.jsonl:2" in message and where in message and what in message, message
        assert "\n" not in message
    with pytest.raises(AnnotationError, match="is a folder"):
        store.create_study(tmp_path)
    assert store.db["studies"].count == 0
    big = tmp_path / "big-ok.jsonl"
    big.write_text(lines[0] + "\n" + lines[1][:-1] + ', "prompt": "' + "x" * 30_000 + '"}\n')
    assert store.create_study(big, StudySettings(per_label=0, only_correct=False, max_field_chars=50_000))


def test_predictions_whose_values_a_study_would_get_wrong_are_refused(tmp_path, predictions):
    lines = predictions.read_text().splitlines()
    record = json.loads(lines[1])
    wrong_label = next(o for o in record["label_options"] if o != record["gold_label"])
    cases = {"empty-id": ({"id": " "}, "field 'id'", "must not be empty"),
             "spaced-id": ({"id": record["id"] + " "}, "field 'id'", "starts or ends with spaces"),
             "empty-gold": ({"gold_label": ""}, "field 'gold_label'", "must not be empty"),
             "options": ({"label_options": [1, 2]}, "field 'label_options'", "array of label strings"),
             "gold-not-an-option": ({"gold_label": "maybe"}, "field 'gold_label'", "is not one of label_options"),
             "correct-but-wrong": ({"correct": True, "pred_label": wrong_label}, "field 'correct'",
                                   "correct is true, but pred_label"),
             "1e400": ({"trainable_percent": "HUGE"}, "field 'trainable_percent'", "too large")}
    store = make_store(tmp_path)
    for name, (change, where, what) in cases.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(lines[0] + "\n" + json.dumps({**record, **change}).replace('"HUGE"', "1e400") + "\n")
        with pytest.raises(AnnotationError) as info:
            store.create_study(bad)
        message = str(info.value)
        assert f"{name}.jsonl:2" in message and where in message and what in message, message
    assert store.db["studies"].count == 0


def test_cli_refuses_a_folder_or_a_nan_file_in_one_line(tmp_path, predictions, capsys):
    from annotation.cli import main
    nan = tmp_path / "nan.jsonl"
    nan.write_text(predictions.read_text().splitlines()[0][:-1] + ', "metrics": {"bleu": NaN}}\n')
    for bad in (tmp_path, nan):
        with pytest.raises(SystemExit) as info:
            main(["study", "create", "--db", str(tmp_path / "s.db"), "--predictions", str(bad)])
        err = capsys.readouterr().err
        assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "nan.jsonl:1, field 'metrics.bleu'" in err
    main(["study", "create", "--db", str(tmp_path / "s.db"), "--predictions", str(predictions), "--name", "c"])
    main(["annotators", "add", "--db", str(tmp_path / "s.db"), "--study", "c", "--count", "1"])
    url = capsys.readouterr().err.split()[-1]
    assert "key=" + Store(tmp_path / "s.db").study("c")["entry_key"] in url and "PROLIFIC_PID" in url
