"""The study database schema: the contract between the annotation app, the store and the analysis.

One SQLite file holds any number of studies. JSON columns hold lists/objects as JSON text. Times are
ISO-8601 UTC strings. `open_db` turns on WAL and a busy timeout, so several app workers and an analysis
script can use the same file at once.

Tables
------
studies      one row per study; `protocol_json` is the full preset snapshot (wording, scale with scores,
             shortcomings, gate policy), so exports are self-describing. `entry_key` is the secret an open
             (Prolific) entry link must carry; `max_signups` caps open sign-ups (NULL = no cap).
items        one row per predictions record chosen for the study; `record_json` is the whole record.
             `taken` = number of its assignments that hold a slot (assigned or submitted), kept by triggers
             so the next item comes from an index, not a scan.
annotators   one row per annotator (secret token, or Prolific ids). `completion_code` is set when the
             annotator earned it (the record of who earned a code); `gate_fail_streak` counts wrong gate
             answers in a row and `blocked_at` is set when it reached the preset's limit.
assignments  one row per (item, annotator): who holds which item, the gate answer, the blind order in
             which explanations were shown, time spent. Unique (item_id, annotator_id).
ratings      one row per (study, item, annotator, question): the rating of one explanation.
             `question` is "model" or "gold" (which explanation was rated); `shown_position` is 1 or 2.
             Unique (study_id, item_id, annotator_id, question): a submitted assignment is final, so a
             retry is answered from the stored rows and never writes.
settings     key/value pairs of the app itself, e.g. `admin_secret` (the admin password's salted scrypt
             hash, never the password). `studies.status` is the study lifecycle: open | closed | archived.

Migrations: `ensure_schema` adds missing tables, columns, indexes and triggers to an older file (1 -> 3).
"""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any

import sqlite_utils

SCHEMA_VERSION = 3  # 2: entry keys, taken counts, earned codes; 3: settings (admin secret)

TABLES: dict[str, dict] = {
    "studies": {
        "columns": {
            "id": str, "name": str, "created_at": str, "preset": str, "protocol_json": str,
            "predictions_path": str, "predictions_sha256": str, "items_per_page": int,
            "annotators_per_item": int, "selection_json": str, "abandon_minutes": int,
            "completion_code": str, "status": str, "entry_key": str, "max_signups": int,
        },
        "pk": "id",
    },
    "items": {
        "columns": {
            "id": str, "study_id": str, "record_id": str, "position": int, "dataset": str,
            "gold_label": str, "pred_label": str, "correct": int, "model": str, "method": str,
            "record_json": str, "taken": int,
        },
        "pk": "id",
        "foreign_keys": [("study_id", "studies", "id")],
    },
    "annotators": {
        "columns": {
            "id": str, "study_id": str, "token": str, "source": str, "prolific_pid": str,
            "prolific_study_id": str, "prolific_session_id": str, "created_at": str, "completed_at": str,
            "completion_code": str, "gate_fail_streak": int, "blocked_at": str,
        },
        "pk": "id",
        "foreign_keys": [("study_id", "studies", "id")],
    },
    "assignments": {
        "columns": {
            "id": int, "study_id": str, "item_id": str, "annotator_id": str, "status": str,
            "assigned_at": str, "submitted_at": str, "order_json": str, "gate_answer": str,
            "gate_correct": int, "seconds_spent": float,
        },
        "pk": "id",
        "foreign_keys": [("study_id", "studies", "id"), ("item_id", "items", "id"),
                         ("annotator_id", "annotators", "id")],
    },
    "ratings": {
        "columns": {
            "id": int, "study_id": str, "item_id": str, "annotator_id": str, "question": str,
            "shown_position": int, "rating": str, "score": float, "shortcomings_json": str,
            "comment": str, "seconds_spent": float, "created_at": str, "origin": str,
        },
        "pk": "id",
        "foreign_keys": [("study_id", "studies", "id"), ("item_id", "items", "id"),
                         ("annotator_id", "annotators", "id")],
    },
    # app-wide settings (study lifecycle / admin secret block; see annotation/admin.py)
    "settings": {"columns": {"key": str, "value": str, "updated_at": str}, "pk": "key"},
}

