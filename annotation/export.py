"""Export a study as a tidy long table: one row per item x annotator x question (= one rating).

Each row is joined with the item's key record fields, the explanation text that was shown, and the
automatic metrics from the predictions record (`metric_<name>` columns). The QC verdict under the
given settings is a column (`qc_exclusion`, empty when the rating is kept), so nothing is dropped.

The protocol snapshot travels with the table:
  csv     sidecar `<out>.protocol.json`
  jsonl   sidecar `<out>.protocol.json` (every line of the JSONL file is a row, so pandas reads it as is)
  parquet schema metadata key `sparsefit.protocol` (and the same sidecar, for tools that drop metadata)
The sidecar is {"study": {...}, "protocol": {...}, "columns": [...], "exported_at": ...}.
Annotator tokens are never exported (only annotator ids and their source). In CSV, an annotator's comment or
gate answer that starts with = + - @ (a spreadsheet formula) gets a leading ' ; import-ratings removes it.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from annotation.analysis import QCSettings, Scale, apply_qc, connect_readonly, load_study
from annotation.errors import AnnotationError
from annotation.importer import formula_safe

FORMATS = ("csv", "jsonl", "parquet")
PROTOCOL_METADATA_KEY = b"sparsefit.protocol"
BASE_COLUMNS = [
    "study_id", "item_id", "record_id", "item_position", "dataset", "model", "method", "gold_label",
    "pred_label", "correct", "annotator_id", "annotator_source", "question", "shown_position", "explanation",
    "rating", "rating_label", "score", "binary", "shortcomings", "comment", "rating_seconds", "item_seconds",
    "gate_answer", "gate_correct", "origin", "created_at", "qc_exclusion",
]

ANNOTATOR_TEXT = ("comment", "gate_answer")  # typed by annotators: quoted in CSV when a spreadsheet would run them


def sidecar_path(out_path: str | Path) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".protocol.json")


def tidy_table(db_path: str | Path, study_id: str, settings: QCSettings | None = None) -> tuple[pd.DataFrame, dict]:
    """The long table and the metadata (study, protocol) that goes with it."""
    data = load_study(db_path, study_id, full=True)
    scale = Scale.from_protocol(data.protocol)
    ratings, _ = apply_qc(data, scale, settings or QCSettings())
    with connect_readonly(db_path) as conn:
        sources = dict(conn.execute("SELECT id, source FROM annotators WHERE study_id = ?", (study_id,)).fetchall())
    table = ratings.merge(data.items, on="item_id", how="left")
    table["study_id"] = study_id
    table["item_position"] = table["position"]
    table["annotator_source"] = table["annotator_id"].map(sources)
    table["explanation"] = table["pred_explanation"].where(table["question"] == "model", table["gold_explanation"])
    table["rating_label"] = table["rating"].map(scale.labels)
    table["shortcomings"] = table["shortcomings_json"].map(_join_list)
    metric_columns = [f"metric_{name}" for name in data.metric_names]
    table = table[BASE_COLUMNS + metric_columns].sort_values(["item_position", "item_id", "annotator_id", "question"],
                                                              kind="stable").reset_index(drop=True)
    table["correct"] = table["correct"].astype("boolean")
    for column in ("gate_correct", "shown_position", "item_position", "binary"):
        table[column] = pd.to_numeric(table[column], errors="coerce").astype("Int64")
    meta = {"study": {key: data.study.get(key) for key in ("id", "name", "preset", "created_at", "status",
                                                           "predictions_path", "predictions_sha256")},
            "protocol": data.protocol, "columns": list(table.columns),
            "qc_settings": (settings or QCSettings()).__dict__,
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return table, meta


def _join_list(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return ";".join(str(v) for v in value) if isinstance(value, list) else str(value)


def export_study(db_path: str | Path, study_id: str, fmt: str, out_path: str | Path,
                 settings: QCSettings | None = None) -> Path:
    """Write the tidy table as csv, jsonl or parquet (atomically) and return the output path."""
    fmt = fmt.lower().lstrip(".")
    if fmt not in FORMATS:
        raise AnnotationError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}", field="format")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise AnnotationError("is a directory; give a file name for the export (check --out)", path=str(out_path))
    table, meta = tidy_table(db_path, study_id, settings)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    if fmt == "csv":
        table.assign(**{column: table[column].map(formula_safe) for column in ANNOTATOR_TEXT}).to_csv(tmp, index=False)
    elif fmt == "jsonl":
        table.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        _write_parquet(table, meta, tmp)
    sidecar = sidecar_path(out_path)
    sidecar_tmp = sidecar.with_name(sidecar.name + ".tmp")
    sidecar_tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    os.replace(tmp, out_path)
    os.replace(sidecar_tmp, sidecar)
    return out_path


def _write_parquet(table: pd.DataFrame, meta: dict, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    metadata = dict(arrow.schema.metadata or {})
    metadata[PROTOCOL_METADATA_KEY] = json.dumps(meta, ensure_ascii=False, default=str).encode("utf-8")
    pq.write_table(arrow.replace_schema_metadata(metadata), path)


def read_parquet_protocol(path: str | Path) -> dict:
    """The metadata (study, protocol, columns) stored in an exported Parquet file."""
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    if PROTOCOL_METADATA_KEY not in metadata:
        raise AnnotationError("not a SparseFit study export (no protocol metadata)", path=str(path))
    return json.loads(metadata[PROTOCOL_METADATA_KEY])
