"""The study store: studies, items, annotators, assignments and ratings in one SQLite file.

Built on `annotation.schema.open_db` (WAL, busy timeout). Every write that must be atomic runs in a
`BEGIN IMMEDIATE` transaction on a per-thread connection, so concurrent app workers serialise on the
database lock instead of racing: an item never gets more than its target number of annotators, nobody is
given the same item twice, and a retried submission replaces its ratings instead of duplicating them.

Assignment life cycle: assigned -> submitted | gate_failed | abandoned. `assigned` and `submitted` count
towards an item's target; an `assigned` row older than the study's `abandon_minutes` becomes `abandoned`
(the item goes back to the pool) the next time anyone asks for work in that study.

Invariants (tests/test_store.py drives them through random interleavings):
- an item never holds more than `annotators_per_item` assigned + submitted rows;
- an annotator holds at most one `assigned` row, and assigned + submitted + gate_failed <= items_per_page;
- a submitted assignment is final: a resubmission returns it unchanged and writes nothing;
- a completion code is earned (and recorded on the annotator) only when the page is full or the pool is
  empty, after at least one submitted item, and never by an annotator blocked at the gate.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import random
import re
import secrets
import threading
from contextlib import contextmanager
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlite_utils

from annotation import backend
from annotation.errors import AnnotationError
from annotation.protocol import GATE_FAILURE_LIMIT, load_preset, scale_score, validate_preset
from annotation.schema import ABANDONED, ASSIGNED, SUBMITTED, new_entry_key, open_db

GATE_FAILED = "gate_failed"  # a wrong gate answer under the "block" policy: recorded, no ratings
COUNTED = (ASSIGNED, SUBMITTED)  # statuses that hold one of an item's annotator slots
DONE = (SUBMITTED, GATE_FAILED)  # statuses that count towards an annotator's page of items
NONE_SHORTCOMING = "none"

# One lock per database file in this process: writers queue here (a fast hand-off) instead of in SQLite's
# busy handler, which sleeps in growing steps. BEGIN IMMEDIATE still guards against other processes.
_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    key = str(path.resolve())
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(key, threading.Lock())


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass
class StudySettings:
    """How a study is built from a predictions file; None means "the preset's default"."""
    preset: str | Path | dict = "feb"
    items_per_page: int | None = None
    annotators_per_item: int | None = None
    only_correct: bool | None = None
    per_label: int | None = None  # 0 = every eligible record
    seed: int = 0
    name: str | None = None
    abandon_minutes: int = 30
    max_signups: int | None = None  # cap on open (Prolific) sign-ups; None = 2 x the annotators needed; 0 = none
    max_field_chars: int | None = None  # longest string in a predictions record (None = the reader's default)


@dataclass
class Annotator:
    id: str
    study_id: str
    token: str
    source: str  # "link" or "prolific"
    prolific_pid: str | None = None
    completed_at: str | None = None
    completion_code: str | None = None
    blocked_at: str | None = None


@dataclass
class Assignment:
    id: int
    study_id: str
    item_id: str
    annotator_id: str
    status: str
    assigned_at: str
    order: list[str]  # questions ("model"/"gold") in the order shown: index 0 = Explanation A
    gate_answer: str | None = None
    gate_correct: bool | None = None


@dataclass
class RatingInput:
    rating: str
    shortcomings: list[str] = field(default_factory=list)


@dataclass
class Progress:
    done: int
    submitted: int
    gate_failed: int
    quota: int
    completed: bool
    completion_code: str = ""  # set only once earned
    blocked: bool = False  # too many wrong gate answers in a row: no more items, no code


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "study"


class Store:
    """All reads and writes of studies. Safe to share between threads (one connection per thread)."""

    def __init__(self, path: str | Path, clock: Callable[[], datetime] = utc_now):
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()
        self._local.db = open_db(self.path)  # creates the schema up front; this thread's connection
        self._lock = _write_lock(self.path)
        self._protocols: dict[str, tuple[str, str, dict]] = {}  # study id -> (created_at, text, parsed)

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = open_db(self.path)
        return db

    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """An immediate (write-locking) transaction, committed before the block's caller goes on."""
        conn = self.db.conn
        with self._lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _rows(self, sql: str, params: tuple | list = ()) -> list[dict[str, Any]]:
        cursor = self.db.execute(sql, params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    # ---------------------------------------------------------------- studies
    def create_study(self, predictions_path: str | Path, settings: StudySettings | None = None) -> str:
        """Build a study from a predictions file; returns the new study id."""
        settings = settings or StudySettings()
        protocol = (validate_preset(settings.preset) if isinstance(settings.preset, dict)
                    else load_preset(settings.preset))
        defaults = protocol["defaults"]
        pick = lambda value, key: defaults[key] if value is None else value  # noqa: E731
        items_per_page = int(pick(settings.items_per_page, "items_per_page"))
        per_item = int(pick(settings.annotators_per_item, "annotators_per_item"))
        only_correct = bool(pick(settings.only_correct, "only_correct"))
        per_label = int(pick(settings.per_label, "per_label") or 0)
        for name, value in (("items_per_page", items_per_page), ("annotators_per_item", per_item),
                            ("abandon_minutes", settings.abandon_minutes)):
            if value < 1:
                raise AnnotationError(f"must be at least 1, got {value}", field=name)
        if per_label < 0:
            raise AnnotationError(f"must be 0 (all) or more, got {per_label}", field="per_label")
        if settings.max_signups is not None:
            _check_signup_cap(settings.max_signups)

        records = read_records(predictions_path, max_field_chars=settings.max_field_chars)
        chosen, selection = select_items(records, only_correct=only_correct, per_label=per_label,
                                         seed=settings.seed, path=str(predictions_path))
        protocol["resolved"] = {"gate_questions": gate_questions(records, protocol)}
        name = settings.name or Path(predictions_path).stem
        max_signups = signup_cap(settings.max_signups, len(chosen), per_item, items_per_page)
        with self.transaction() as db:
            study_id = slugify(name)
            while db["studies"].count_where("id = ?", [study_id]):
                study_id = f"{slugify(name)}-{secrets.token_hex(2)}"
            db.execute(
                "INSERT INTO studies (id, name, created_at, preset, protocol_json, predictions_path, "
                "predictions_sha256, items_per_page, annotators_per_item, selection_json, abandon_minutes, "
                "completion_code, status, entry_key, max_signups) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (study_id, name, iso(self.clock()), protocol["name"], json.dumps(protocol),
                 str(Path(predictions_path).resolve()), file_sha256(predictions_path), items_per_page,
                 per_item, json.dumps({**selection, "seed": settings.seed}), settings.abandon_minutes,
                 "SF-" + secrets.token_hex(8).upper(), "open", new_entry_key(), max_signups))
            db.conn.executemany(
                "INSERT INTO items (id, study_id, record_id, position, dataset, gold_label, pred_label, "
                "correct, model, method, record_json) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(f"{study_id}:{r.id}", study_id, r.id, position, r.dataset, r.gold_label, r.pred_label,
                  int(r.correct), r.model, r.method, json.dumps(r.to_json(), ensure_ascii=False))
                 for position, r in enumerate(chosen)])
        return study_id

    def set_max_signups(self, study_id: str, max_signups: int) -> None:
        """Change a study's cap on open sign-ups (0 = no cap); who already signed up keeps access."""
        self.study(study_id)
        _check_signup_cap(max_signups)
        with self.transaction() as db:
            db.execute("UPDATE studies SET max_signups = ? WHERE id = ?", (max_signups or None, study_id))

    def studies(self) -> list[dict[str, Any]]:
        return self._rows(
            "SELECT s.id, s.name, s.status, s.preset, s.created_at, s.items_per_page, s.annotators_per_item, "
            "(SELECT count(*) FROM items i WHERE i.study_id = s.id) AS items, "
            "(SELECT count(*) FROM annotators a WHERE a.study_id = s.id) AS annotators, "
            "(SELECT count(*) FROM assignments a WHERE a.study_id = s.id AND a.status = ?) AS annotations_submitted "
            "FROM studies s ORDER BY s.created_at", [SUBMITTED])

    def study(self, study_id: str) -> dict[str, Any]:
        """The study row with `protocol` and `selection` parsed. The protocol never changes after creation
        and can be large (per-record gate options of a 100k-item study), so it is read and parsed once per
        study and shared: callers must not modify it."""
        columns = self._study_columns()
        rows = self._rows(f"SELECT {columns} FROM studies WHERE id = ?", [study_id])
        if not rows:
            raise AnnotationError(f"no study {study_id!r} in {self.path} (see `study list`)", field="study")
        row = rows[0]
        cached = self._protocols.get(study_id)
        if cached is None or cached[0] != row["created_at"]:  # same id, new study: read it again
            text = self.db.execute("SELECT protocol_json FROM studies WHERE id = ?", [study_id]).fetchone()[0]
            cached = self._protocols[study_id] = (row["created_at"], text, json.loads(text))
        row["protocol_json"], row["protocol"] = cached[1], cached[2]
        row["selection"] = json.loads(row["selection_json"])
        return row

    def _study_columns(self) -> str:
        names = [r[1] for r in self.db.execute("PRAGMA table_info(studies)").fetchall()]
        return ", ".join(f'"{n}"' for n in names if n != "protocol_json")

    def item(self, item_id: str) -> dict[str, Any]:
        row = self._rows("SELECT * FROM items WHERE id = ?", [item_id])[0]
        row["record"] = json.loads(row["record_json"])
        return row

    # ---------------------------------------------------------------- annotators
    def add_annotators(self, study_id: str, count: int) -> list[Annotator]:
        """Create `count` annotators, each with a secret link token."""
        self.study(study_id)
        if count < 1:
            raise AnnotationError(f"count must be at least 1, got {count}", field="count")
        made = [Annotator(id="a-" + secrets.token_hex(6), study_id=study_id,
                          token=secrets.token_urlsafe(16), source="link") for _ in range(count)]
        with self.transaction() as db:
            db.conn.executemany(
                "INSERT INTO annotators (id, study_id, token, source, created_at) VALUES (?,?,?,?,?)",
                [(a.id, a.study_id, a.token, a.source, iso(self.clock())) for a in made])
        return made

    def annotator_by_token(self, token: str) -> Annotator:
        rows = self._rows("SELECT * FROM annotators WHERE token = ?", [token or ""])
        if not token or not rows:
            raise AnnotationError("this link is not valid: check that you opened the whole link you were "
                                  "given, or ask the study organiser for a new one", field="token")
        return _annotator(rows[0])

    def sign_in_prolific(self, study_id: str, prolific_pid: str, prolific_study_id: str = "",
                         session_id: str = "", entry_key: str = "") -> Annotator:
        """Create or get the annotator for a Prolific participant in a study (one per PROLIFIC_PID).

        The link must carry the study's secret `entry_key` (the Admin tab and `annotators add` print the
        whole URL): the study id alone is visible to every participant, so it must not open the study.
        New sign-ups stop at the study's `max_signups`; someone already signed up may always come back."""
        if not prolific_pid or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", prolific_pid):
            raise AnnotationError("the link has no valid PROLIFIC_PID; open the study from Prolific again",
                                  field="PROLIFIC_PID")
        rows = self._rows("SELECT id, entry_key, max_signups FROM studies WHERE id = ?", [study_id])
        if not rows or not hmac.compare_digest((entry_key or "").encode(), (rows[0]["entry_key"] or "").encode()):
            # one message for "no such study" and "wrong key", so the reply does not confirm study ids
            raise AnnotationError("this study link is incomplete or not valid; open the study from Prolific "
                                  "again, or ask the researcher for the full link", field="key")
        cap = rows[0]["max_signups"]
        study = self.study(study_id)
        with self.transaction() as db:
            rows = self._rows("SELECT * FROM annotators WHERE study_id = ? AND prolific_pid = ?",
                              [study_id, prolific_pid])
            if rows:
                return _annotator(rows[0])
            ensure_study_open(study)  # no new participants in a closed study
            if cap is not None and db.execute("SELECT count(*) FROM annotators WHERE study_id = ? AND "
                                              "source = 'prolific'", [study_id]).fetchone()[0] >= cap:
                raise AnnotationError("this study is full; thank you for your interest", field="study")
            annotator = Annotator(id="p-" + secrets.token_hex(6), study_id=study_id,
                                  token=secrets.token_urlsafe(16), source="prolific", prolific_pid=prolific_pid)
            db.execute(
                "INSERT INTO annotators (id, study_id, token, source, prolific_pid, prolific_study_id, "
                "prolific_session_id, created_at) VALUES (?,?,?,?,?,?,?,?)",
                (annotator.id, study_id, annotator.token, "prolific", prolific_pid, prolific_study_id,
                 session_id, iso(self.clock())))
        return annotator

    # ---------------------------------------------------------------- assignment
    def next_assignment(self, annotator: Annotator) -> Assignment | None:
        """The annotator's open item (resume), else a new one from the pool; None when their page is done,
        they are blocked at the gate, or no item has a free slot (then a code is earned if anything was
        rated)."""
        study = self.study(annotator.study_id)
        with self.transaction() as db:
            return self._next_locked(db, annotator, study)

    def _next_after_write(self, db, annotator: Annotator, study: dict) -> Assignment | None:
        """The next item after a write in the same transaction: a study closed meanwhile must not undo the
        write (raising here would roll it back), so it just has no next item."""
        try:
            return self._next_locked(db, annotator, study)
        except AnnotationError:
            return None

    def _next_locked(self, db, annotator: Annotator, study: dict) -> Assignment | None:
        """next_assignment's work, inside the caller's transaction (a submission and the choice of the next
        item share one commit, i.e. one fsync)."""
        self._expire_abandoned(db, study)
        if self._annotator_row(annotator.id)["blocked_at"]:
            return None
        current = self._assignments("annotator_id = ? AND status = ?", [annotator.id, ASSIGNED])
        if current:
            return current[0]
        if self._done_count(annotator.id) >= study["items_per_page"]:
            self._earn_code(db, annotator, study)
            return None
        ensure_study_open(study)  # a closed study gives no new items (an open one may still be finished)
        revived = self._revive_abandoned(db, annotator, study)
        if revived:
            return revived
        item_id = self._pick_item(annotator, study)
        if item_id is None:
            self._earn_code(db, annotator, study)  # the pool is empty (for now)
            return None
        order = list(study["protocol"]["rate"])
        random.Random(f"{study['id']}|{item_id}|{annotator.id}").shuffle(order)
        cursor = db.execute("INSERT INTO assignments (study_id, item_id, annotator_id, status, assigned_at, "
                            "order_json) VALUES (?,?,?,?,?,?)",
                            (study["id"], item_id, annotator.id, ASSIGNED, iso(self.clock()), json.dumps(order)))
        return self._assignments("id = ?", [cursor.lastrowid])[0]

    def _expire_abandoned(self, db: sqlite_utils.Database, study: dict) -> None:
        cutoff = iso(self.clock() - timedelta(minutes=study["abandon_minutes"]))
        db.execute("UPDATE assignments SET status = ? WHERE study_id = ? AND status = ? AND assigned_at < ?",
                   (ABANDONED, study["id"], ASSIGNED, cutoff))

    def _revive_abandoned(self, db, annotator: Annotator, study: dict) -> Assignment | None:
        """Someone whose item timed out gets it back if it still has a free slot (e.g. after a long break)."""
        for assignment in self._assignments("annotator_id = ? AND status = ?", [annotator.id, ABANDONED]):
            if self._taken(assignment.item_id) < study["annotators_per_item"]:
                db.execute("UPDATE assignments SET status = ?, assigned_at = ? WHERE id = ?",
                           (ASSIGNED, iso(self.clock()), assignment.id))
                assignment.status = ASSIGNED
                return assignment
        return None

    def _pick_item(self, annotator: Annotator, study: dict) -> str | None:
        """The fullest item that still has a free slot and that this annotator has not had, so finished
        items accumulate. One walk down the (study_id, taken, position) index: it skips at most the items
        this annotator already had, so a call costs O(page size x log n), not a scan of the study."""
        row = self.db.execute(
            "SELECT i.id FROM items i WHERE i.study_id = ? AND i.taken < ? AND NOT EXISTS (SELECT 1 FROM "
            "assignments a WHERE a.item_id = i.id AND a.annotator_id = ?) "
            "ORDER BY i.taken DESC, i.position DESC LIMIT 1",
            [study["id"], study["annotators_per_item"], annotator.id]).fetchone()
        return row[0] if row else None

    def _taken(self, item_id: str) -> int:
        return self.db.execute("SELECT taken FROM items WHERE id = ?", [item_id]).fetchone()[0]

    def _done_count(self, annotator_id: str) -> int:
        return self.db.execute("SELECT count(*) FROM assignments WHERE annotator_id = ? AND status IN (?, ?)",
                               [annotator_id, *DONE]).fetchone()[0]

    def _annotator_row(self, annotator_id: str) -> dict[str, Any]:
        return self._rows("SELECT * FROM annotators WHERE id = ?", [annotator_id])[0]

    def _earn_code(self, db, annotator: Annotator, study: dict) -> None:
        """Record that the annotator earned the completion code: only after at least one submitted item and
        never when blocked. Link annotators get their own code; Prolific participants get the study's code
        (Prolific checks it), and this row is the record of who earned it."""
        row = self._annotator_row(annotator.id)
        if row["completion_code"] or row["blocked_at"]:
            return
        submitted = db.execute("SELECT count(*) FROM assignments WHERE annotator_id = ? AND status = ?",
                               [annotator.id, SUBMITTED]).fetchone()[0]
        if not submitted:
            return
        code = study["completion_code"] if row["source"] == "prolific" else "SF-" + secrets.token_hex(8).upper()
        db.execute("UPDATE annotators SET completed_at = coalesce(completed_at, ?), completion_code = ? "
                   "WHERE id = ?", (iso(self.clock()), code, annotator.id))

    def _assignments(self, where: str, params: list) -> list[Assignment]:
        return [_assignment(r) for r in self._rows(f"SELECT * FROM assignments WHERE {where} ORDER BY id", params)]

    def assignment(self, annotator: Annotator, assignment_id: int) -> Assignment:
        """An assignment of this annotator; another annotator's id is refused."""
        found = self._assignments("id = ? AND annotator_id = ?", [int(assignment_id), annotator.id])
        if not found:
            raise AnnotationError("this item is not assigned to your link; reload the page to continue",
                                  field="assignment_id")
        return found[0]

    def _hold(self, db, assignment: Assignment, study: dict) -> None:
        """Make sure the assignment may still be worked on. An abandoned one is taken back only if its item
        has a free slot, the annotator holds no other item and has room on their page (else a late answer
        to an old item could push them past their quota)."""
        if self._annotator_row(assignment.annotator_id)["blocked_at"]:
            raise AnnotationError("this study has ended for you", field="assignment_id")
        if assignment.status == ABANDONED:
            holds_other = self._assignments("annotator_id = ? AND status = ?", [assignment.annotator_id, ASSIGNED])
            if (holds_other or self._done_count(assignment.annotator_id) >= study["items_per_page"]
                    or self._taken(assignment.item_id) >= study["annotators_per_item"]):
                raise AnnotationError("this item timed out and was given to someone else; reload the page "
                                      "to get your next item", field="assignment_id")
            db.execute("UPDATE assignments SET status = ? WHERE id = ?", (ASSIGNED, assignment.id))
            assignment.status = ASSIGNED
        if assignment.status == GATE_FAILED:
            raise AnnotationError("this item has ended; reload the page to get your next item",
                                  field="assignment_id")

    # ---------------------------------------------------------------- gate and submission
    def answer_gate(self, annotator: Annotator, assignment_id: int, answer: str) -> Assignment:
        return self.answer_gate_and_next(annotator, assignment_id, answer)[0]

    def answer_gate_and_next(self, annotator: Annotator, assignment_id: int,
                             answer: str) -> tuple[Assignment, Assignment | None]:
        """Record the annotator's own answer to the task. Under the "block" policy a wrong answer ends the
        item for this annotator (no ratings) and frees its slot, and `gate.max_failures_in_row` wrong
        answers in a row end the study for them (no more items, no completion code). The first answer
        counts."""
        study = self.study(annotator.study_id)
        gate = study["protocol"]["gate"]
        with self.transaction() as db:
            assignment = self.assignment(annotator, assignment_id)
            if assignment.gate_answer is not None or assignment.status == SUBMITTED:
                return assignment, self._next_after_write(db, annotator, study)
            self._hold(db, assignment, study)
            if not (answer or "").strip():
                raise AnnotationError("choose an answer first", field="gate_answer")
            item = self.item(assignment.item_id)
            answer = _shown_option(study["protocol"], item, answer)
            correct = answer.lower() == item["gold_label"].strip().lower()
            blocked = not correct and gate["policy"] == "block"
            now = self.clock()
            db.execute("UPDATE assignments SET gate_answer = ?, gate_correct = ? WHERE id = ?",
                       (answer, int(correct), assignment.id))
            if blocked:
                db.execute("UPDATE assignments SET status = ?, submitted_at = ?, seconds_spent = ? WHERE id = ?",
                           (GATE_FAILED, iso(now), _seconds(assignment.assigned_at, now), assignment.id))
                limit = gate.get("max_failures_in_row", GATE_FAILURE_LIMIT)
                db.execute("UPDATE annotators SET gate_fail_streak = gate_fail_streak + 1, blocked_at = CASE "
                           "WHEN ? > 0 AND gate_fail_streak + 1 >= ? THEN ? ELSE blocked_at END WHERE id = ?",
                           (limit, limit, iso(now), annotator.id))
            else:
                db.execute("UPDATE annotators SET gate_fail_streak = 0 WHERE id = ?", (annotator.id,))
            return self.assignment(annotator, assignment_id), self._next_after_write(db, annotator, study)

    def submit(self, annotator: Annotator, assignment_id: int, ratings: dict[str, RatingInput],
               comment: str = "") -> Assignment:
        return self.submit_and_next(annotator, assignment_id, ratings, comment)[0]

    def submit_and_next(self, annotator: Annotator, assignment_id: int, ratings: dict[str, RatingInput],
                        comment: str = "") -> tuple[Assignment, Assignment | None]:
        """Store the ratings of one item and mark it submitted, in one transaction committed before
        returning. A submitted assignment is final: a retry (double click, resent request, or an attempt
        to change old answers) returns the stored assignment and writes nothing."""
        study = self.study(annotator.study_id)
        protocol = study["protocol"]
        with self.transaction() as db:
            assignment = self.assignment(annotator, assignment_id)
            if assignment.status == SUBMITTED:
                return assignment, self._next_after_write(db, annotator, study)
            self._hold(db, assignment, study)
            if protocol["gate"]["enabled"] and assignment.gate_answer is None:
                raise AnnotationError("answer the question about the item first", field="gate_answer")
            rows = self._rating_rows(protocol, assignment, ratings, comment)
            now = self.clock()
            seconds = _seconds(assignment.assigned_at, now)
            db.conn.executemany(
                "INSERT INTO ratings (study_id, item_id, annotator_id, question, shown_position, rating, "
                "score, shortcomings_json, comment, seconds_spent, created_at, origin) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?, 'app')",
                [(study["id"], assignment.item_id, annotator.id, row["question"], row["shown_position"],
                  row["rating"], row["score"], row["shortcomings_json"], comment or "", seconds, iso(now))
                 for row in rows])
            db.execute("UPDATE assignments SET status = ?, submitted_at = ?, seconds_spent = ? WHERE id = ?",
                       (SUBMITTED, iso(now), seconds, assignment.id))
            assignment.status = SUBMITTED
            return assignment, self._next_after_write(db, annotator, study)

    def _rating_rows(self, protocol: dict, assignment: Assignment, ratings: dict[str, RatingInput],
                     comment: str) -> list[dict[str, Any]]:
        allowed_shortcomings = {s["value"] for s in protocol["shortcomings"]}
        rows = []
        for position, question in enumerate(assignment.order, start=1):
            slot = "AB"[position - 1] if position <= 2 else str(position)
            given = ratings.get(question)
            if given is None or not given.rating:
                raise AnnotationError(f"choose a rating for Explanation {slot}", field=f"rating_{slot}")
            score = scale_score(protocol, given.rating)
            chosen = list(dict.fromkeys(given.shortcomings or []))
            if allowed_shortcomings:
                if not chosen:
                    raise AnnotationError(f"tick the shortcomings of Explanation {slot} (or \"None of these\")",
                                          field=f"shortcomings_{slot}")
                unknown = set(chosen) - allowed_shortcomings
                if unknown:
                    raise AnnotationError(f"unknown shortcomings {sorted(unknown)}", field=f"shortcomings_{slot}")
                if NONE_SHORTCOMING in chosen and len(chosen) > 1:
                    raise AnnotationError(f"Explanation {slot}: \"None of these\" cannot be combined with "
                                          "other shortcomings", field=f"shortcomings_{slot}")
            elif chosen:
                raise AnnotationError("this study has no shortcomings checklist", field=f"shortcomings_{slot}")
            rows.append({"question": question, "shown_position": position, "rating": given.rating,
                         "score": score, "shortcomings_json": json.dumps(chosen)})
        if comment and len(comment) > 5000:
            raise AnnotationError("the comment is too long (at most 5000 characters)", field="comment")
        return rows

    # ---------------------------------------------------------------- progress
    def progress(self, annotator: Annotator) -> Progress:
        study = self.study(annotator.study_id)
        counts = dict(self.db.execute(
            "SELECT status, count(*) FROM assignments WHERE annotator_id = ? GROUP BY status",
            [annotator.id]).fetchall())
        submitted, failed = counts.get(SUBMITTED, 0), counts.get(GATE_FAILED, 0)
        row = self._annotator_row(annotator.id)
        return Progress(done=submitted + failed, submitted=submitted, gate_failed=failed,
                        quota=study["items_per_page"], completed=row["completed_at"] is not None,
                        completion_code=row["completion_code"] or "", blocked=bool(row["blocked_at"]))

    def annotator_progress(self, study_id: str) -> list[dict[str, Any]]:
        """One row per annotator of a study: counts, median seconds per item, last activity."""
        self.study(study_id)
        return self._rows(
            "SELECT a.id AS annotator, a.source, coalesce(a.prolific_pid, '') AS prolific_pid, "
            "sum(s.status = 'submitted') AS submitted, sum(s.status = 'gate_failed') AS gate_failed, "
            "sum(s.status = 'assigned') AS in_progress, sum(s.status = 'abandoned') AS abandoned, "
            "round(avg(CASE WHEN s.status = 'submitted' THEN s.seconds_spent END), 1) AS mean_seconds, "
            "max(coalesce(s.submitted_at, s.assigned_at)) AS last_activity, "
            "coalesce(a.completed_at, '') AS completed_at "
            "FROM annotators a LEFT JOIN assignments s ON s.annotator_id = a.id "
            "WHERE a.study_id = ? GROUP BY a.id ORDER BY a.created_at, a.id", [study_id])

    def study_progress(self, study_id: str) -> dict[str, Any]:
        study = self.study(study_id)
        per_item = self._rows(
            "SELECT i.id, (SELECT count(*) FROM assignments a WHERE a.item_id = i.id AND a.status = 'submitted') "
            "AS done FROM items i WHERE i.study_id = ?", [study_id])
        target = study["annotators_per_item"]
        ratings = self.db.execute("SELECT count(*) FROM ratings WHERE study_id = ?", [study_id]).fetchone()[0]
        return {"study": study_id, "items": len(per_item),
                "items_complete": sum(r["done"] >= target for r in per_item),
                "annotations_submitted": sum(r["done"] for r in per_item),
                "annotations_needed": len(per_item) * target, "ratings": ratings,
                "annotators": self.db["annotators"].count_where("study_id = ?", [study_id]),
                "prolific_signups": self.db["annotators"].count_where("study_id = ? AND source = 'prolific'",
                                                                      [study_id]),
                "max_signups": study["max_signups"]}

    # ---------------------------------------------------------------- study lifecycle and app settings
    # (a separate block: the admin side. open -> closed -> open again, or -> archived; delete only unrated)
    def set_study_status(self, study_id: str, status: str) -> None:
        if status not in STUDY_STATUSES:
            raise AnnotationError(f"unknown status {status!r}: use one of {', '.join(STUDY_STATUSES)}",
                                  field="status")
        self.study(study_id)
        with self.transaction() as db:
            db.execute("UPDATE studies SET status = ? WHERE id = ?", (status, study_id))

    def delete_study(self, study_id: str) -> None:
        """Remove a study that has no ratings (a mistake, a test); rated studies can only be archived."""
        self.study(study_id)
        with self.transaction() as db:
            rated = db.execute("SELECT count(*) FROM ratings WHERE study_id = ?", [study_id]).fetchone()[0]
            if rated:
                raise AnnotationError(f"study {study_id!r} has {rated} ratings, so it cannot be deleted; "
                                      "archive it instead (its data stay in the database)", field="study")
            for table in ("assignments", "annotators", "items", "studies"):
                db.execute(f"DELETE FROM {table} WHERE {'id' if table == 'studies' else 'study_id'} = ?",
                           [study_id])

    def study_id_for_name(self, name: str) -> str:
        """The id a new study with this name gets; refuses a name whose id is taken (no silent suffix)."""
        study_id = slugify(name)
        if self.db["studies"].count_where("id = ?", [study_id]):
            raise AnnotationError(f"a study named {study_id!r} already exists: choose another name",
                                  field="name")
        return study_id

    def items_within_reach(self, annotator: Annotator, limit: int) -> int:
        """How many items this annotator can still be given, their open one included, counted up to `limit`
        more (a view needs no more than the rest of the page). Walks the (study_id, taken) index over items
        with a free slot and stops at `limit`, so it stays cheap on a 100k-item study."""
        study = self.study(annotator.study_id)
        held = self.db.execute("SELECT count(*) FROM assignments WHERE annotator_id = ? AND status = ?",
                               [annotator.id, ASSIGNED]).fetchone()[0]
        free = self.db.execute(
            "SELECT count(*) FROM (SELECT 1 FROM items i WHERE i.study_id = ? AND i.taken < ? AND NOT EXISTS "
            "(SELECT 1 FROM assignments a WHERE a.item_id = i.id AND a.annotator_id = ? AND a.status != ?) "
            "LIMIT ?)", [study["id"], study["annotators_per_item"], annotator.id, ABANDONED, max(0, limit)]
        ).fetchone()[0]
        return held + free

    def setting(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchone()
        return row[0] if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                       "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                       (key, value, iso(self.clock())))


STUDY_STATUSES = ("open", "closed", "archived")


STUDY_CLOSED = ("this study is closed and takes no new ratings. Thank you for your interest; if you think "
                "this is a mistake, contact the study organiser")


def ensure_study_open(study: dict[str, Any]) -> None:
    """Refuse new work in a closed or archived study (annotators see STUDY_CLOSED)."""
    if (study.get("status") or "open") != "open":
        raise AnnotationError(STUDY_CLOSED, field="study")


# -------------------------------------------------------------------- helpers


def read_records(path: str | Path, max_field_chars: int | None = None):
    """Validate a predictions file with the backend's torch-free reader; its errors become ours."""
    try:
        return backend.read_predictions(path, **({"max_field_chars": max_field_chars} if max_field_chars else {}))
    except backend.SparseFitError as err:
        raise AnnotationError(str(err)) from err


def select_items(records: list, *, only_correct: bool, per_label: int, seed: int, path: str):
    """Label-balanced, seeded choice: `per_label` records per (dataset, gold label); 0 = all."""
    eligible = [r for r in records if r.correct or not only_correct]
    if not eligible:
        raise AnnotationError("no correctly predicted records to rate; choose \"all predictions\" "
                              "(--all) to include wrong ones", path=path, field="correct")
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for record in eligible:
        groups[(record.dataset, record.gold_label)].append(record)
    rng = random.Random(seed)
    chosen, short = [], {}
    for key in sorted(groups):
        group = groups[key]
        take = len(group) if per_label == 0 else min(per_label, len(group))
        if take < per_label:
            short[f"{key[0]}/{key[1]}"] = take
        chosen.extend(rng.sample(group, take))
    rng.shuffle(chosen)
    selection = {"only_correct": only_correct, "per_label": per_label, "records_in_file": len(records),
                 "eligible": len(eligible), "chosen": len(chosen),
                 "labels": {f"{d}/{l}": len(g) for (d, l), g in sorted(groups.items())},
                 "labels_short_of_per_label": short}
    return chosen, selection


def _shown_option(protocol: dict, item: dict, answer: str) -> str:
    """The gate option the answer names (as shown); anything else is refused rather than stored."""
    gate = protocol["resolved"]["gate_questions"].get(item["dataset"]) if protocol["gate"]["enabled"] else None
    if gate is None:
        raise AnnotationError("this study asks no task question", field="gate_answer")
    options = gate.get("options_by_record", {}).get(item["record"]["id"], gate["options"])
    chosen = next((o for o in options if o.strip().lower() == answer.strip().lower()), None)
    if chosen is None:
        raise AnnotationError("choose one of the answers shown", field="gate_answer")
    return chosen


def _check_signup_cap(value: int) -> None:
    if value < 0:
        raise AnnotationError(f"must be 0 (no cap) or more, got {value}", field="max_signups")


def signup_cap(requested: int | None, items: int, per_item: int, items_per_page: int) -> int | None:
    """The cap on open sign-ups: as requested (0 = none), else twice the annotators the study needs, so
    participants who return a study leave room, but one participant with made-up PROLIFIC_PIDs cannot
    hold every item."""
    if requested is not None:
        return requested or None
    return 2 * max(1, math.ceil(items * per_item / max(1, items_per_page)))


def gate_questions(records: list, protocol: dict) -> dict[str, dict[str, Any]]:
    """Per dataset: the task question and answer options shown at the gate, frozen into the study.

    Options come from `sparsefit.prompts.gate_question` when the backend knows the task, else from the
    records' `label_options`, else from the gold labels in the file. Tasks whose options depend on the
    item (ECQA's answer choices) also get `options_by_record`.
    """
    labels_by_dataset: dict[str, list[str]] = defaultdict(list)
    options_by_dataset: dict[str, list[str]] = {}
    for record in records:
        if record.gold_label not in labels_by_dataset[record.dataset]:
            labels_by_dataset[record.dataset].append(record.gold_label)
        if record.label_options and record.dataset not in options_by_dataset:
            options_by_dataset[record.dataset] = list(record.label_options)
    resolved = {}
    for dataset, gold_labels in labels_by_dataset.items():
        backend = _backend_gate_question(dataset) or {}
        options = backend.get("options") or options_by_dataset.get(dataset) or sorted(gold_labels)
        gate = {"question": backend.get("question") or "What is the correct answer?",
                "context": backend.get("context") or "",
                "options": _with_gold(options, gold_labels),
                "option_text": dict(backend.get("option_text") or {})}
        per_record = {}
        for record in records:
            if record.dataset != dataset:
                continue
            own = (_backend_gate_question(dataset, record.inputs) or {}).get("options")
            if own and own != backend.get("options"):
                per_record[record.id] = _with_gold(own, [record.gold_label])
        if per_record:
            gate["options_by_record"] = per_record
        resolved[dataset] = gate
    return resolved


def _with_gold(options: list[str], gold_labels: list[str]) -> list[str]:
    """The gate must be answerable: add any gold label the option list lacks."""
    known = {o.lower() for o in options}
    return list(options) + [label for label in gold_labels if label.lower() not in known]


def _backend_gate_question(dataset: str, inputs: dict[str, str] | None = None) -> dict[str, Any] | None:
    """`sparsefit.prompts.gate_question` (pure Python) when it knows the dataset; None otherwise."""
    try:
        answer = backend.gate_question(dataset, inputs)
    except (backend.SparseFitError, LookupError, ValueError, TypeError):  # a user task the backend does not know
        return None
    return answer if isinstance(answer, dict) else None


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _seconds(assigned_at: str, now: datetime) -> float:
    return round((now - datetime.fromisoformat(assigned_at)).total_seconds(), 3)


def _annotator(row: dict) -> Annotator:
    return Annotator(id=row["id"], study_id=row["study_id"], token=row["token"], source=row["source"],
                     prolific_pid=row.get("prolific_pid"), completed_at=row.get("completed_at"),
                     completion_code=row.get("completion_code"), blocked_at=row.get("blocked_at"))


def _assignment(row: dict) -> Assignment:
    return Assignment(id=row["id"], study_id=row["study_id"], item_id=row["item_id"],
                      annotator_id=row["annotator_id"], status=row["status"], assigned_at=row["assigned_at"],
                      order=json.loads(row["order_json"] or "[]"), gate_answer=row["gate_answer"],
                      gate_correct=None if row["gate_correct"] is None else bool(row["gate_correct"]))
