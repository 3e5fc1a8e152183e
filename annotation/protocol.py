"""Protocol presets: JSON files (one per preset) that fix the wording, scale, gate and what is rated.

A study copies its whole preset into `studies.protocol_json`, so analysis and exports read the wording,
scale and score mapping from the study itself. Built-in presets live in `annotation/presets/*.json`;
a user-defined preset is any JSON file with the same fields (docs/annotation.md documents them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from annotation.errors import AnnotationError

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
RATABLE = ("model", "gold")
GATE_POLICIES = ("block", "record")
REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "title": str, "instructions_md": str, "question": str, "contexts": dict, "scale": list,
    "binary_positive": list, "gate": dict, "rate": list, "shortcomings": list,
    "judge_as_if_label_correct": bool, "comment": bool, "defaults": dict,
}
# Under the "block" policy, this many wrong gate answers in a row end the study for a participant (no more
# items, no completion code): clicking through the gate at random must not earn a code.
GATE_FAILURE_LIMIT = 3
DEFAULTS = {"items_per_page": 10, "annotators_per_item": 3, "only_correct": True, "per_label": 2}


def list_presets() -> list[str]:
    """Names of the built-in presets (file stems in annotation/presets/)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def load_preset(name_or_path: str | Path) -> dict[str, Any]:
    """Load a built-in preset by name, or a preset JSON file by path, and validate it."""
    text_name = str(name_or_path)
    path = Path(text_name)
    if not text_name.endswith(".json") and not path.exists():
        path = PRESETS_DIR / f"{text_name}.json"
        if not path.exists():
            raise AnnotationError(f"unknown preset {text_name!r}: use one of {', '.join(list_presets())} "
                                  "or the path of a preset JSON file")
    if not path.exists():
        raise AnnotationError("preset file not found", path=str(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"invalid JSON: {err.msg} (column {err.colno}; JSON allows no comments)",
                              path=str(path), line=err.lineno) from err
    except UnicodeDecodeError as err:
        raise AnnotationError("not UTF-8 text", path=str(path)) from err
    return validate_preset(data, source=str(path))


def validate_preset(data: Any, *, source: str = "<preset>") -> dict[str, Any]:
    """Check a preset's fields; errors name the file and the field to fix."""
    def fail(message: str, field: str | None = None) -> AnnotationError:
        return AnnotationError(message, path=source, field=field)

    if not isinstance(data, dict):
        raise fail("a preset must be a JSON object")
    for key, expected in REQUIRED_KEYS.items():
        if key not in data:
            raise fail("missing required field (see 'Protocol presets' in docs/annotation.md)", key)
        if not isinstance(data[key], expected):
            raise fail(f"expected {getattr(expected, '__name__', expected)}, got {type(data[key]).__name__}", key)
    if "{context}" not in data["question"]:
        raise fail("the question must contain '{context}' (filled from 'contexts')", "question")
    if "default" not in data["contexts"]:
        raise fail("needs a 'default' context", "contexts")
    _validate_scale(data, fail)
    _validate_gate_and_rate(data, fail)
    for index, option in enumerate(data["shortcomings"]):
        if not (isinstance(option, dict) and isinstance(option.get("value"), str)
                and isinstance(option.get("label"), str)):
            raise fail("each shortcoming needs string 'value' and 'label'", f"shortcomings[{index}]")
    data = dict(data)
    data["defaults"] = {**DEFAULTS, **data["defaults"]}
    data["gate"] = {"max_failures_in_row": GATE_FAILURE_LIMIT, **data["gate"]}
    return data


def _validate_scale(data: dict, fail) -> None:
    scale = data["scale"]
    if len(scale) < 2:
        raise fail("needs at least two scale points", "scale")
    values = []
    for index, point in enumerate(scale):
        field = f"scale[{index}]"
        if not isinstance(point, dict) or not isinstance(point.get("value"), str) \
                or not isinstance(point.get("label"), str):
            raise fail("each scale point needs string 'value' and 'label'", field)
        score = point.get("score")
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            raise fail("each scale point needs a numeric 'score'", f"{field}.score")
        values.append(point["value"])
    if len(set(values)) != len(values):
        raise fail("scale values must be unique", "scale")
    unknown = set(data["binary_positive"]) - set(values)
    if unknown:
        raise fail(f"not scale values: {sorted(unknown)}", "binary_positive")


def _validate_gate_and_rate(data: dict, fail) -> None:
    gate = data["gate"]
    if not isinstance(gate.get("enabled"), bool):
        raise fail("expected true or false", "gate.enabled")
    if gate.get("policy") not in GATE_POLICIES:
        raise fail(f"expected one of {GATE_POLICIES}", "gate.policy")
    limit = gate.get("max_failures_in_row", GATE_FAILURE_LIMIT)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise fail("expected a whole number >= 0 (0 = no limit)", "gate.max_failures_in_row")
    rate = data["rate"]
    if not rate or any(r not in RATABLE for r in rate) or len(set(rate)) != len(rate):
        raise fail(f"expected a non-empty list of distinct values from {RATABLE}", "rate")


def question_for(protocol: dict[str, Any], dataset: str) -> str:
    """The rating question with the dataset's context filled in."""
    contexts = protocol["contexts"]
    return protocol["question"].replace("{context}", contexts.get(dataset, contexts["default"]))


def scale_score(protocol: dict[str, Any], value: str) -> float:
    for point in protocol["scale"]:
        if point["value"] == value:
            return float(point["score"])
    raise AnnotationError(f"{value!r} is not on this study's scale "
                          f"({', '.join(p['value'] for p in protocol['scale'])})", field="rating")
