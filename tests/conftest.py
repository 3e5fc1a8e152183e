"""Shared test setup: artifacts go to a temporary models folder, never into the repository's models/."""

import os
import socket
import tempfile
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Set before any sparsefit import, so every test (and subprocess) writes tiny models to a fresh temp folder
# of this session (a stale cache could hide a change to how tiny models are built).
_MODELS = Path(os.environ.get("SPARSEFIT_TEST_MODELS_DIR") or tempfile.mkdtemp(prefix="sparsefit-test-models-"))
os.environ["SPARSEFIT_MODELS_DIR"] = str(_MODELS)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"shared dev data not found at {SHARED_DATA}")
    return SHARED_DATA


def free_port() -> int:
    """A free localhost port for launching an app under test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
