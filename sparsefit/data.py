"""Dataset files → `Example`s: one loader per FEB task, plus a generic format for user tasks.

Every loader returns label-canonical, whitespace-collapsed examples with at least one reference
explanation, and raises `SparseFitError` naming file, line and field on bad input. Rows left out by
design (e.g. e-SNLI rows without a gold label, SBIC offensive posts without an implied statement) are
counted in a `LoadReport` (see `load_examples_with_report`) and logged; nothing is skipped silently.

Known tasks and their files (`path` is a folder unless said otherwise):

- ``esnli``: the plain-text release (``s1.{split}``, ``s2.{split}``, ``labels.{split}``,
  ``preproc1_expl_{1,2,3}.{split}``) or the CSV release (``esnli_{split}.csv``; the train CSV may be
  split into ``esnli_train_1.csv``, ``esnli_train_2.csv``); a single CSV file may be given too.
  Text stays tokenized as in the files; explanations are lower-cased (FEB).
- ``comve``: SemEval-2020 Task 4 upstream names under ``Training Data`` / ``Dev Data`` / ``Test Data``
  (found anywhere below `path`; folder names compared ignoring case and repeated spaces). Label
  ``choice1``/``choice2`` = the nonsensical sentence; three reference explanations (lower-cased).
- ``ecqa``: ``ecqa.jsonl`` (id, positives, negatives, explanation) joined with CommonsenseQA
  ``{train,dev}_rand_split.jsonl`` (in `path` or ``path/cqa``). With ``author_split/{train,val,test}_ids.txt``
  present the ECQA author splits are used (FEB does); otherwise train/dev are CQA's own splits.
  Explanation = positives joined with ". " plus a final "." (FEB; ".." collapsed to "."), lower-cased.
  Label = the answer text.
- ``sbic``: ``SBIC.v2.{trn,dev,tst}.csv`` (one row per annotation), aggregated per post like FEB:
  offensive if the mean of ``offensiveYN`` over the post's annotations is ≥ 0.5, group-targeted if the
  mean of ``whoTarget`` is ≥ 0.5 (empty counts as 0). Explanations: implied statements rewritten as
  sentences (see `sbic_statement_to_explanation`), "this post is a personal attack" for offensive posts
  not aimed at a group, "this post does not imply anything offensive" otherwise. As in FEB, the training
  split has one example per implied statement (id suffix ``-s{k}``); dev/test keep all statements of a
  post as its references.
- ``sample-nli``: the hand-written sample shipped in ``sparsefit/resources/sample_nli.jsonl`` (path None);
  formatted like e-SNLI.

Any other name is a user task in the generic format (a ``.jsonl`` or ``.csv`` file, or a folder holding
``{split}.jsonl`` / ``{split}.csv``):

- JSONL: one object per line with ``inputs`` (object of strings), ``label`` (string) and
  ``explanation`` or ``explanations`` (a string or a list of strings); ``id`` is optional (default
  ``{task}-{split}-{line}``).
- CSV: a header with ``input.<field>`` columns, ``label``, and ``explanation`` and/or
  ``explanation_1`` … ``explanation_k`` (blank extra cells are allowed); ``id`` column optional.
- An optional ``task.json`` next to the file: ``{"input_template": "...", "labels": [...],
  "question": "...", "context": "..."}``. ``input_template`` is a Python format string over the input
  field names (e.g. ``"explain sentiment: {review}"``); without it the prompt is
  ``explain {task}: {field1}: {v1} {field2}: {v2}``. With ``labels`` any other label is an error;
  ``question``/``context`` feed the annotation gate question. Loading registers the spec under the
  task name (`get_task_spec`) so the prompt code can find it.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from sparsefit.errors import SparseFitError

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("esnli", "comve", "ecqa", "sbic", "sample-nli")
FIXED_LABELS: dict[str, tuple[str, ...]] = {
    "esnli": ("entailment", "neutral", "contradiction"),
    "sample-nli": ("entailment", "neutral", "contradiction"),
    "comve": ("choice1", "choice2"),
    "sbic": ("offensive", "not_offensive"),
}
SAMPLE_NLI_PATH = Path(__file__).resolve().parent / "resources" / "sample_nli.jsonl"
SBIC_NOT_OFFENSIVE = "this post does not imply anything offensive"
SBIC_PERSONAL_ATTACK = "this post is a personal attack"


@dataclass(frozen=True)
class Example:
    id: str  # stable, unique within a dataset split
    dataset: str  # task name
    split: str
    inputs: dict[str, str]  # named input fields, e.g. {"premise": ..., "hypothesis": ...}
    label: str  # canonical label as it appears in the target
    explanations: tuple[str, ...]  # >= 1 reference explanations (training uses the first)

    def __hash__(self) -> int:  # the generated hash would fail on the `inputs` dict
        return hash((self.id, self.dataset, self.split, tuple(sorted(self.inputs.items())), self.label,
                     self.explanations))


@dataclass
class LoadReport:
    """What a loader read and what it left out by design (reason → count)."""

    dataset: str
    split: str
    path: str
    examples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        left_out = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"{self.dataset}/{self.split} from {self.path}: {self.examples} examples; left out: {left_out}"


@dataclass(frozen=True)
class TaskSpec:
    """A user task's optional `task.json`: prompt template, label set, gate-question wording."""

    name: str
    input_template: str | None = None
    labels: tuple[str, ...] | None = None
    question: str | None = None
    context: str | None = None


