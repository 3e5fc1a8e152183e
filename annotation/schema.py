"""The study database schema: the contract between the annotation app, the store and the analysis.

One SQLite file holds any number of studies. JSON columns hold lists/objects as JSON text. Times are
ISO-8601 UTC strings. `open_db` turns on WAL and a busy timeout, so several app workers and an analysis
script can use the same file at once.

Tables
------
studies      one row per study; `protocol_json` is the full preset snapshot (wording, scale with scores,
             shortcomings, gate policy), so exports are self-describing.
items        one row per predictions record chosen for the study; `record_json` is the whole record.
annotators   one row per annotator (secret token, or Prolific ids).
assignments  one row per (item, annotator): who holds which item, the gate answer, the blind order in
             which explanations were shown, time spent. Unique (item_id, annotator_id).
ratings      one row per (study, item, annotator, question): the rating of one explanation.
             `question` is "model" or "gold" (which explanation was rated); `shown_position` is 1 or 2.
             Unique (study_id, item_id, annotator_id, question): a retry replaces, never duplicates.
settings     key/value pairs of the app itself, e.g. `admin_secret` (the admin password's salted scrypt
             hash, never the password). `studies.status` is the study lifecycle: open | closed | archived.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils

SCHEMA_VERSION = 1

TABLES: dict[str, dict] = {
    "studies": {
        "columns": {
            "id": str, "name": str, "created_at": str, "preset": str, "protocol_json": str,
            "predictions_path": str, "predictions_sha256": str, "items_per_page": int,
            "annotators_per_item": int, "selection_json": str, "abandon_minutes": int,
            "completion_code": str, "status": str,
        },
        "pk": "id",
    },
    "items": {
        "columns": {
            "id": str, "study_id": str, "record_id": str, "position": int, "dataset": str,
            "gold_label": str, "pred_label": str, "correct": int, "model": str, "method": str,
            "record_json": str,
        },
        "pk": "id",
        "foreign_keys": [("study_id", "studies", "id")],
    },
    "annotators": {
        "columns": {
            "id": str, "study_id": str, "token": str, "source": str, "prolific_pid": str,
            "prolific_study_id": str, "prolific_session_id": str, "created_at": str, "completed_at": str,
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
    ("assignments", ["study_id", "status"]),
    ("ratings", ["study_id"]),
]

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
    for name, spec in TABLES.items():
        if not db[name].exists():
            db[name].create(spec["columns"], pk=spec["pk"], foreign_keys=spec.get("foreign_keys"),
                            not_null={spec["pk"]})
    existing = {tuple(ix.columns) for table in TABLES for ix in db[table].indexes}
    for table, columns in UNIQUE_INDEXES:
        if tuple(columns) not in existing:
            db[table].create_index(columns, unique=True, if_not_exists=True)
    for table, columns in INDEXES:
        if tuple(columns) not in existing:
            db[table].create_index(columns, if_not_exists=True)
    db.execute("PRAGMA user_version=%d" % SCHEMA_VERSION)
