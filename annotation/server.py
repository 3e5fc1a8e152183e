"""Serving the app: Gradio for the pages, plus a small JSON API for the three annotator calls.

    POST /api/annotator/start   {"token"} or {"study", "key", "prolific_pid", "prolific_study_id", "session_id"}
    POST /api/annotator/gate    {"token", "assignment_id", "answer"}
    POST /api/annotator/submit  {"token", "assignment_id", "rating_a", "rating_b", "shortcomings_a": [...],
                                 "shortcomings_b": [...], "comment"}

Each returns the same view dict as the gradio_client endpoints (`annotator_start`, ...), which keep
working. The JSON routes skip Gradio's queue and event machinery (about 2 ms of server CPU per call instead
of 10-20 ms), so they are what scripts, load tests and an external front end should use. Bodies are limited
to 64 KB and must be JSON objects of strings (lists of strings for shortcomings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handler's annotations here
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from annotation.flow import AnnotatorFlow, error_view
from annotation.store import Store

MAX_BODY_BYTES = 64 * 1024
MAX_UPLOAD = "50mb"  # Gradio uploads (predictions and preset files in the Admin tab)
STRING_FIELDS = {
    "start": ("token", "study", "key", "prolific_pid", "prolific_study_id", "session_id"),
    "gate": ("token", "assignment_id", "answer"),
    "submit": ("token", "assignment_id", "rating_a", "rating_b", "comment"),
}
LIST_FIELDS = {"submit": ("shortcomings_a", "shortcomings_b")}


def json_routes(db_path: str | Path) -> list[APIRoute]:
    """The /api/annotator/* routes, for a FastAPI app (given to Gradio's app before it starts serving, so
    there is no moment at which the port answers without them)."""
    flow = AnnotatorFlow(Store(db_path))
    calls = {
        "start": lambda a: flow.start(a["token"], a["study"], a["prolific_pid"], a["prolific_study_id"],
                                      a["session_id"], key=a["key"]),
        "gate": lambda a: flow.answer_gate(a["token"], a["assignment_id"], a["answer"]),
        "submit": lambda a: flow.submit(a["token"], a["assignment_id"], a["rating_a"], a["rating_b"],
                                        a["shortcomings_a"], a["shortcomings_b"], a["comment"]),
    }

    def route(name: str):
        async def handle(request: Request) -> JSONResponse:
            declared = request.headers.get("content-length", "0")
            if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:  # refuse before reading it
                return JSONResponse(error_view("request too large"), status_code=413)
            body = await read_at_most(request, MAX_BODY_BYTES)  # a chunked body has no length to check up front
            if body is None:
                return JSONResponse(error_view("request too large"), status_code=413)
            args, problem = parse_body(name, body)
            if problem:
                return JSONResponse(error_view(problem), status_code=400)
            # the store blocks (SQLite, fsync): run it on the thread pool, one connection per thread
            return JSONResponse(await run_in_threadpool(calls[name], args))
        return handle

    return [APIRoute(f"/api/annotator/{name}", route(name), methods=["POST"], include_in_schema=False)
            for name in calls]


async def read_at_most(request: Request, limit: int) -> bytes | None:
    """The body, or None as soon as it passes `limit` bytes (never held whole in memory)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(name: str, body: bytes) -> tuple[dict[str, Any], str]:
    """The call's arguments from a JSON body, or a message saying what is wrong with it."""
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):  # bad JSON or UTF-8, and integers of over 4,300 digits
        return {}, "the request body is not valid JSON"
    if not isinstance(data, dict):
        return {}, "the request body must be a JSON object"
    args: dict[str, Any] = {}
    for field in STRING_FIELDS[name]:
        value = data.get(field, "")
        if isinstance(value, int) and not isinstance(value, bool) and field == "assignment_id":
            value = str(value)
        if not isinstance(value, str):
            return {}, f"field '{field}' must be a string"
        if not _is_text(value):
            return {}, f"field '{field}' is not valid text"
        args[field] = value
    for field in LIST_FIELDS.get(name, ()):
        value = data.get(field) or []
        if not isinstance(value, list) or not all(isinstance(v, str) and _is_text(v) for v in value):
            return {}, f"field '{field}' must be a list of strings"
        args[field] = value
    return args, ""


def _is_text(value: str) -> bool:
    """False for a lone UTF-16 surrogate ("\\ud800" in JSON), which SQLite cannot store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def serve(demo, db_path: str | Path, *, host: str = "127.0.0.1", port: int = 7860,
          max_file_size: str = MAX_UPLOAD, **launch_options: Any) -> str:
    """Launch the Gradio app with the JSON routes, without blocking; returns the local URL."""
    _, local_url, _ = demo.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                                  max_file_size=max_file_size, app_kwargs={"routes": json_routes(db_path)},
                                  **launch_options)
    return local_url