# Cache of task specs seen by the loader, so prompts for a user task use its template.
_TASK_SPECS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> None:
    _TASK_SPECS[spec.name] = spec


def get_task_spec(name: str) -> TaskSpec | None:
    return _TASK_SPECS.get(name)


def collapse(text: str) -> str:
    """Whitespace runs (newlines, tabs, double spaces) → one space; trimmed."""
    return " ".join(text.split())


# ------------------------------------------------------------------------------------------------
# public entry points


def load_examples(dataset: str, path: str | Path | None, split: str) -> list[Example]:
    """Load one split of a dataset; see the module docstring for the accepted files."""
    examples, report = load_examples_with_report(dataset, path, split)
    if report.skipped:
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    return examples


def load_examples_with_report(dataset: str, path: str | Path | None, split: str) -> tuple[list[Example], LoadReport]:
    dataset = dataset.strip()
    if not dataset:
        raise SparseFitError("dataset name is empty", field="dataset")
    if path is None and dataset != "sample-nli":
        raise SparseFitError(f"dataset '{dataset}' needs a data path (only 'sample-nli' ships with SparseFit)",
                             field="path")
    if path is None:
        path = SAMPLE_NLI_PATH
    path = Path(path)
    if not path.exists():
        raise SparseFitError(f"data path for '{dataset}' not found", path=str(path))
    loader = {"esnli": _load_esnli, "comve": _load_comve, "ecqa": _load_ecqa, "sbic": _load_sbic}.get(dataset)
    if loader is None:
        examples, report = _load_generic(dataset, path, split)
    else:
        examples, report = loader(path, split)
    if not examples:
        raise SparseFitError(f"no usable examples for '{dataset}' split '{split}' ({report.summary()})",
                             path=str(path))
    _check_unique_ids(examples, str(path))
    report.examples = len(examples)
    return examples, report


def label_options(dataset: str, examples: Sequence[Example] | None = None) -> list[str]:
    """The task's label set: fixed for e-SNLI/ComVE/SBIC/sample-nli, declared in task.json for user tasks
    that have one, otherwise the sorted distinct labels of `examples` (ECQA's answers vary per question)."""
    if dataset in FIXED_LABELS:
        return list(FIXED_LABELS[dataset])
    spec = get_task_spec(dataset)
    if spec is not None and spec.labels:
        return list(spec.labels)
    return sorted({example.label for example in examples or ()})


