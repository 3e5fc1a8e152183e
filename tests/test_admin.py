"""Admin side on the real store: the hashed admin secret and its lock-out, the study lifecycle, unused
links at restart, and the annotator's "Item n of N" counting only what they can really get."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from annotation import admin
from annotation.errors import AnnotationError
from annotation.flow import AnnotatorFlow
from annotation.sample_data import write_simulated_esnli
from annotation.store import STUDY_CLOSED, RatingInput, Store, StudySettings
from conftest import free_port

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (DATA / "esnli").exists(), reason=f"shared dev data not found at {DATA}")


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "studies.db")


@pytest.fixture
def predictions(tmp_path) -> Path:
    return write_simulated_esnli(tmp_path / "p.jsonl", DATA, count=30, accuracy=1.0, seed=3)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_admin_secret_is_generated_once_stored_hashed_and_replaceable(store):
    generated = admin.ensure_admin_secret(store)
    assert generated and len(generated) >= 12
    stored = store.setting(admin.ADMIN_SECRET_KEY)
    assert generated not in stored and stored.startswith("scrypt$")
    assert admin.ensure_admin_secret(store) is None  # a restart keeps it: nothing new to print
    assert store.setting(admin.ADMIN_SECRET_KEY) == stored
    gate = admin.AdminGate(Store(store.path))  # another worker on the same file
    assert gate.ok(generated) and not gate.ok(generated + "x") and not gate.ok("")
    assert admin.ensure_admin_secret(store, "from-the-command-line") is None  # --admin-password replaces it
    assert gate.ok("from-the-command-line") and not gate.ok(generated)


def test_wrong_passwords_lock_out_one_client_for_a_minute(store):
    admin.ensure_admin_secret(store, "right-password")
    clock = Clock()
    gate = admin.AdminGate(store, clock=clock)
    for tries_left in (4, 3, 2, 1):
        with pytest.raises(AnnotationError, match=f"{tries_left} tr"):
            gate.require("wrong", "10.0.0.1")
    with pytest.raises(AnnotationError, match="locked for 60 seconds"):
        gate.require("wrong", "10.0.0.1")
    with pytest.raises(AnnotationError, match="try again in 60 seconds"):
        gate.require("right-password", "10.0.0.1")  # even the right one waits out the lock
    gate.require("right-password", "10.0.0.2")  # another address is not affected
    clock.now += 61
    gate.require("right-password", "10.0.0.1")
    with pytest.raises(AnnotationError, match="4 tries left"):  # a success resets the count
        gate.require("wrong", "10.0.0.1")


def test_parallel_wrong_passwords_get_no_more_than_five_checks(store):
    """Guesses sent at once (the Admin and Results events run concurrently) must not all pass the lock-out
    before the first failure is recorded: at most 5 are checked, the rest are refused, and the lock holds."""
    import threading
    admin.ensure_admin_secret(store, "right-password")
    gate = admin.AdminGate(store)
    start, messages = threading.Barrier(16), []

    def guess(i: int) -> None:
        start.wait()
        try:
            gate.require(f"guess-{i}", "10.0.0.9")
        except AnnotationError as err:
            messages.append(str(err))

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    checked = [m for m in messages if m.startswith("field 'password': wrong admin password")]
    assert len(messages) == 16 and 1 <= len(checked) <= 5, messages
    with pytest.raises(AnnotationError, match="try again in"):
        gate.require("right-password", "10.0.0.9")
    gate.require("right-password", "10.0.0.10")


def test_change_password(store):
    admin.ensure_admin_secret(store, "old-password")
    gate = admin.AdminGate(store)
    with pytest.raises(AnnotationError, match="at least 8"):
        gate.change("old-password", "short", "short")
    with pytest.raises(AnnotationError, match="differ"):
        gate.change("old-password", "new-password", "new-passwort")
    with pytest.raises(AnnotationError, match="wrong admin password"):
        gate.change("not-it", "new-password", "new-password")
    gate.change("old-password", "new-password", "new-password")
    assert gate.ok("new-password") and not gate.ok("old-password")


def test_duplicate_study_name_is_refused_not_suffixed(store, predictions):
    store.create_study(predictions, StudySettings(per_label=1, name="Pilot"))
    with pytest.raises(AnnotationError, match="'pilot' already exists") as err:
        admin.check_new_study_name(store, "pilot")
    assert err.value.field == "name"
    admin.check_new_study_name(store, "pilot 2")
    admin.check_new_study_name(store, "")  # no name: the file name is used, suffixed when needed


def test_closed_study_gives_no_new_work_and_reopens(store, predictions):
    study = store.create_study(predictions, StudySettings(per_label=1, items_per_page=2, name="life"))
    busy, fresh = store.add_annotators(study, 2)
    held = store.next_assignment(busy)
    store.set_study_status(study, "closed")
    assert store.next_assignment(busy).id == held.id  # an item already held can still be finished
    with pytest.raises(AnnotationError) as err:
        store.next_assignment(fresh)
    assert err.value.reason == STUDY_CLOSED
    assert AnnotatorFlow(store).start(fresh.token)["message"] == STUDY_CLOSED
    with pytest.raises(AnnotationError, match="closed"):
        store.sign_in_prolific(study, "NEWPID", entry_key=store.study(study)["entry_key"])
    with pytest.raises(AnnotationError, match="unknown status"):
        store.set_study_status(study, "paused")
    store.set_study_status(study, "open")
    assert store.next_assignment(fresh) is not None
    assert [s["status"] for s in admin.study_rows(store)] == ["open"]


def test_delete_only_without_ratings(store, predictions):
    rated = store.create_study(predictions, StudySettings(per_label=1, name="rated"))
    empty = store.create_study(predictions, StudySettings(per_label=1, name="empty"))
    store.add_annotators(empty, 2)
    person = store.add_annotators(rated, 1)[0]
    assignment = store.next_assignment(person)
    gold = store.item(assignment.item_id)["gold_label"]
    store.answer_gate(person, assignment.id, gold)
    store.submit(person, assignment.id, {"model": RatingInput("yes"), "gold": RatingInput("no")}, "")
    with pytest.raises(AnnotationError, match="archive it instead"):
        store.delete_study(rated)
    assert store.db["ratings"].count_where("study_id = ?", [rated]) == 2  # nothing lost
    store.delete_study(empty)
    assert [s["id"] for s in store.studies()] == ["rated"]
    assert store.db["annotators"].count_where("study_id = ?", [empty]) == 0


def test_item_count_is_what_the_annotator_can_get_and_gate_failures_are_not_rated(store, predictions):
    from annotation.protocol import load_preset
    preset = load_preset("feb")
    preset["gate"]["max_failures_in_row"] = 0  # no lock-out here: this test is about the counts
    study = store.create_study(predictions, StudySettings(preset=preset, per_label=2, items_per_page=10,
                                                          annotators_per_item=1, name="count"))
    assert store.study_progress(study)["items"] == 6
    flow = AnnotatorFlow(store)
    first, second = store.add_annotators(study, 2)
    view = flow.start(first.token)
    assert view["progress"]["text"] == "Item 1 of 6"  # not "of 10": the study has 6 items

    def fail_gate(view: dict) -> dict:
        gold = store.item(store.assignment(first, view["assignment_id"]).item_id)["gold_label"]
        return flow.answer_gate(first.token, view["assignment_id"], next(o for o in view["gate"]["options"]
                                                                          if o != gold))
    # one annotator per item: the item the other person holds is out of reach
    assert flow.start(second.token)["progress"]["text"] == "Item 1 of 5"
    view = fail_gate(view)
    assert view["progress"]["text"] == "Item 2 of 5 (1 ended at the question)"
    for _ in range(3):
        view = fail_gate(view)
    assert view["progress"]["text"] == "Item 5 of 5 (4 ended at the question)"
    view = fail_gate(view)
    assert view["stage"] == "done" and view["progress"]["text"] == "0 rated, 5 ended at the question"


def test_unused_link_is_a_fresh_one_once_the_first_has_started(store, predictions):
    study = store.create_study(predictions, StudySettings(per_label=1, name="links"))
    first = store.add_annotators(study, 1)[0]
    assert admin.unused_annotator_link(store, study, "http://h") == f"http://h/?token={first.token}"
    store.next_assignment(first)
    link = admin.unused_annotator_link(store, study, "http://h")
    assert first.token not in link and store.db["annotators"].count_where("study_id = ?", [study]) == 2


def _start_app(db: Path, predictions: Path, env_password: str | None) -> str:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SPARSEFIT_ADMIN_PASSWORD"}
    if env_password:
        env["SPARSEFIT_ADMIN_PASSWORD"] = env_password
    process = subprocess.Popen([sys.executable, "app.py", "--db", str(db), "--port", str(port),
                                "--quickstart-predictions", str(predictions)], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "SparseFit app running" in line:
                break
    finally:
        process.terminate()
        process.wait(timeout=20)
    return "".join(lines)


def test_restart_keeps_the_password_and_prints_an_unused_link(tmp_path, predictions):
    db = tmp_path / "app.db"
    first = _start_app(db, predictions, None)
    assert "Admin password (generated once" in first, first
    password = next(l for l in first.splitlines() if "Admin password" in l).rsplit(": ", 1)[1].strip()
    store = Store(db)
    assert admin.AdminGate(store).ok(password)
    link = next(l for l in first.splitlines() if "annotator link" in l).split()[-1]
    store.next_assignment(store.annotator_by_token(link.split("token=")[1]))  # somebody uses it
    second = _start_app(db, predictions, None)
    assert "Admin password" not in second and admin.AdminGate(store).ok(password)
    second_link = next(l for l in second.splitlines() if "annotator link" in l).split()[-1]
    assert second_link != link
