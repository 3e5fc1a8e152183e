"""Admin actions behind the password: create studies, issue links, watch progress, export, quickstart.

Plain functions (no Gradio) so the CLI and the web app share them. Torch-free at import time.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from annotation.errors import AnnotationError
from annotation.store import Store, StudySettings
from sparsefit.paths import models_dir as default_models_dir  # noqa: F401 (torch-free)
from sparsefit.paths import quickstart_predictions_path as quickstart_predictions  # noqa: F401

QUICKSTART_STUDY = "quickstart"
ADMIN_SECRET_KEY = "admin_secret"
MIN_PASSWORD_LENGTH = 8
MAX_WRONG_TRIES = 5  # per client address, then a lock-out
LOCKOUT_SECONDS = 60
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}  # ~16 MiB and tens of ms per check: slow to brute-force offline

PROLIFIC_PLACEHOLDERS = {"PROLIFIC_PID": "{{%PROLIFIC_PID%}}", "STUDY_ID": "{{%STUDY_ID%}}",
                         "SESSION_ID": "{{%SESSION_ID%}}"}


# ---------------------------------------------------------------- admin secret


def hash_secret(password: str) -> str:
    """`scrypt$n$r$p$salt$hash` (hex); the database never holds the password itself."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **SCRYPT)
    return f"scrypt${SCRYPT['n']}${SCRYPT['r']}${SCRYPT['p']}${salt.hex()}${digest.hex()}"


