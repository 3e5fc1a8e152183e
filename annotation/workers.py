"""Torch work in child processes, so the annotation server never imports torch or holds a model.

`DemoWorker` owns the demo's models in one spawned process: the server sends "load"/"predict" requests
over a pipe and relays progress. Requests are served one at a time, and `RateLimiter` bounds how often a
client may ask (the demo is open to anyone who can reach the app). `QuickstartBuild` runs the quickstart
build in a child process while the app is already serving, and keeps a status line for the browser.
"""

from __future__ import annotations

import atexit
import multiprocessing
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from annotation.errors import AnnotationError

Progress = Callable[[float, str], None]


class RateLimiter:
    """At most `calls` per `seconds` per client key (sliding window); thread-safe."""

    def __init__(self, calls: int, seconds: float):
        self.calls, self.seconds = calls, seconds
        self._seen: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            window = self._seen[key]
            while window and now - window[0] > self.seconds:
                window.popleft()
            if len(window) >= self.calls:
                return False
            window.append(now)
            if len(self._seen) > 10_000:  # forget idle clients so the table stays small
                for idle in [k for k, w in self._seen.items() if not w or now - w[-1] > self.seconds]:
                    del self._seen[idle]
            return True


class DemoWorker:
    """The demo's model process: started on first use, restarted if it died, stopped at exit."""

    def __init__(self, per_client_per_minute: int = 20, busy_wait_s: float = 120.0, *, device: str = "auto",
                 dtype: str = "float32"):
        self.placement = {"device": device, "dtype": dtype}  # checked by the backend when a model loads
        self.limiter = RateLimiter(per_client_per_minute, 60.0)
        self.busy_wait_s = busy_wait_s
        self._lock = threading.Lock()  # one request at a time: one model process, one CPU budget
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn = None
        atexit.register(self.close)

    def load(self, model: str, client: str, progress: Progress | None = None) -> None:
        self._call(client, progress, "load", model=model)

    def predict(self, model: str, task: str, inputs: dict[str, str], client: str,
                progress: Progress | None = None) -> dict[str, str]:
        return self._call(client, progress, "predict", model=model, task=task, inputs=inputs)

    def _call(self, client: str, progress: Progress | None, op: str, **payload: Any) -> Any:
        if not self.limiter.allow(client):
            raise AnnotationError("too many demo requests from your address; wait a minute and try again")
        if not self._lock.acquire(timeout=self.busy_wait_s):
            raise AnnotationError("the demo is busy with another request; try again in a minute")
        answered = False
        try:
            conn = self._ensure_started()
            conn.send((op, payload))
            while True:
                try:
                    kind, *rest = conn.recv()
                except (EOFError, OSError) as err:
                    raise AnnotationError("the demo's model process stopped (out of memory?); try again, "
                                          "or pick a smaller model") from err
                if kind == "progress" and progress:
                    progress(*rest)
                elif kind == "ok":
                    answered = True
                    return rest[0]
                elif kind == "error":
                    answered = True
                    raise AnnotationError(rest[0])
        finally:
            if not answered:  # died, or we stopped listening mid-request (e.g. the browser left): the pipe
                self._stop()  # may hold a late reply, so start afresh next time rather than misread it
            self._lock.release()

    def _ensure_started(self):
        if self._process is None or not self._process.is_alive():
            context = multiprocessing.get_context("spawn")  # a clean interpreter: no server threads, no fork
            parent, child = context.Pipe()
            self._process = context.Process(target=_demo_main, args=(child, self.placement), daemon=True,
                                            name="sparsefit-demo")
            self._process.start()
            child.close()
            self._conn = parent
        return self._conn

    def _stop(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout=5)
        self._process, self._conn = None, None

    def close(self) -> None:
        self._stop()


def _demo_main(conn, placement: dict[str, str]) -> None:
    """The child: loads models with the backend's Predictor and answers requests until the pipe closes."""
    predictors: dict[str, Any] = {}

    def report(fraction: float, text: str) -> None:
        conn.send(("progress", float(fraction), str(text)))

    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            from sparsefit.inference import Predictor
            model = payload["model"]
            if model not in predictors:
                predictors[model] = Predictor.load(model, progress=report, **placement)
            result = None
            if op == "predict":
                result = predictors[model].predict(payload["task"], payload["inputs"])
            conn.send(("ok", result))
        except Exception as err:  # a message for the browser, not a traceback
            conn.send(("error", _visitor_error_text(err)))


