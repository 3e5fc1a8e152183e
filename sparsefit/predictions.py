"""The predictions file: one JSON object per line, the single contract between backend and annotation.

Any model can produce it; the annotation app builds studies from it. Schema (README documents it too):

| field | type | meaning |
|---|---|---|
| id | str | example id, unique in the file |
| dataset | str | task name (esnli, comve, ecqa, sbic, or a user task) |
| split | str | split the example came from |
| inputs | {str: str} | the task's input fields, e.g. premise / hypothesis |
| prompt | str | the exact model input |
| gold_label | str | reference label |
| gold_explanations | [str] | reference explanations (at least one) |
| pred_label | str | predicted label (text before the first " because ") |
| pred_explanation | str | predicted explanation ("UNK" when the generation had no " because ") |
| raw_generation | str | the whole generated text |
| correct | bool | pred_label matches gold_label (case-insensitive) |
| model | str | model id or path |
| method | str | fine-tuning method name |
| trainable_percent | float or null | trained parameters / all parameters x 100 |
| seed | int or null | episode seed |
| metrics | {str: number or null} | per-example scores, e.g. bertscore_f1, bleu, meteor |

Optional: `label_options` ([str], the task's label set, used for the annotation gate question) and
`scorer` ({metric: description of the scorer that produced it}).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sparsefit.data import jsonl_objects
from sparsefit.errors import SparseFitError

REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str, "dataset": str, "split": str, "inputs": dict, "prompt": str, "gold_label": str,
    "gold_explanations": list, "pred_label": str, "pred_explanation": str, "raw_generation": str,
    "correct": bool, "model": str, "method": str, "trainable_percent": (int, float, type(None)),
    "seed": (int, type(None)), "metrics": dict,
}
OPTIONAL_FIELDS: dict[str, type | tuple[type, ...]] = {"label_options": list, "scorer": dict}
# Longest text in any field. Real records are a few hundred characters; the limit keeps a bad or hostile
# file from filling the study database and every annotator's page. `study create --max-field-chars` raises it.
DEFAULT_MAX_FIELD_CHARS = 20_000


@dataclass
class PredictionRecord:
    id: str
    dataset: str
    split: str
    inputs: dict[str, str]
    prompt: str
    gold_label: str
    gold_explanations: list[str]
    pred_label: str
    pred_explanation: str
    raw_generation: str
    correct: bool
    model: str
    method: str
    trainable_percent: float | None
    seed: int | None
    metrics: dict[str, float | None] = field(default_factory=dict)
    label_options: list[str] | None = None
    scorer: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        # a metric that came out NaN (e.g. an empty generation) is a missing value: JSON has no NaN
        data["metrics"] = {k: _finite_or_none(v) for k, v in data["metrics"].items()}
        data["trainable_percent"] = _finite_or_none(data["trainable_percent"])
        return {k: v for k, v in data.items() if not (k in OPTIONAL_FIELDS and v is None)}


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    names = {"str": "string", "dict": "object", "list": "array", "bool": "true/false", "int": "integer",
             "float": "number", "NoneType": "null"}
    return " or ".join(names.get(t.__name__, t.__name__) for t in types)


def validate_record(obj: Any, *, path: str = "<predictions>", line: int | None = None) -> PredictionRecord:
    """Check one parsed JSON object against the schema; errors name the file, line and field."""
    if not isinstance(obj, dict):
        raise SparseFitError("expected a JSON object per line", path=path, line=line)
    for name, expected in {**REQUIRED_FIELDS, **OPTIONAL_FIELDS}.items():
        if name not in obj:
            if name in REQUIRED_FIELDS:
                raise SparseFitError("missing required field (see the predictions schema in README)",
                                     path=path, line=line, field=name)
            continue
        value = obj[name]
        if name in OPTIONAL_FIELDS and value is None:
            continue
        # bool is an int subclass: do not accept true/false where a number is expected, and vice versa
        bad_bool = isinstance(value, bool) and bool not in (expected if isinstance(expected, tuple) else (expected,))
        if bad_bool or not isinstance(value, expected):
            raise SparseFitError(f"expected {_type_name(expected)}, got {type(value).__name__} {value!r:.60}",
                                 path=path, line=line, field=name)
    for key, text in obj["inputs"].items():
        if not isinstance(text, str):
            raise SparseFitError("input values must be strings", path=path, line=line, field=f"inputs.{key}")
    if not obj["inputs"]:
        raise SparseFitError("needs at least one input field", path=path, line=line, field="inputs")
    if not obj["gold_explanations"] or not all(isinstance(e, str) and e.strip() for e in obj["gold_explanations"]):
        raise SparseFitError("needs at least one non-empty reference explanation (strings)",
                             path=path, line=line, field="gold_explanations")
    for key, value in obj["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise SparseFitError("metric values must be numbers or null", path=path, line=line,
                                 field=f"metrics.{key}")
    _check_meaning(obj, path, line)
    known = {**REQUIRED_FIELDS, **OPTIONAL_FIELDS}
    return PredictionRecord(**{k: v for k, v in obj.items() if k in known})


def _check_meaning(obj: dict[str, Any], path: str, line: int | None) -> None:
    """Values of the right type that a study would still get wrong: empty keys, ids that ratings files
    (cells trimmed) would confuse, gate options that are not text, and a `correct` flag the labels deny
    (studies show only correct predictions by default)."""
    from sparsefit.prompts import is_correct
    for name in ("id", "dataset", "gold_label"):
        if not obj[name].strip():
            raise SparseFitError("must not be empty", path=path, line=line, field=name)
    if obj["id"] != obj["id"].strip():
        raise SparseFitError(f"id {obj['id']!r} starts or ends with spaces (ratings files are matched on "
                             "trimmed ids)", path=path, line=line, field="id")
    options = obj.get("label_options")
    if options is not None:
        if not options or not all(isinstance(o, str) and o.strip() for o in options):
            raise SparseFitError(f"must be a non-empty array of label strings, got {options!r:.80}", path=path,
                                 line=line, field="label_options")
        if obj["gold_label"].strip().lower() not in {o.strip().lower() for o in options}:
            raise SparseFitError(f"gold_label {obj['gold_label']!r} is not one of label_options {options}",
                                 path=path, line=line, field="gold_label")
    if obj["correct"] and not is_correct(obj["pred_label"], obj["gold_label"], obj["dataset"]):
        raise SparseFitError(f"correct is true, but pred_label {obj['pred_label']!r:.40} does not match gold_label "
                             f"{obj['gold_label']!r:.40}", path=path, line=line, field="correct")


def read_predictions(path: str | Path, max_field_chars: int = DEFAULT_MAX_FIELD_CHARS) -> list[PredictionRecord]:
    """Read and validate a whole predictions file; the first bad line stops with its location.

    Strict JSON (no NaN/Infinity, no lone surrogates, bounded nesting) and no text longer than
    `max_field_chars`, so whatever is accepted can be stored, exported and analysed."""
    path = Path(path)
    if not path.exists():
        raise SparseFitError("predictions file not found", path=str(path))
    if path.is_dir():
        raise SparseFitError("this is a folder; give the path of the predictions .jsonl file", path=str(path))
    if max_field_chars < 1:
        raise SparseFitError(f"must be at least 1, got {max_field_chars}", field="max_field_chars")
    records: list[PredictionRecord] = []
    seen: dict[str, int] = {}
    for number, obj in jsonl_objects(path, max_string=max_field_chars):
        record = validate_record(obj, path=str(path), line=number)
        if record.id in seen:
            raise SparseFitError(f"duplicate id {record.id!r} (first on line {seen[record.id]})",
                                 path=str(path), line=number, field="id")
        seen[record.id] = number
        records.append(record)
    if not records:
        raise SparseFitError("the predictions file has no records", path=str(path))
    return records


def write_predictions(path: str | Path, records: Iterable[PredictionRecord]) -> Path:
    """Write records atomically (temp file + rename) so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record.to_json(), ensure_ascii=False, allow_nan=False) + "\n")
    tmp.replace(path)
    return path