UNIQUE_INDEXES: list[tuple[str, list[str]]] = [
    ("annotators", ["token"]),
    ("assignments", ["item_id", "annotator_id"]),
    ("ratings", ["study_id", "item_id", "annotator_id", "question"]),
]
INDEXES: list[tuple[str, list[str]]] = [
    ("items", ["study_id"]),
    ("items", ["study_id", "taken", "position"]),  # next item: the fullest item with a free slot
    ("assignments", ["study_id", "status"]),
    ("assignments", ["annotator_id", "status"]),
    ("annotators", ["study_id", "prolific_pid"]),
    ("ratings", ["study_id"]),
]
# Columns added after version 1, with the value existing rows get.
ADDED_COLUMNS: list[tuple[str, str, type, Any]] = [
    ("studies", "entry_key", str, None), ("studies", "max_signups", int, None),
    ("items", "taken", int, 0),
    ("annotators", "completion_code", str, None), ("annotators", "gate_fail_streak", int, 0),
    ("annotators", "blocked_at", str, None),
]
# items.taken follows every insert, status change and delete of an assignment, whoever writes it
# (the app, the importer, a script), so it cannot drift from the assignments table.
COUNTED_SQL = "('assigned', 'submitted')"
TRIGGERS = {
    "items_taken_insert": f"""CREATE TRIGGER IF NOT EXISTS items_taken_insert AFTER INSERT ON assignments
        WHEN NEW.status IN {COUNTED_SQL}
        BEGIN UPDATE items SET taken = taken + 1 WHERE id = NEW.item_id; END""",
    "items_taken_update": f"""CREATE TRIGGER IF NOT EXISTS items_taken_update AFTER UPDATE OF status, item_id
        ON assignments WHEN (OLD.status IN {COUNTED_SQL}) != (NEW.status IN {COUNTED_SQL})
                            OR OLD.item_id != NEW.item_id
        BEGIN
          UPDATE items SET taken = taken - (OLD.status IN {COUNTED_SQL}) WHERE id = OLD.item_id;
          UPDATE items SET taken = taken + (NEW.status IN {COUNTED_SQL}) WHERE id = NEW.item_id;
        END""",
    "items_taken_delete": f"""CREATE TRIGGER IF NOT EXISTS items_taken_delete AFTER DELETE ON assignments
        WHEN OLD.status IN {COUNTED_SQL}
        BEGIN UPDATE items SET taken = taken - 1 WHERE id = OLD.item_id; END""",
}

# assignments.status values
ASSIGNED, SUBMITTED, ABANDONED = "assigned", "submitted", "abandoned"


def open_db(path: str | Path) -> sqlite_utils.Database:
    """Open (creating if needed) a study database with WAL, a busy timeout and the schema in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA synchronous=FULL")  # a rating the UI confirmed must survive a power cut
    conn.execute("PRAGMA foreign_keys=ON")
    db = sqlite_utils.Database(conn)
    ensure_schema(db)
    return db


def ensure_schema(db: sqlite_utils.Database) -> None:
    """Create missing tables, then migrate older files in place: add columns, fill them, add indexes and
    triggers. Safe to run on every open (each step checks first); nothing stored is rewritten or lost."""
    if db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION and db["items"].exists():
        return  # the common case: an up-to-date file, no DDL (DDL would take the write lock)
    for name, spec in TABLES.items():
        if not db[name].exists():
            db[name].create(spec["columns"], pk=spec["pk"], foreign_keys=spec.get("foreign_keys"),
                            not_null={spec["pk"]}, defaults={c: d for t, c, _, d in ADDED_COLUMNS
                                                             if t == name and d is not None})
    _add_columns(db)
    existing = {tuple(ix.columns) for table in TABLES for ix in db[table].indexes}
    for table, columns in UNIQUE_INDEXES:
        if tuple(columns) not in existing:
            db[table].create_index(columns, unique=True, if_not_exists=True)
    for table, columns in INDEXES:
        if tuple(columns) not in existing:
            db[table].create_index(columns, if_not_exists=True)
    for sql in TRIGGERS.values():
        db.execute(sql)
    db.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)


def _add_columns(db: sqlite_utils.Database) -> None:
    added = []
    for table, column, kind, default in ADDED_COLUMNS:
        if column not in db[table].columns_dict:
            db[table].add_column(column, kind, not_null_default=default)
            added.append((table, column))
    if ("items", "taken") in added:  # a version-1 file: count the slots its assignments already hold
        db.execute("UPDATE items SET taken = (SELECT count(*) FROM assignments a WHERE a.item_id = items.id "
                   f"AND a.status IN {COUNTED_SQL})")
    if ("studies", "entry_key") in added:  # old studies get a secret too: their open links need it now
        for (study_id,) in db.execute("SELECT id FROM studies WHERE entry_key IS NULL").fetchall():
            db.execute("UPDATE studies SET entry_key = ? WHERE id = ?", [new_entry_key(), study_id])


def new_entry_key() -> str:
    return secrets.token_urlsafe(12)
