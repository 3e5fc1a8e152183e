"""Import ratings collected elsewhere (MTurk, Prolific, a spreadsheet) into a study, all or nothing.

CSV columns (header names are case-insensitive; spaces count as underscores; MTurk's "Input." and
"Answer." prefixes are ignored):
  item          item_id | record_id | item | id         the study's item id or the predictions record id
  annotator     annotator | annotator_id | worker_id | participant_id | prolific_pid | participant
  question      question (optional, default "model")     "model" or "gold", one of the protocol's `rate`
  rating        rating | answer | response               scale value or label (case-insensitive) or score
  shortcomings  shortcomings (optional)                  values or labels separated by ";"
  comment       comment (optional)
  seconds       seconds | seconds_spent | time_seconds (optional)

Every row is validated first; if any row is bad, one `RatingsImportError` lists each bad row (line, field,
why) and nothing is written. Otherwise everything is written in one transaction: annotators get
`source="import"` and id `import:<study>:<name>` (no token, so they cannot log in), each new item x
annotator pair gets a submitted assignment (so the app counts it towards `annotators_per_item`), ratings
get `origin="import:<file name>"`. A rating that already exists (same item, annotator, question) is an
error, so importing a file twice does nothing the second time.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from annotation.errors import AnnotationError
from annotation.schema import SUBMITTED, open_db

COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "item": ("item_id", "record_id", "item", "id"),
    "annotator": ("annotator", "annotator_id", "worker_id", "workerid", "participant_id", "prolific_pid",
                  "participant"),
    "question": ("question",),
    "rating": ("rating", "answer", "response"),
    "shortcomings": ("shortcomings",),
    "comment": ("comment",),
    "seconds": ("seconds", "seconds_spent", "time_seconds"),
}
REQUIRED_COLUMNS = ("item", "annotator", "rating")
SCORE_TOLERANCE = 0.01  # "0.67" or "0.667" both mean 2/3


@dataclass
class RowProblem:
    line: int
    field: str
    why: str

    def text(self) -> str:
        return f"line {self.line}, field '{self.field}': {self.why}"


class RatingsImportError(AnnotationError):
    """Some rows of an import file are bad; `problems` lists each one. Nothing was imported."""

    def __init__(self, path: str, problems: list[RowProblem], total_rows: int):
        self.problems = problems
        shown = problems[:50]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        message = (f"{len(problems)} problem(s) in {total_rows} row(s); nothing was imported. Fix these rows "
                   "and import the file again:\n" + "\n".join("  " + p.text() for p in shown) + more)
        super().__init__(message, path=path)


@dataclass
class ImportSummary:
    file: str
    origin: str
    rows: int
    ratings_inserted: int
    annotators_created: int
    assignments_created: int


@dataclass
class _ParsedRow:
    line: int
    item_id: str
    annotator_name: str
    question: str
    rating: str
    score: float
    shortcomings: list[str] | None
    comment: str | None
    seconds: float | None


def import_ratings(db_path: str | Path, study_id: str, csv_path: str | Path) -> ImportSummary:
    """Validate every row of `csv_path`, then write all of them in one transaction (or none)."""
    csv_path = Path(csv_path)
    header, rows = _read_csv(csv_path)
    columns = _map_columns(header, csv_path)
    db = open_db(db_path)
    conn = db.conn
    conn.execute("BEGIN IMMEDIATE")  # hold the write lock from validation to commit: no race on duplicates
    try:
        study = conn.execute("SELECT protocol_json FROM studies WHERE id = ?", (study_id,)).fetchone()
        if study is None:
            raise AnnotationError(f"no study {study_id!r} in this database", path=str(db_path), field="study")
        protocol = json.loads(study[0])
        parsed, problems = _validate_rows(conn, study_id, protocol, columns, rows)
        if problems:
            raise RatingsImportError(str(csv_path), problems, len(rows))
        summary = _write(conn, study_id, csv_path.name, parsed)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return ImportSummary(str(csv_path), f"import:{csv_path.name}", len(rows), *summary)


# ---------------------------------------------------------------- reading

def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    if not path.exists():
        raise AnnotationError("ratings file not found", path=str(path))
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = []
            start = reader.line_num + 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((start, row))
                start = reader.line_num + 1
    except UnicodeDecodeError as err:
        raise AnnotationError(f"not UTF-8 text ({err.reason} at byte {err.start}); save the CSV as UTF-8",
                              path=str(path)) from err
    except csv.Error as err:
        raise AnnotationError(f"not a readable CSV file ({err})", path=str(path)) from err
    if not header:
        raise AnnotationError("the file is empty (expected a header row)", path=str(path), line=1)
    if not rows:
        raise AnnotationError("the file has a header but no rows", path=str(path))
    return header, rows


def _map_columns(header: list[str], path: Path) -> dict[str, int]:
    # MTurk batch results name columns Input.<field> / Answer.<field>
    normalized = [h.strip().lower().replace(" ", "_").removeprefix("input.").removeprefix("answer.")
                  for h in header]
    columns: dict[str, int] = {}
    for role, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in normalized:
                columns[role] = normalized.index(alias)
                break
    missing = [role for role in REQUIRED_COLUMNS if role not in columns]
    if missing:
        expected = "; ".join(f"{role}: one of {', '.join(COLUMN_ALIASES[role])}" for role in missing)
        raise AnnotationError(f"missing column(s) ({expected}); found {', '.join(header)}", path=str(path), line=1)
    return columns


# ---------------------------------------------------------------- validation

def _validate_rows(conn, study_id: str, protocol: dict[str, Any], columns: dict[str, int],
                   rows: list[tuple[int, list[str]]]) -> tuple[list[_ParsedRow], list[RowProblem]]:
    by_item_id: dict[str, str] = {}
    by_record_id: dict[str, list[str]] = {}
    for item_id, record_id in conn.execute("SELECT id, record_id FROM items WHERE study_id = ?", (study_id,)):
        by_item_id[item_id] = item_id
        by_record_id.setdefault(record_id, []).append(item_id)
    existing = {tuple(r) for r in conn.execute(
        "SELECT item_id, annotator_id, question FROM ratings WHERE study_id = ?", (study_id,))}
    rate = protocol.get("rate") or ["model", "gold"]
    seen: dict[tuple[str, str, str], int] = {}
    parsed, problems = [], []
    for line, cells in rows:
        def cell(role: str) -> str:
            index = columns.get(role)
            return cells[index].strip() if index is not None and index < len(cells) else ""

        row_problems: list[RowProblem] = []
        item_id = _resolve_item(cell("item"), by_item_id, by_record_id, line, row_problems)
        annotator = cell("annotator")
        if not annotator:
            row_problems.append(RowProblem(line, "annotator", "empty"))
        question = cell("question").lower() or "model"
        if question not in rate:
            row_problems.append(RowProblem(line, "question", f"{question!r} is not rated in this study "
                                                             f"(use {' or '.join(rate)})"))
        rating_score = _resolve_rating(cell("rating"), protocol["scale"], line, row_problems)
        shortcomings = _resolve_shortcomings(cell("shortcomings"), protocol.get("shortcomings") or [], line,
                                             row_problems)
        seconds = _resolve_seconds(cell("seconds"), line, row_problems)
        if item_id and annotator and question in rate:
            key = (item_id, annotator_id_for(study_id, annotator), question)
            if key in seen:
                row_problems.append(RowProblem(line, "annotator", f"duplicate of line {seen[key]} (same item, "
                                                                  "annotator and question)"))
            elif key in existing:
                row_problems.append(RowProblem(line, "annotator", "this annotator already rated this item and "
                                                                  "question in the study (imported before?)"))
            seen.setdefault(key, line)
        if row_problems:
            problems.extend(row_problems)
            continue
        parsed.append(_ParsedRow(line, item_id, annotator, question, rating_score[0], rating_score[1],
                                 shortcomings, cell("comment") or None, seconds))
    return parsed, problems


def _resolve_item(text: str, by_item_id: dict[str, str], by_record_id: dict[str, list[str]], line: int,
                  problems: list[RowProblem]) -> str | None:
    if not text:
        problems.append(RowProblem(line, "item", "empty"))
        return None
    if text in by_item_id:
        return text
    matches = by_record_id.get(text, [])
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        problems.append(RowProblem(line, "item", f"record id {text!r} is in several items; use the item id"))
    else:
        problems.append(RowProblem(line, "item", f"{text!r} is neither an item id nor a record id of this study"))
    return None


def _resolve_rating(text: str, scale: list[dict], line: int,
                    problems: list[RowProblem]) -> tuple[str, float] | None:
    lowered = text.lower()
    for point in scale:
        if lowered in (point["value"].lower(), str(point.get("label", "")).lower()):
            return point["value"], float(point["score"])
    try:
        number = float(text)
    except ValueError:
        number = None
    if number is not None:
        close = [p for p in scale if abs(float(p["score"]) - number) <= SCORE_TOLERANCE]
        if len(close) == 1:
            return close[0]["value"], float(close[0]["score"])
    allowed = ", ".join(f"{p['value']} / {p.get('label')} / {float(p['score']):.3g}" for p in scale)
    problems.append(RowProblem(line, "rating", f"{text!r} is not on the scale (value / label / score: {allowed})"
                               if text else "empty"))
    return None


def _resolve_shortcomings(text: str, options: list[dict], line: int,
                          problems: list[RowProblem]) -> list[str] | None:
    if not text:
        return None
    if not options:
        problems.append(RowProblem(line, "shortcomings", "this study's protocol has no shortcomings checklist"))
        return None
    lookup = {o["value"].lower(): o["value"] for o in options}
    lookup.update({str(o.get("label", "")).lower(): o["value"] for o in options})
    values, unknown = [], []
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        if part.lower() in lookup:
            values.append(lookup[part.lower()])
        else:
            unknown.append(part)
    if unknown:
        problems.append(RowProblem(line, "shortcomings", f"unknown {', '.join(map(repr, unknown))} (use "
                                   f"{', '.join(o['value'] for o in options)}, separated by ';')"))
    return values


def _resolve_seconds(text: str, line: int, problems: list[RowProblem]) -> float | None:
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        problems.append(RowProblem(line, "seconds", f"{text!r} is not a number"))
        return None
    if not (seconds >= 0) or seconds == float("inf"):
        problems.append(RowProblem(line, "seconds", f"{text!r} must be a finite number >= 0"))
        return None
    return seconds


def annotator_id_for(study_id: str, name: str) -> str:
    return f"import:{study_id}:{name}"


# ---------------------------------------------------------------- writing

def _write(conn, study_id: str, file_name: str, parsed: list[_ParsedRow]) -> tuple[int, int, int]:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    origin = f"import:{file_name}"
    names = sorted({row.annotator_name for row in parsed})
    known = {r[0] for r in conn.execute("SELECT id FROM annotators WHERE study_id = ?", (study_id,))}
    new_annotators = [(annotator_id_for(study_id, n), study_id, "import", now) for n in names
                      if annotator_id_for(study_id, n) not in known]
    conn.executemany("INSERT INTO annotators (id, study_id, token, source, created_at) VALUES (?, ?, NULL, ?, ?)",
                     new_annotators)
    assigned = {tuple(r) for r in conn.execute(
        "SELECT item_id, annotator_id FROM assignments WHERE study_id = ?", (study_id,))}
    seconds_per_pair: dict[tuple[str, str], float | None] = {}
    for row in parsed:
        pair = (row.item_id, annotator_id_for(study_id, row.annotator_name))
        if row.seconds is not None:
            seconds_per_pair[pair] = (seconds_per_pair.get(pair) or 0.0) + row.seconds
        else:
            seconds_per_pair.setdefault(pair, None)
    new_pairs = [(study_id, item, annotator, SUBMITTED, now, now, secs)
                 for (item, annotator), secs in seconds_per_pair.items() if (item, annotator) not in assigned]
    conn.executemany("INSERT INTO assignments (study_id, item_id, annotator_id, status, assigned_at, submitted_at, "
                     "seconds_spent) VALUES (?, ?, ?, ?, ?, ?, ?)", new_pairs)
    conn.executemany(
        "INSERT INTO ratings (study_id, item_id, annotator_id, question, shown_position, rating, score, "
        "shortcomings_json, comment, seconds_spent, created_at, origin) VALUES (?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?)",
        [(study_id, row.item_id, annotator_id_for(study_id, row.annotator_name), row.question, row.rating,
          row.score, None if row.shortcomings is None else json.dumps(row.shortcomings), row.comment, row.seconds,
          now, origin) for row in parsed])
    return len(parsed), len(new_annotators), len(new_pairs)
