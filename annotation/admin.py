"""Admin actions behind the password: create studies, issue links, watch progress, export, quickstart.

Plain functions (no Gradio) so the CLI and the web app share them. Torch-free at import time.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

from annotation.errors import AnnotationError
from annotation.store import Store, StudySettings
from sparsefit.paths import models_dir as default_models_dir  # noqa: F401 (torch-free)
from sparsefit.paths import quickstart_predictions_path as quickstart_predictions  # noqa: F401

QUICKSTART_STUDY = "quickstart"




PROLIFIC_PLACEHOLDERS = {"PROLIFIC_PID": "{{%PROLIFIC_PID%}}", "STUDY_ID": "{{%STUDY_ID%}}",
                         "SESSION_ID": "{{%SESSION_ID%}}"}


class AdminGate:
    """Checks the admin password in constant time."""

    def __init__(self, password: str):
        if not password:
            raise AnnotationError("the admin password must not be empty", field="admin_password")
        self._password = password

    def ok(self, attempt: str | None) -> bool:
        return hmac.compare_digest((attempt or "").encode(), self._password.encode())

    def require(self, attempt: str | None) -> None:
        if not self.ok(attempt):
            raise AnnotationError("wrong admin password", field="password")


def new_password() -> str:
    return secrets.token_urlsafe(12)


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


def progress_rows(store: Store, study_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return store.study_progress(study_id), store.annotator_progress(study_id)