def _visitor_error_text(err: Exception) -> str:
    """The backend's own errors are written for users; anything else may quote server internals (library
    paths, tensor shapes), so a page visitor gets its kind and the server's log gets the traceback."""
    from sparsefit.errors import SparseFitError
    if isinstance(err, SparseFitError):
        return str(err)
    import sys
    import traceback
    traceback.print_exception(err, file=sys.stderr)
    return f"the model could not serve this request ({type(err).__name__}); the server's log has the details"


# ---------------------------------------------------------------------------------------- quickstart


@dataclass
class BuildStatus:
    running: bool = False
    fraction: float = 0.0
    text: str = ""
    error: str = ""
    predictions: str = ""


_LIVE_BUILDS: set = set()  # build processes to stop when this process exits


def _stop_live_builds() -> None:
    for process in list(_LIVE_BUILDS):
        if process.is_alive():
            process.terminate()
            process.join(timeout=5)


atexit.register(_stop_live_builds)


def run_quickstart_build(models_dir: str | Path, progress: Progress | None = None,
                         placement: dict[str, str] | None = None) -> str:
    """Build the quickstart predictions in a child process (torch stays out of this one); blocks until
    done and returns the predictions path, relaying progress. `placement`: {"device", "dtype"} for the
    backend (default auto, float32). Failures raise AnnotationError."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_build_main, args=(child, str(models_dir), placement or {}), daemon=True,
                              name="sparsefit-quickstart")
    process.start()
    _LIVE_BUILDS.add(process)
    child.close()
    try:
        while True:
            try:
                kind, *rest = parent.recv()
            except (EOFError, OSError) as err:
                raise AnnotationError("the quickstart build stopped unexpectedly (out of memory?)") from err
            if kind == "progress":
                if progress:
                    progress(*rest)
            elif kind == "ok":
                return rest[0]
            else:
                raise AnnotationError(f"the quickstart run failed: {rest[0]}")
    finally:
        if process.is_alive():
            process.join(timeout=10)
        if process.is_alive():
            process.terminate()
        _LIVE_BUILDS.discard(process)


class QuickstartBuild:
    """`run_quickstart_build` in a background thread with a status line for the browser; `on_done(path)`
    runs in this process after the build."""

    def __init__(self, models_dir: str | Path, on_done: Callable[[str], None] | None = None,
                 placement: dict[str, str] | None = None):
        self.models_dir, self.placement = str(models_dir), placement
        self.on_done = on_done
        self.status = BuildStatus()

    def start(self) -> None:
        self.status = BuildStatus(running=True, text="starting")
        threading.Thread(target=self._run, name="quickstart-build", daemon=True).start()

    def banner(self) -> str:
        """One Markdown line for the browser; empty when there is nothing to say."""
        s = self.status
        if s.running:
            return f"⏳ Building the quickstart model and study ({s.fraction:.0%}): {s.text}"
        if s.error:
            return f"⚠️ The quickstart build failed: {s.error}"
        return ""

    def _progress(self, fraction: float, text: str) -> None:
        self.status.fraction, self.status.text = fraction, text
        print(f"  [{fraction:4.0%}] {text}", flush=True)

    def _run(self) -> None:
        try:
            self.status.predictions = run_quickstart_build(self.models_dir, self._progress, self.placement)
            if self.on_done:
                self.on_done(self.status.predictions)
        except AnnotationError as err:
            self.status.error = str(err)
            print(f"Quickstart not built: {err}", flush=True)
        finally:
            self.status.running = False


def _build_main(conn, models_dir: str, placement: dict[str, str]) -> None:
    import os
    os.environ["SPARSEFIT_MODELS_DIR"] = models_dir  # the backend writes where the app looks
    try:
        from sparsefit.inference import build_quickstart
        path = build_quickstart(progress=lambda f, text: conn.send(("progress", float(f), str(text))),
                                **placement)
        conn.send(("ok", str(path)))
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line (the page's banner)
        conn.send(("error", _visitor_error_text(err)))
