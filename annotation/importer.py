"""Import ratings collected elsewhere (MTurk, Prolific, a spreadsheet) into a study, all or nothing.

The file is CSV (header row), JSONL (one object per line) or Parquet, chosen by extension (.csv, .jsonl /
.json / .ndjson, .parquet). An export of this tool (any format) imports as is: exported into a fresh study
built from the same predictions, it gives the same analysis (timings, gate answers, shown positions included).
Columns (names are case-insensitive; spaces count as underscores; MTurk's "Input." and "Answer." prefixes
are ignored):
  item          item_id | record_id | item | id         the study's item id or the predictions record id (each
                                                         present column is tried in this order)
  annotator     annotator | annotator_id | worker_id | participant_id | prolific_pid | participant
  question      question (optional, default "model")     "model" or "gold", one of the protocol's `rate`
  rating        rating | answer | response               scale value or label (case-insensitive) or score
  shortcomings  shortcomings (optional)                  values or labels separated by ";"
  comment       comment (optional)
  seconds       rating_seconds | seconds | seconds_spent | time_seconds (optional): the rating's time
  item seconds  item_seconds (optional): the item x annotator time (default: the largest of its rows'
                seconds, since the app repeats the item's time on each rating)
  gate          gate_answer, gate_correct (optional): the annotator's answer to the task and whether it was
                right (computed from the item's gold label when only the answer is given)
  shown_position  shown_position (optional): 1 or 2, where the explanation was shown

Every row is validated first; if any row is bad, one `RatingsImportError` lists each bad row (line, field,
why) and nothing is written. Otherwise everything is written in one transaction: annotators get
`source="import"` and id `import:<study>:<name>` (no token, so they cannot log in; a name that already
reads `import:<other study>:<name>`, as in an export, keeps only `<name>`), each new item x annotator pair
gets a submitted assignment with its gate answer and seconds (so the app counts it towards
`annotators_per_item`), ratings get `origin="import:<file name>"`. A rating that already exists (same item,
annotator, question) is an error, so importing a file twice does nothing the second time.
"""

from __future__ import annotations

import csv
import json
import math
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from annotation import backend
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
    "seconds": ("rating_seconds", "seconds", "seconds_spent", "time_seconds"),
    "item_seconds": ("item_seconds",),
    "gate_answer": ("gate_answer",),
    "gate_correct": ("gate_correct",),
    "shown_position": ("shown_position",),
}
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
EXPORTED_ANNOTATOR = re.compile(r"^import:[^:]+:")
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
    item_seconds: float | None = None
    gate_answer: str | None = None
    gate_correct: int | None = None
    shown_position: int | None = None


def import_ratings(db_path: str | Path, study_id: str, csv_path: str | Path) -> ImportSummary:
    """Validate every row of the file (CSV, JSONL or Parquet), then write all of them in one transaction
    (or none)."""
    csv_path = Path(csv_path)
    header, rows = read_rows(csv_path)
    columns = _map_columns(header, csv_path)
    db_file = Path(db_path)
    if not db_file.is_file():  # never create an empty database for a mistyped --db
        raise AnnotationError("study database not found (check --db)" if not db_file.exists() else
                              "is a directory, not a study database file (check --db)", path=str(db_file))
    _check_study_database(db_file)
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


def _check_study_database(path: Path) -> None:
    """Refuse a file that is not SQLite or has no study tables (open_db would add them to any SQLite file)."""
    conn = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, timeout=30)
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as err:
        raise AnnotationError(f"not a SQLite database ({err})", path=str(path)) from err
    finally:
        conn.close()
    if "studies" not in tables:
        raise AnnotationError("not a study database (no studies table); create the study first", path=str(path))


# ---------------------------------------------------------------- spreadsheet formulas

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP CSV injection)


def formula_safe(text: Any) -> Any:
    """Annotator-written text for a CSV cell: a leading quote keeps a spreadsheet from running "=HYPERLINK(...)"."""
    return "'" + text if isinstance(text, str) and text.startswith(FORMULA_STARTS) else text


def formula_unsafe(text: str) -> str:
    """The inverse, applied to every CSV cell read back (so an exported CSV imports unchanged)."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


# ---------------------------------------------------------------- reading

def read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """(header, [(line number, cells as text)]) from a CSV, JSONL or Parquet file."""
    if not path.exists():
        raise AnnotationError("ratings file not found", path=str(path))
    if not path.is_file():
        raise AnnotationError("is a directory, not a ratings file (check --file)", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path)
    if suffix not in ("", ".csv", ".txt"):  # e.g. .xlsx or .tsv would fail as CSV with a misleading message
        raise AnnotationError(f"cannot read {suffix} files; save the ratings as .csv (UTF-8), .jsonl or .parquet",
                              path=str(path))
    return _read_csv(path)


def _cell_text(value: Any) -> str:
    """A JSON/Parquet value as the text a CSV cell would hold (floats keep every digit)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, dict)):
        return ";".join(map(str, value)) if isinstance(value, list) else json.dumps(value)
    return str(value)