def verify_secret(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        attempt = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(attempt.hex(), digest)


def new_password() -> str:
    return secrets.token_urlsafe(12)


def ensure_admin_secret(store: Store, password: str | None = None) -> str | None:
    """Make sure the database holds an admin secret; returns a password only when it generated one.

    A given password (--admin-password / $SPARSEFIT_ADMIN_PASSWORD) replaces the stored one; otherwise the
    stored one is kept across restarts; a database without one gets a generated password (shown once).
    """
    if password:
        store.set_setting(ADMIN_SECRET_KEY, hash_secret(password))
        return None
    if store.setting(ADMIN_SECRET_KEY):
        return None
    generated = new_password()
    store.set_setting(ADMIN_SECRET_KEY, hash_secret(generated))
    return generated


class AdminGate:
    """Checks the admin password against the stored hash, with a lock-out per client after wrong tries.

    The hash is read from the database at every check, so a password changed in one app worker holds in all.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (wrong tries, locked until)
        self._lock = threading.Lock()

    def ok(self, attempt: str | None) -> bool:
        stored = self.store.setting(ADMIN_SECRET_KEY)
        return bool(attempt and stored and verify_secret(attempt, stored))

    def require(self, attempt: str | None, client: str = "") -> None:
        """Raise AnnotationError (field "password") for a wrong password or a locked-out client.

        A try is counted before the (slow) hash check, so guesses sent in parallel cannot all slip past the
        lock: the sixth concurrent try is refused without a check, and a failure never clears a lock."""
        self._count_try(client)
        if self.ok(attempt):
            with self._lock:
                self._failures.pop(client, None)
            return
        with self._lock:
            tries, locked_until = self._failures.get(client, (1, 0.0))  # (1, 0): a success meanwhile reset it
            if tries >= MAX_WRONG_TRIES and locked_until <= self.clock():
                locked_until = self.clock() + LOCKOUT_SECONDS
                self._failures[client] = (tries, locked_until)
        if locked_until:
            raise AnnotationError(f"wrong admin password, {MAX_WRONG_TRIES} times: sign-in is locked for "
                                  f"{LOCKOUT_SECONDS} seconds from your address", field="password")
        left = MAX_WRONG_TRIES - tries
        raise AnnotationError(f"wrong admin password ({left} {'try' if left == 1 else 'tries'} left before a "
                              f"{LOCKOUT_SECONDS}-second lock-out)", field="password")

    def _count_try(self, client: str) -> None:
        """Count one try (wrong or still being checked) for the client, or refuse it while locked out."""
        with self._lock:
            tries, locked_until = self._failures.get(client, (0, 0.0))
            now = self.clock()
            if locked_until > now:
                wait = locked_until - now
            elif tries >= MAX_WRONG_TRIES and not locked_until:  # that many tries are still being checked
                wait = LOCKOUT_SECONDS
                self._failures[client] = (tries, now + wait)
            else:
                self._failures[client] = ((0 if locked_until else tries) + 1, 0.0)  # an expired lock: fresh count
                return
        raise AnnotationError(f"too many wrong passwords: try again in {math.ceil(wait)} seconds", field="password")

    def change(self, current: str, new: str, repeated: str, client: str = "") -> None:
        self.require(current, client)
        if len(new or "") < MIN_PASSWORD_LENGTH:
            raise AnnotationError(f"the new password needs at least {MIN_PASSWORD_LENGTH} characters",
                                  field="new_password")
        if new != repeated:
            raise AnnotationError("the two new passwords differ", field="new_password")
        self.store.set_setting(ADMIN_SECRET_KEY, hash_secret(new))


# ---------------------------------------------------------------- studies


def check_new_study_name(store: Store, name: str | None) -> None:
    """A typed name must be free (a silent `-1a2b` suffix would hide a mistake)."""
    if name and name.strip():
        store.study_id_for_name(name.strip())


def study_rows(store: Store) -> list[dict[str, Any]]:
    """Studies with their lifecycle status, newest last."""
    return store._rows(
        "SELECT s.id, s.name, s.preset, coalesce(s.status, 'open') AS status, s.created_at, "
        "(SELECT count(*) FROM items i WHERE i.study_id = s.id) AS items, "
        "(SELECT count(*) FROM ratings r WHERE r.study_id = s.id) AS ratings "
        "FROM studies s ORDER BY s.created_at")


def unused_annotator_link(store: Store, study_id: str, base_url: str) -> str:
    """A link of a link-annotator who has not started yet; a new annotator when all have started."""
    rows = store._rows(
        "SELECT a.token FROM annotators a WHERE a.study_id = ? AND a.source = 'link' AND NOT EXISTS "
        "(SELECT 1 FROM assignments s WHERE s.annotator_id = a.id) ORDER BY a.created_at LIMIT 1", [study_id])
    token = rows[0]["token"] if rows else store.add_annotators(study_id, 1)[0].token
    return annotator_link(base_url, token)


def annotator_link(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/?{urlencode({'token': token})}"


def prolific_link(base_url: str, study_id: str, entry_key: str) -> str:
    """The study URL to paste into Prolific; Prolific fills in the {{%...%}} placeholders. `entry_key`
    (studies.entry_key) is the secret without which an open link does not let anyone in."""
    placeholders = "&".join(f"{key}={value}" for key, value in PROLIFIC_PLACEHOLDERS.items())
    return f"{base_url.rstrip('/')}/?{urlencode({'study': study_id, 'key': entry_key})}&{placeholders}"


def ensure_quickstart_study(store: Store, predictions: str | Path | None = None) -> str | None:
    """Create the demo study from the quickstart predictions once; returns its id (None if no file yet)."""
    predictions = Path(predictions) if predictions else quickstart_predictions()
    if not predictions.exists():
        return None
    resolved = str(predictions.resolve())
    for study in store.studies():
        if study["id"].startswith(QUICKSTART_STUDY) and store.study(study["id"])["predictions_path"] == resolved:
            return study["id"]
    try:
        return store.create_study(predictions, StudySettings(preset="feb", name=QUICKSTART_STUDY))
    except AnnotationError as err:
        if "no correctly predicted" not in str(err):
            raise
        # a small quickstart model may get every label wrong; rate all predictions rather than nothing
        return store.create_study(predictions, StudySettings(preset="feb", name=QUICKSTART_STUDY,
                                                             only_correct=False))


def build_quickstart(store: Store, progress: Callable[[float, str], None] | None = None) -> str:
    """Run the backend's quickstart (minutes) in a worker process, so torch never loads into the server,
    and create the demo study from its output."""
    from annotation.workers import run_quickstart_build

    path = run_quickstart_build(default_models_dir(), progress)
    study_id = ensure_quickstart_study(store, path)
    if study_id is None:
        raise AnnotationError("the quickstart finished but wrote no predictions file", path=str(path))
    return study_id


def export(db_path: str | Path, study_id: str, fmt: str, out_path: str | Path) -> Path:
    """Export through the analysis module (`annotation.export.export_study`)."""
    from annotation.export import export_study
    if fmt not in ("csv", "jsonl", "parquet"):
        raise AnnotationError(f"unknown format {fmt!r}: use csv, jsonl or parquet", field="format")
    return Path(export_study(str(db_path), study_id, fmt, str(out_path)))


ANNOTATOR_COLUMNS = ["annotator", "source", "Prolific id", "rated", "ended at gate", "in progress",
                     "timed out", "mean s / item", "last activity (UTC)", "finished"]


def progress_rows(store: Store, study_id: str) -> tuple[dict[str, Any], list[list[Any]]]:
    """The study's counts and one display row per annotator (columns: ANNOTATOR_COLUMNS)."""
    rows = [[r["annotator"], r["source"], r["prolific_pid"] or "-", r["submitted"] or 0, r["gate_failed"] or 0,
             r["in_progress"] or 0, r["abandoned"] or 0, "-" if r["mean_seconds"] is None else r["mean_seconds"],
             _minute(r["last_activity"]), "yes" if r["completed_at"] else "no"]
            for r in store.annotator_progress(study_id)]
    return store.study_progress(study_id), rows


def _minute(timestamp: str | None) -> str:
    return timestamp[:16].replace("T", " ") if timestamp else "-"
