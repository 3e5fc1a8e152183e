"""Where the tool writes its artifacts. Torch-free, so the annotation app can use it at start-up."""

from __future__ import annotations

import os
from pathlib import Path

QUICKSTART_RUN = "quickstart"


def models_dir() -> Path:
    """$SPARSEFIT_MODELS_DIR, else `models/` at the repository root."""
    env = os.environ.get("SPARSEFIT_MODELS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "models"


def quickstart_dir() -> Path:
    return models_dir() / QUICKSTART_RUN


def quickstart_predictions_path() -> Path:
    return quickstart_dir() / "predictions.jsonl"


def list_checkpoints(root: str | Path | None = None) -> list[str]:
    """Run folders (a manifest and a delta) under `root` (default models/), newest first."""
    root = Path(root) if root else models_dir()
    if not root.is_dir():
        return []
    runs = [p.parent for p in root.glob("**/delta.safetensors") if (p.parent / "manifest.json").exists()]
    return [str(p) for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]