def _records_to_rows(records: list[tuple[int, dict]], path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    if not records:
        raise AnnotationError("the file has no rows", path=str(path))
    header = list(dict.fromkeys(key for _, record in records for key in record))
    return header, [(line, [_cell_text(record.get(key)) for key in header]) for line, record in records]


def _read_jsonl(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    # the backend's strict reader: bad UTF-8, NaN/Infinity, deep nesting and lone surrogates (which the
    # UTF-8 database cannot store) are refused with the line, like a bad predictions file
    try:
        records = list(backend.jsonl_objects(path))
    except backend.SparseFitError as err:
        raise AnnotationError(err.message, path=str(path), line=err.line, field=err.field) from err
    return _records_to_rows(records, path)


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise AnnotationError(f"not a readable Parquet file ({err})", path=str(path)) from err
    # "line" = row number + 1, as if the file had a header line, so messages read like the CSV ones
    return _records_to_rows([(i + 2, record) for i, record in enumerate(table.to_pylist())], path)


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = []
            start = reader.line_num + 1
            for row in reader:
                if any(cell.strip() for cell in row):
                    rows.append((start, [formula_unsafe(cell) for cell in row]))
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
    names = [name.strip().lower() for name in header]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise AnnotationError(f"the header names column {repeated[0]!r} twice", path=str(path), line=1)
    for line, cells in rows:
        if len(cells) > len(header):  # an unquoted comma in a comment would silently cut it
            raise AnnotationError(f"{len(cells)} cells but the header has {len(header)}; put text that contains "
                                  "commas in double quotes", path=str(path), line=line)
    return header, rows


def _map_columns(header: list[str], path: Path) -> dict[str, Any]:
    # MTurk batch results name columns Input.<field> / Answer.<field>
    normalized = [h.strip().lower().replace(" ", "_").removeprefix("input.").removeprefix("answer.")
                  for h in header]
    columns: dict[str, int] = {}
    for role, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in normalized:
                columns[role] = normalized.index(alias)
                break
    # every item column present, in alias order: an export's item_id belongs to another study, its
    # record_id matches a fresh study built from the same predictions
    item_columns = [normalized.index(a) for a in COLUMN_ALIASES["item"] if a in normalized]
    if item_columns:
        columns["item_fallbacks"] = item_columns  # type: ignore[assignment]
    missing = [role for role in REQUIRED_COLUMNS if role not in columns]
    if missing:
        expected = "; ".join(f"{role}: one of {', '.join(COLUMN_ALIASES[role])}" for role in missing)
        raise AnnotationError(f"missing column(s) ({expected}); found {', '.join(header)}", path=str(path), line=1)
    return columns


# ---------------------------------------------------------------- validation

def _validate_rows(conn, study_id: str, protocol: dict[str, Any], columns: dict[str, Any],
                   rows: list[tuple[int, list[str]]]) -> tuple[list[_ParsedRow], list[RowProblem]]:
    by_item_id: dict[str, str] = {}
    by_record_id: dict[str, list[str]] = {}
    gold_labels: dict[str, str] = {}
    for item_id, record_id, gold_label in conn.execute(
            "SELECT id, record_id, gold_label FROM items WHERE study_id = ?", (study_id,)):
        by_item_id[item_id] = item_id
        by_record_id.setdefault(record_id, []).append(item_id)
        gold_labels[item_id] = gold_label or ""
    pair_values: dict[tuple[str, str, str], tuple[str, int]] = {}  # (item, annotator, field) -> (text, line)
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
        item_id = _resolve_item_columns(cells, columns, by_item_id, by_record_id, line, row_problems)
        annotator = EXPORTED_ANNOTATOR.sub("", cell("annotator"), count=1)
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
        item_seconds = _resolve_seconds(cell("item_seconds"), line, row_problems, "item_seconds")
        gate_correct = _resolve_flag(cell("gate_correct"), line, row_problems)
        shown_position = _resolve_position(cell("shown_position"), line, row_problems)
        gate_answer = cell("gate_answer") or None
        if gate_answer is not None and gate_correct is None and item_id:
            gate_correct = int(gate_answer.lower() == gold_labels[item_id].strip().lower())
        if item_id and annotator:
            # one assignment per item x annotator: its values must agree across that pair's rows
            for name, text in (("item_seconds", cell("item_seconds")), ("gate_answer", cell("gate_answer")),
                               ("gate_correct", cell("gate_correct"))):
                earlier = pair_values.setdefault((item_id, annotator, name), (text, line))
                if earlier[0] != text:
                    row_problems.append(RowProblem(line, name, f"{text!r} differs from {earlier[0]!r} on line "
                                                               f"{earlier[1]} (same item and annotator)"))
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
                                 shortcomings, cell("comment") or None, seconds, item_seconds, gate_answer,
                                 gate_correct, shown_position))
    return parsed, problems


