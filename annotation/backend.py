"""The one door from the annotation side into the backend: only torch-free pieces pass through here.

The annotation app must start without torch (seconds, not a minute), so every `sparsefit` name it needs
comes from this module, and this module imports nothing that imports torch. The demo model and the
quickstart build, which do need torch, run in worker processes (annotation/demo_worker.py).
"""

from __future__ import annotations

from sparsefit.data import jsonl_objects  # noqa: F401 (strict JSONL reading; pure Python)
from sparsefit.errors import SparseFitError, with_location  # noqa: F401
from sparsefit.inference import INPUT_FIELDS  # noqa: F401 (a dict; the module imports torch lazily)
from sparsefit.paths import list_checkpoints, models_dir, quickstart_predictions_path  # noqa: F401
from sparsefit.predictions import (DEFAULT_MAX_FIELD_CHARS, PredictionRecord, read_predictions,  # noqa: F401
                                   write_predictions)
from sparsefit.prompts import gate_question  # noqa: F401 (pure Python)