def data_hash(examples: Sequence[Example]) -> str:
    """sha256 of a canonical JSON of the examples (order matters: an episode is an ordered list)."""
    canonical = json.dumps([asdict(example) for example in examples], sort_keys=True, ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def dataset_stats(examples: Sequence[Example]) -> dict[str, Any]:
    """{"examples": n, "labels": {label: count}} plus explanation counts, for `sparsefit data stats`."""
    labels = Counter(example.label for example in examples)
    references = Counter(len(example.explanations) for example in examples)
    return {
        "examples": len(examples),
        "labels": dict(sorted(labels.items())),
        "references_per_example": {str(k): v for k, v in sorted(references.items())},
        "datasets": sorted({example.dataset for example in examples}),
        "splits": sorted({example.split for example in examples}),
    }


# ------------------------------------------------------------------------------------------------
# file helpers


def _read_text(path: Path) -> str:
    """UTF-8 (a BOM is allowed); a bad byte is reported with its line number."""
    path = Path(path)
    if path.is_dir():
        raise SparseFitError("this is a folder; give the path of a file", path=str(path))
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SparseFitError(f"cannot read the file ({err.strerror or err})", path=str(path)) from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise SparseFitError(f"not UTF-8 text ({err.reason} at byte {err.start}); re-save the file as UTF-8",
                             path=str(path), line=line) from err


def _read_lines(path: Path) -> list[str]:
    """Lines split on \n only (a trailing \r dropped): str.splitlines() also splits on U+2028, U+2029 and
    U+0085, which JSON writers leave unescaped inside strings. No trailing newline gives the same count."""
    lines = _read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _csv_rows(path: Path, *, header: bool) -> Iterator[tuple[int, list[str] | dict[str, str]]]:
    """(line number, row) for each CSV record; line = where the record starts."""
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    names: list[str] | None = None
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row or all(not cell.strip() for cell in row):
                continue
            if header and names is None:
                names = [name.strip() for name in row]
                repeated = sorted({name for name in names if names.count(name) > 1})
                if repeated:  # a dict of the row would keep the last one silently
                    raise SparseFitError(f"the header names column {repeated[0]!r} twice", path=str(path),
                                         line=line, field=repeated[0])
                continue
            if names is None:
                yield line, row
                continue
            if len(row) != len(names):
                raise SparseFitError(f"expected {len(names)} columns like the header, got {len(row)}",
                                     path=str(path), line=line)
            yield line, dict(zip(names, row))
    except csv.Error as err:
        raise SparseFitError(f"malformed CSV ({err})", path=str(path), line=reader.line_num) from err
    if header and names is None:
        raise SparseFitError("empty CSV file (expected a header row)", path=str(path))


def _csv_header(path: Path) -> list[str]:
    first = next(csv.reader(io.StringIO(_read_text(path), newline="")), [])
    return [name.strip() for name in first]


def _require_columns(path: Path, header: Sequence[str], required: Sequence[str]) -> None:
    for name in required:
        if name not in header:
            raise SparseFitError(f"missing column (header has {list(header)})", path=str(path), line=1,
                                 field=name)


def _check_unique_ids(examples: Sequence[Example], where: str) -> None:
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise SparseFitError(f"duplicate example id '{example.id}'", path=where, field="id")
        seen.add(example.id)


def _normalize_split(split: str, mapping: dict[str, str], dataset: str) -> str:
    key = split.strip().lower()
    if key not in mapping:
        raise SparseFitError(f"unknown split '{split}' for {dataset}; use one of {sorted(set(mapping))}",
                             field="split")
    return mapping[key]


# ------------------------------------------------------------------------------------------------
# e-SNLI

_ESNLI_SPLITS = {"train": "train", "dev": "dev", "validation": "dev", "val": "dev", "test": "test"}


def _load_esnli(path: Path, split: str) -> tuple[list[Example], LoadReport]:
    split = _normalize_split(split, _ESNLI_SPLITS, "esnli")
    report = LoadReport("esnli", split, str(path))
    if path.is_file():
        return _esnli_csv([path], split, report), report
    if (path / f"labels.{split}").exists():
        return _esnli_plain(path, split, report), report
    csv_files = sorted(path.glob(f"esnli_{split}.csv")) + sorted(path.glob(f"esnli_{split}_*.csv"))
    if csv_files:
        return _esnli_csv(csv_files, split, report), report
    raise SparseFitError(f"no e-SNLI '{split}' files: expected labels.{split}, s1.{split}, s2.{split}, "
                         f"preproc1_expl_1.{split} (plain-text release) or esnli_{split}.csv (CSV release)",
                         path=str(path))


def _esnli_label(raw: str, report: LoadReport, path: Path, line: int) -> str | None:
    label = raw.strip().lower()
    if label == "-":  # SNLI: annotators did not agree on a gold label
        report.skip("rows without a gold label ('-')")
        return None
    if label not in FIXED_LABELS["esnli"]:
        raise SparseFitError(f"unknown label '{raw}' (expected entailment, neutral or contradiction)",
                             path=str(path), line=line, field="gold_label")
    return label


def _esnli_plain(folder: Path, split: str, report: LoadReport) -> list[Example]:
    columns: dict[str, list[str]] = {}
    for name in ("s1", "s2", "labels", "preproc1_expl_1", "preproc1_expl_2", "preproc1_expl_3"):
        file = folder / f"{name}.{split}"
        if file.exists():
            columns[name] = _read_lines(file)
        elif name in ("s1", "s2", "preproc1_expl_1"):
            raise SparseFitError("missing e-SNLI file", path=str(file))
    size = len(columns["labels"])
    for name, lines in columns.items():
        if len(lines) != size:
            raise SparseFitError(f"has {len(lines)} lines but labels.{split} has {size}; the files must be "
                                 f"aligned line by line", path=str(folder / f"{name}.{split}"))
    examples = []
    expl_names = [n for n in ("preproc1_expl_1", "preproc1_expl_2", "preproc1_expl_3") if n in columns]
    for index in range(size):
        line = index + 1
        label = _esnli_label(columns["labels"][index], report, folder / f"labels.{split}", line)
        if label is None:
            continue
        premise, hypothesis = collapse(columns["s1"][index]), collapse(columns["s2"][index])
        for name, text in (("s1", premise), ("s2", hypothesis)):
            if not text:
                raise SparseFitError("empty sentence", path=str(folder / f"{name}.{split}"), line=line)
        explanations = tuple(e for e in (collapse(columns[n][index]).lower() for n in expl_names) if e)
        if not explanations:
            report.skip("rows without an explanation")
            continue
        examples.append(Example(f"esnli-{split}-{index:05d}", "esnli", split,
                                {"premise": premise, "hypothesis": hypothesis}, label, explanations))
    return examples


def _esnli_csv(files: Sequence[Path], split: str, report: LoadReport) -> list[Example]:
    examples = []
    for file in files:
        _require_columns(file, _csv_header(file), ["pairID", "gold_label", "Sentence1", "Sentence2", "Explanation_1"])
        for line, row in _csv_rows(file, header=True):
            assert isinstance(row, dict)
            label = _esnli_label(row["gold_label"], report, file, line)
            if label is None:
                continue
            pair_id = row["pairID"].strip()
            if not pair_id:
                raise SparseFitError("empty pairID", path=str(file), line=line, field="pairID")
            premise, hypothesis = collapse(row["Sentence1"]), collapse(row["Sentence2"])
            for name, text in (("Sentence1", premise), ("Sentence2", hypothesis)):
                if not text:
                    raise SparseFitError("empty sentence", path=str(file), line=line, field=name)
            explanations = tuple(e for e in (collapse(row.get(f"Explanation_{k}") or "").lower()
                                             for k in (1, 2, 3)) if e)
            if not explanations:
                report.skip("rows without an explanation")
                continue
            examples.append(Example(f"esnli-{split}-{pair_id}", "esnli", split,
                                    {"premise": premise, "hypothesis": hypothesis}, label, explanations))
    return examples


# ------------------------------------------------------------------------------------------------
# ComVE (SemEval-2020 Task 4)

_COMVE_SPLITS = {"train": "train", "training": "train", "dev": "dev", "validation": "dev", "val": "dev",
                 "test": "test"}
_COMVE_FILES = {  # split → (folder, sentences file, task-A answers, task-C references)
    "train": ("training data", "subtaskA_data_all.csv", "subtaskA_answers_all.csv", "subtaskC_answers_all.csv"),
    "dev": ("dev data", "subtaskA_dev_data.csv", "subtaskA_gold_answers.csv", "subtaskC_gold_answers.csv"),
    "test": ("test data", "subtaskA_test_data.csv", "subtaskA_gold_answers.csv", "subtaskC_gold_answers.csv"),
}


def _find_upstream_file(root: Path, folder: str, name: str) -> Path:
    """Find `name` under a folder called `folder` (upstream spells it "Training  Data" with two spaces)."""
    candidates = [p for p in root.rglob(name) if collapse(p.parent.name).lower() == folder]
    if not candidates and (root / name).exists() and collapse(root.name).lower() == folder:
        candidates = [root / name]
    if not candidates:
        raise SparseFitError(f"ComVE file '{name}' not found in a '{folder.title()}' folder below this path "
                             f"(SemEval-2020 Task 4 release layout)", path=str(root))
    return sorted(candidates)[0]


def _load_comve(path: Path, split: str) -> tuple[list[Example], LoadReport]:
    split = _normalize_split(split, _COMVE_SPLITS, "comve")
    report = LoadReport("comve", split, str(path))
    folder, data_name, answers_name, reasons_name = _COMVE_FILES[split]
    data_file = _find_upstream_file(path, folder, data_name)
    answers_file = _find_upstream_file(path, folder, answers_name)
    reasons_file = _find_upstream_file(path, folder, reasons_name)
    _require_columns(data_file, _csv_header(data_file), ["id", "sent0", "sent1"])
    answers = _comve_keyed(answers_file, 2, "label")
    reasons = _comve_keyed(reasons_file, 4, "reason")
    examples = []
    for line, row in _csv_rows(data_file, header=True):
        assert isinstance(row, dict)
        native_id = row["id"].strip()
        if native_id not in answers:
            raise SparseFitError(f"id '{native_id}' has no answer in {answers_file.name}", path=str(data_file),
                                 line=line, field="id")
        if native_id not in reasons:
            raise SparseFitError(f"id '{native_id}' has no explanations in {reasons_file.name}",
                                 path=str(data_file), line=line, field="id")
        answer, answer_line = answers[native_id]
        if answer[0].strip() not in ("0", "1"):
            raise SparseFitError(f"label must be 0 or 1 (index of the nonsensical sentence), got '{answer[0]}'",
                                 path=str(answers_file), line=answer_line, field="label")
        sentences = {"sent0": collapse(row["sent0"]), "sent1": collapse(row["sent1"])}
        for name, text in sentences.items():
            if not text:
                raise SparseFitError("empty sentence", path=str(data_file), line=line, field=name)
        explanations = tuple(e for e in (collapse(r).lower() for r in reasons[native_id][0]) if e)
        if not explanations:
            raise SparseFitError("all reference explanations are empty", path=str(reasons_file),
                                 line=reasons[native_id][1], field="reason1")
        label = "choice1" if answer[0].strip() == "0" else "choice2"
        examples.append(Example(f"comve-{split}-{native_id}", "comve", split, sentences, label, explanations))
    return examples, report


def _comve_keyed(path: Path, width: int, what: str) -> dict[str, tuple[list[str], int]]:
    """Header-less `id,value…` CSV → {id: (values, line)}."""
    keyed: dict[str, tuple[list[str], int]] = {}
    for line, row in _csv_rows(path, header=False):
        assert isinstance(row, list)
        if len(row) != width:
            raise SparseFitError(f"expected {width} columns (id and {what}s), got {len(row)}", path=str(path),
                                 line=line)
        key = row[0].strip()
        if key in keyed:
            raise SparseFitError(f"duplicate id '{key}'", path=str(path), line=line, field="id")
        keyed[key] = (row[1:], line)
    return keyed


# ------------------------------------------------------------------------------------------------
# ECQA (ecqa.jsonl joined with CommonsenseQA)

_ECQA_SPLITS = {"train": "train", "dev": "val", "validation": "val", "val": "val", "test": "test"}
_CQA_SPLIT_FILES = {"train": "train_rand_split.jsonl", "val": "dev_rand_split.jsonl"}


MAX_JSON_DEPTH = 32  # no record needs more; far deeper input is an attack or a bug (and overflows the parser)


class _NonFinite:
    """What `NaN`/`Infinity` parse to, so the walk below can name the field that holds one."""

    def __init__(self, text: str):
        self.text = text


def jsonl_objects(path: Path, *, max_string: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; bad encoding or JSON names the file and line.

    Strict JSON: NaN/Infinity (which Python's json accepts but no other JSON reader does), lone UTF-16
    surrogates (which cannot be stored as UTF-8), nesting deeper than MAX_JSON_DEPTH and, when given,
    strings longer than `max_string` characters are refused with the file, line and field."""
    for line, text in enumerate(_read_lines(path), start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text, parse_constant=_NonFinite)
        except json.JSONDecodeError as err:
            raise SparseFitError(f"invalid JSON ({err.msg} at column {err.colno})", path=str(path), line=line) from err
        except RecursionError as err:
            raise SparseFitError(f"JSON nested deeper than {MAX_JSON_DEPTH} levels", path=str(path),
                                 line=line) from err
        if not isinstance(obj, dict):
            raise SparseFitError("expected a JSON object per line", path=str(path), line=line)
        problem = _json_problem(obj, max_string)
        if problem:
            raise SparseFitError(problem[1], path=str(path), line=line, field=problem[0] or None)
        yield line, obj


def _json_problem(obj: Any, max_string: int | None) -> tuple[str, str] | None:
    """(field path, message) of the first value a strict JSON reader or the UTF-8 store would refuse."""
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return where.split("[")[0].split(".")[0], f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, _NonFinite):
            return where, f"{value.text} is not a JSON number; write null for a missing value"
        if isinstance(value, float) and not math.isfinite(value):  # 1e400 parses as infinity
            return where, "number too large for a 64-bit float; write null for a missing value"
        if isinstance(value, str):
            if max_string is not None and len(value) > max_string:
                return where, (f"text of {len(value)} characters is longer than the limit of {max_string} "
                               "(raise it with --max-field-chars if this is intended)")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return where, "contains an invalid \\u escape (a lone UTF-16 surrogate such as \\ud800)"
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{where}.{key}" if where else str(key)
                stack.append((key, name, depth + 1))
                stack.append((item, name, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
    return None


def ecqa_explanation(positives: Sequence[str]) -> str:
    """FEB: positive properties joined with ". " plus a final "."; ".." collapsed; lower-cased."""
    text = ". ".join(collapse(p) for p in positives if collapse(p)) + "."
    return text.replace("..", ".").lower()


def _find_cqa_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / "cqa" / name):
        if candidate.exists():
            return candidate
    return None


def _load_ecqa(path: Path, split: str) -> tuple[list[Example], LoadReport]:
    split = _normalize_split(split, _ECQA_SPLITS, "ecqa")
    folder = path.parent if path.is_file() else path
    ecqa_file = path if path.is_file() else folder / "ecqa.jsonl"
    report = LoadReport("ecqa", split, str(folder))
    if not ecqa_file.exists():
        raise SparseFitError("ECQA annotations 'ecqa.jsonl' not found (from the ECQA-Dataset release)",
                             path=str(ecqa_file))
    annotations = _ecqa_annotations(ecqa_file, report)
    split_ids_file = folder / "author_split" / f"{split}_ids.txt"
    if split_ids_file.exists():
        wanted = [i.strip() for i in _read_lines(split_ids_file) if i.strip()]
        cqa_files = [f for f in (_find_cqa_file(folder, n) for n in _CQA_SPLIT_FILES.values()) if f]
    elif split in _CQA_SPLIT_FILES:
        cqa_files = [f for f in [_find_cqa_file(folder, _CQA_SPLIT_FILES[split])] if f]
        wanted = None
    else:
        raise SparseFitError(f"ECQA split '{split}' needs author_split/{split}_ids.txt (CommonsenseQA's own "
                             f"test split has no answers)", path=str(folder))
    if not cqa_files:
        raise SparseFitError("CommonsenseQA files not found: put train_rand_split.jsonl / dev_rand_split.jsonl "
                             "in this folder or in its cqa/ subfolder", path=str(folder))
    questions: dict[str, dict[str, Any]] = {}
    for cqa_file in cqa_files:
        for line, obj in jsonl_objects(cqa_file):
            question = _cqa_question(obj, cqa_file, line)
            questions.setdefault(question["id"], question)
    order = wanted if wanted is not None else list(questions)
    examples = []
    for native_id in order:
        if native_id not in questions:
            report.skip("split ids missing from CommonsenseQA files")
            continue
        if native_id not in annotations:
            report.skip("questions without ECQA positives")
            continue
        question = questions[native_id]
        examples.append(Example(f"ecqa-{split}-{native_id}", "ecqa", split, question["inputs"],
                                question["answer"], (annotations[native_id],)))
    return examples, report


def _ecqa_annotations(path: Path, report: LoadReport) -> dict[str, str]:
    annotations: dict[str, str] = {}
    for line, obj in jsonl_objects(path):
        native_id = obj.get("id")
        if not isinstance(native_id, str) or not native_id.strip():
            raise SparseFitError("missing or non-string id", path=str(path), line=line, field="id")
        positives = obj.get("positives")
        if positives is None:
            report.skip("ECQA lines without positives")
            continue
        if not isinstance(positives, list) or not all(isinstance(p, str) for p in positives):
            raise SparseFitError("expected a list of strings", path=str(path), line=line, field="positives")
        if not any(p.strip() for p in positives):
            report.skip("ECQA lines with empty positives")
            continue
        if native_id in annotations:  # the release annotates a few questions twice; FEB keeps the first
            report.skip("duplicate ECQA annotations (first kept)")
            continue
        annotations[native_id] = ecqa_explanation(positives)
    return annotations


def _cqa_question(obj: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    where = {"path": str(path), "line": line}
    native_id, answer_key, question = obj.get("id"), obj.get("answerKey"), obj.get("question")
    if not isinstance(native_id, str):
        raise SparseFitError("missing or non-string id", field="id", **where)
    if not isinstance(question, dict) or not isinstance(question.get("stem"), str):
        raise SparseFitError("expected an object with a 'stem' string", field="question", **where)
    choices = question.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SparseFitError("expected a list of {label, text} objects", field="question.choices", **where)
    if not collapse(question["stem"]):
        raise SparseFitError("empty question", field="question.stem", **where)
    by_label: dict[str, str] = {}
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("label"), str) or not isinstance(choice.get("text"), str):
            raise SparseFitError("each choice needs string 'label' and 'text'", field="question.choices", **where)
        label, text = choice["label"].strip(), collapse(choice["text"])
        if not text or label in by_label:
            raise SparseFitError(f"choice {label!r} is " + ("empty" if not text else "given twice"),
                                 field="question.choices", **where)
        by_label[label] = text
    if not isinstance(answer_key, str) or answer_key.strip() not in by_label:
        raise SparseFitError(f"answerKey {answer_key!r} is not one of the choice labels {sorted(by_label)}",
                             field="answerKey", **where)
    inputs = {"question": collapse(question["stem"])}
    inputs.update((label, by_label[label]) for label in sorted(by_label))
    return {"id": native_id.strip(), "inputs": inputs, "answer": by_label[answer_key.strip()]}


# ------------------------------------------------------------------------------------------------
# SBIC (Social Bias Inference Corpus v2)

_SBIC_SPLITS = {"train": "trn", "trn": "trn", "dev": "dev", "validation": "dev", "val": "dev", "test": "tst",
                "tst": "tst"}
_PLURAL_HINTS = ("women", "men", "folks", "people", "jews", "muslims", "blacks", "gays", "immigrants")
_AUXILIARIES = {"are", "is", "aren't", "isn't", "can", "can't", "cannot", "could", "couldn't", "should",
                "shouldn't", "will", "won't", "would", "wouldn't", "must", "may", "might", "do", "don't",
                "have", "were", "was", "deserve", "need", "get", "like", "love", "hate", "want", "belong",
                "only", "always", "never", "all"}


def sbic_statement_to_explanation(statement: str, target_group: str) -> str:
    """Rewrite an SBIC implied statement ("women can't drive", "are lazy") as a sentence.

    FEB uses spaCy POS tags for this; we use a lexical approximation of its rules so no tagger is needed:
    a statement that is already about "this post" stays; "implying …"/"calling …" → "this post is …";
    one that starts with a verb/auxiliary and so lacks its subject gets the target group as subject
    (with "is" → "are" for plural groups); anything else → "this post implies that …".
    """
    statement, group = collapse(statement), collapse(target_group)
    first = statement.split(" ", 1)[0].lower() if statement else ""
    if statement.lower().startswith("this post"):
        return statement
    if first in ("implying", "calling"):
        return f"this post is {statement}"
    if first in _AUXILIARIES and group:
        plural = "," in group or any(hint in group.lower() for hint in _PLURAL_HINTS)
        if plural and first == "is":
            statement = "are" + statement[2:]
        return f"this post implies that {group} {statement}"
    return f"this post implies that {statement}"


def _sbic_number(raw: str, path: Path, line: int, name: str) -> float:
    if not raw.strip():
        return 0.0  # FEB (pandas sum over NaN) counts a blank answer as 0 in the average
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also NaN, which would label the post offensive (NaN < 0.5 is false)
        raise SparseFitError(f"expected a number between 0 and 1, got '{raw}'", path=str(path), line=line,
                             field=name)
    return value


def _load_sbic(path: Path, split: str) -> tuple[list[Example], LoadReport]:
    split = _normalize_split(split, _SBIC_SPLITS, "sbic")
    file = path if path.is_file() else path / f"SBIC.v2.{split}.csv"
    report = LoadReport("sbic", split, str(file))
    if not file.exists():
        raise SparseFitError(f"SBIC file not found (expected SBIC.v2.{split}.csv from the SBIC.v2 release)",
                             path=str(file))
    _require_columns(file, _csv_header(file), ["post", "offensiveYN", "whoTarget", "targetMinority",
                                               "targetStereotype"])
    posts: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in _csv_rows(file, header=True):
        assert isinstance(row, dict)
        post = collapse(row["post"])
        if not post:
            raise SparseFitError("empty post", path=str(file), line=line, field="post")
        posts.setdefault(post, []).append((line, row))
    examples: list[Example] = []
    for index, (post, rows) in enumerate(posts.items()):
        label, explanations = _sbic_aggregate(rows, file, report)
        if not explanations:
            continue
        base_id = f"sbic-{split}-{index:05d}"
        if split == "trn":  # FEB: each implied statement is its own training instance
            for k, explanation in enumerate(explanations, start=1):
                suffix = f"-s{k}" if len(explanations) > 1 else ""
                examples.append(Example(base_id + suffix, "sbic", split, {"post": post}, label, (explanation,)))
        else:
            examples.append(Example(base_id, "sbic", split, {"post": post}, label, explanations))
    return examples, report


def _sbic_aggregate(rows: list[tuple[int, dict[str, str]]], file: Path, report: LoadReport) -> tuple[str, tuple[str, ...]]:
    offensive = [_sbic_number(row["offensiveYN"], file, line, "offensiveYN") for line, row in rows]
    targets_group = [_sbic_number(row["whoTarget"], file, line, "whoTarget") for line, row in rows]
    if sum(offensive) / len(offensive) < 0.5:
        return "not_offensive", (SBIC_NOT_OFFENSIVE,)
    if sum(targets_group) / len(targets_group) < 0.5:
        return "offensive", (SBIC_PERSONAL_ATTACK,)
    statements: list[str] = []
    for _, row in rows:
        if collapse(row["targetStereotype"]):
            sentence = sbic_statement_to_explanation(row["targetStereotype"], row["targetMinority"]).lower()
            if sentence not in statements:
                statements.append(sentence)
    if not statements:
        report.skip("offensive group-targeted posts without an implied statement")
    return "offensive", tuple(statements)


# ------------------------------------------------------------------------------------------------
# generic user task (JSONL / CSV) and the shipped sample

_TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


TASK_JSON_KEYS = ("input_template", "labels", "question", "context")


def load_task_spec(name: str, folder: Path) -> TaskSpec:
    """Read `folder/task.json` if present (see module docstring); no file → defaults."""
    file = folder / "task.json"
    if not file.exists():
        return TaskSpec(name)
    try:
        obj = json.loads(_read_text(file))
    except json.JSONDecodeError as err:
        raise SparseFitError(f"invalid JSON ({err.msg})", path=str(file), line=err.lineno) from err
    except RecursionError as err:
        raise SparseFitError("JSON nested too deeply", path=str(file)) from err
    if not isinstance(obj, dict):
        raise SparseFitError("expected a JSON object", path=str(file))
    for key in obj:  # a misspelt key would silently switch its check off (e.g. "label" for "labels")
        if key not in TASK_JSON_KEYS:
            close = difflib.get_close_matches(key, TASK_JSON_KEYS, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(TASK_JSON_KEYS)}"
            raise SparseFitError(f"unknown key; {hint}", path=str(file), field=key)
    for key in ("input_template", "question", "context"):
        if key in obj and not isinstance(obj[key], str):
            raise SparseFitError("expected a string", path=str(file), field=key)
    labels = obj.get("labels")
    if labels is not None and (not isinstance(labels, list) or not labels
                               or not all(isinstance(l, str) and l.strip() for l in labels)):
        raise SparseFitError("expected a non-empty list of label strings", path=str(file), field="labels")
    return TaskSpec(name, obj.get("input_template"), tuple(collapse(l) for l in labels) if labels else None,
                    obj.get("question"), obj.get("context"))


def _generic_file(path: Path, split: str) -> Path:
    if path.is_file():
        return path
    for suffix in (".jsonl", ".csv"):
        if (path / f"{split}{suffix}").exists():
            return path / f"{split}{suffix}"
    raise SparseFitError(f"no '{split}.jsonl' or '{split}.csv' in this folder", path=str(path))


def _load_generic(dataset: str, path: Path, split: str) -> tuple[list[Example], LoadReport]:
    if not _TASK_NAME.match(dataset):
        raise SparseFitError(f"task name '{dataset}' must be letters, digits, '-', '_' or '.'", field="dataset")
    file = _generic_file(path, split)
    spec = load_task_spec(dataset, file.parent)
    report = LoadReport(dataset, split, str(file))
    if file.suffix.lower() == ".csv":
        rows = list(_generic_csv_rows(file))
    elif file.suffix.lower() in (".jsonl", ".json"):
        rows = list(_generic_jsonl_rows(file))
    else:
        raise SparseFitError("user task files must be .jsonl or .csv", path=str(file))
    allowed = FIXED_LABELS.get(dataset, spec.labels)
    if allowed is None:
        _check_label_spellings(rows, file)
    examples = []
    for line, native_id, inputs, label, explanations in rows:
        if allowed is not None and label not in allowed:
            source = "task.json declares" if dataset not in FIXED_LABELS else f"{dataset} uses"
            raise SparseFitError(f"unknown label '{label}'; {source} {list(allowed)}",
                                 path=str(file), line=line, field="label")
        if spec.input_template is not None:
            _check_template(spec, inputs, file, line)
        example_id = native_id or f"{dataset}-{split}-{line:05d}"
        examples.append(Example(example_id, dataset, split, inputs, label, explanations))
    register_task(spec)
    return examples, report


def _check_label_spellings(rows: Sequence[tuple], file: Path) -> None:
    """Without task.json labels any label is accepted, but two spellings of one label ("pos", "Pos ") would
    silently become two classes."""
    first: dict[str, tuple[str, int]] = {}
    for line, _, _, label, _ in rows:
        key = collapse(label).lower()
        if key in first and first[key][0] != label:
            raise SparseFitError(f"label {label!r} differs from {first[key][0]!r} (line {first[key][1]}) only in "
                                 "case or spaces; write one spelling, or list the labels in task.json",
                                 path=str(file), line=line, field="label")
        first.setdefault(key, (label, line))


def _check_template(spec: TaskSpec, inputs: dict[str, str], file: Path, line: int) -> None:
    try:
        spec.input_template.format(**inputs)  # type: ignore[union-attr]
    except KeyError as err:
        raise SparseFitError(f"task.json input_template uses {{{err.args[0]}}} but this row's inputs are "
                             f"{sorted(inputs)}", path=str(file), line=line, field="inputs") from err
    except (ValueError, IndexError, AttributeError, TypeError) as err:  # also {a.foo} and {a[k]} on a string
        raise SparseFitError(f"task.json input_template is not a valid format string ({err})",
                             path=str(file.parent / "task.json"), field="input_template") from err


def _clean_explanations(values: Sequence[Any], file: Path, line: int, name: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in values):
        raise SparseFitError("explanations must be strings", path=str(file), line=line, field=name)
    explanations = tuple(collapse(v) for v in values if collapse(v))
    if not explanations:
        raise SparseFitError("needs at least one non-empty explanation", path=str(file), line=line, field=name)
    return explanations


def _generic_jsonl_rows(file: Path) -> Iterator[tuple[int, str | None, dict[str, str], str, tuple[str, ...]]]:
    for line, obj in jsonl_objects(file):
        native_id = obj.get("id")
        if native_id is not None and not isinstance(native_id, (str, int)) or isinstance(native_id, bool):
            raise SparseFitError("id must be a string or an integer", path=str(file), line=line, field="id")
        inputs = obj.get("inputs")
        if not isinstance(inputs, dict) or not inputs:
            raise SparseFitError("expected a non-empty object of named input texts", path=str(file), line=line,
                                 field="inputs")
        for key, value in inputs.items():
            if not isinstance(value, str) or not collapse(value):
                raise SparseFitError("input values must be non-empty strings", path=str(file), line=line,
                                     field=f"inputs.{key}")
        label = obj.get("label")
        if not isinstance(label, str) or not collapse(label):
            raise SparseFitError("expected a non-empty string", path=str(file), line=line, field="label")
        name = "explanations" if "explanations" in obj else "explanation"
        raw = obj.get(name)
        if raw is None:
            raise SparseFitError("missing (give 'explanation' or 'explanations')", path=str(file), line=line,
                                 field="explanation")
        values = raw if isinstance(raw, list) else [raw]
        yield (line, str(native_id).strip() if native_id is not None else None,
               {k: collapse(v) for k, v in inputs.items()}, collapse(label),
               _clean_explanations(values, file, line, name))


def _generic_csv_rows(file: Path) -> Iterator[tuple[int, str | None, dict[str, str], str, tuple[str, ...]]]:
    header = _csv_header(file)
    input_columns = [c for c in header if c.startswith("input.") and len(c) > len("input.")]
    explanation_columns = [c for c in header if c == "explanation" or re.fullmatch(r"explanation_\d+", c)]
    explanation_columns.sort(key=lambda c: 0 if c == "explanation" else int(c.split("_")[1]))
    if not input_columns:
        raise SparseFitError(f"no input columns: name them input.<field>, e.g. input.premise (header has {header})",
                             path=str(file), line=1, field="input.<field>")
    _require_columns(file, header, ["label"])
    if not explanation_columns:
        raise SparseFitError(f"missing column: 'explanation' or 'explanation_1' … (header has {header})",
                             path=str(file), line=1, field="explanation")
    for line, row in _csv_rows(file, header=True):
        assert isinstance(row, dict)
        inputs = {c[len("input."):]: collapse(row[c]) for c in input_columns}
        for key, value in inputs.items():
            if not value:
                raise SparseFitError("empty input", path=str(file), line=line, field=f"input.{key}")
        label = collapse(row["label"])
        if not label:
            raise SparseFitError("empty label", path=str(file), line=line, field="label")
        explanations = _clean_explanations([row[c] for c in explanation_columns], file, line, explanation_columns[0])
        native_id = collapse(row["id"]) if "id" in row and collapse(row["id"]) else None
        yield line, native_id, inputs, label, explanations