def _resolve_item_columns(cells: list[str], columns: dict[str, Any], by_item_id: dict[str, str],
                          by_record_id: dict[str, list[str]], line: int, problems: list[RowProblem]) -> str | None:
    """The first item column whose value names an item of this study; the first column's problem if none."""
    first_problems: list[RowProblem] | None = None
    for index in columns.get("item_fallbacks") or [columns["item"]]:
        text = cells[index].strip() if index < len(cells) else ""
        attempt: list[RowProblem] = []
        item_id = _resolve_item(text, by_item_id, by_record_id, line, attempt)
        if item_id:
            return item_id
        first_problems = attempt if first_problems is None else first_problems
    problems.extend(first_problems or [])
    return None


def _resolve_flag(text: str, line: int, problems: list[RowProblem]) -> int | None:
    lowered = text.lower()
    if not lowered:
        return None
    if lowered in ("1", "1.0", "true", "yes"):
        return 1
    if lowered in ("0", "0.0", "false", "no"):
        return 0
    problems.append(RowProblem(line, "gate_correct", f"{text!r} is not 1/0 or true/false"))
    return None


MAX_SHOWN_POSITION = 1000  # explanations shown per item: 2 in the protocol; a bound keeps SQLite's int happy


def _resolve_position(text: str, line: int, problems: list[RowProblem]) -> int | None:
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not math.isfinite(number) or number < 1 or number > MAX_SHOWN_POSITION or number != int(number):
        problems.append(RowProblem(line, "shown_position", f"{text!r} is not a position (1, 2, ...)"))
        return None
    return int(number)


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


def _resolve_seconds(text: str, line: int, problems: list[RowProblem], field: str = "seconds") -> float | None:
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        problems.append(RowProblem(line, field, f"{text!r} is not a number"))
        return None
    if not (seconds >= 0) or seconds == float("inf"):
        problems.append(RowProblem(line, field, f"{text!r} must be a finite number >= 0"))
        return None
    return seconds


def _assignment_fields(rows: list[_ParsedRow]) -> tuple[float | None, str | None, int | None, str | None]:
    """(seconds, gate answer, gate correct, order JSON) of one item x annotator from its rows.

    Seconds: the item_seconds column, else the largest row time (not the sum: the app repeats the item's
    time on every rating of it, so a sum would double it)."""
    first = rows[0]
    row_seconds = [r.seconds for r in rows if r.seconds is not None]
    seconds = first.item_seconds if first.item_seconds is not None else (max(row_seconds) if row_seconds else None)
    positions = [r.shown_position for r in rows]
    order = (json.dumps([r.question for r in sorted(rows, key=lambda r: r.shown_position)])
             if None not in positions else None)
    return seconds, first.gate_answer, first.gate_correct, order


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
    by_pair: dict[tuple[str, str], list[_ParsedRow]] = {}
    for row in parsed:
        by_pair.setdefault((row.item_id, annotator_id_for(study_id, row.annotator_name)), []).append(row)
    new_pairs = [(study_id, item, annotator, SUBMITTED, now, now, *_assignment_fields(rows))
                 for (item, annotator), rows in by_pair.items() if (item, annotator) not in assigned]
    conn.executemany("INSERT INTO assignments (study_id, item_id, annotator_id, status, assigned_at, submitted_at, "
                     "seconds_spent, gate_answer, gate_correct, order_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     new_pairs)
    conn.executemany(
        "INSERT INTO ratings (study_id, item_id, annotator_id, question, shown_position, rating, score, "
        "shortcomings_json, comment, seconds_spent, created_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(study_id, row.item_id, annotator_id_for(study_id, row.annotator_name), row.question, row.shown_position,
          row.rating, row.score, None if row.shortcomings is None else json.dumps(row.shortcomings), row.comment,
          row.seconds, now, origin) for row in parsed])
    return len(parsed), len(new_annotators), len(new_pairs)
