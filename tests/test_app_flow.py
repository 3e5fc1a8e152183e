"""Flow tests: a really launched app driven through its public API with gradio_client, plus startup."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from annotation.sample_data import write_simulated_esnli
from annotation.store import Store, StudySettings
from conftest import free_port

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (DATA / "esnli").exists(), reason=f"shared dev data not found at {DATA}")
ADMIN_PASSWORD = "test-admin-secret"



@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from annotation.server import serve
    from annotation.ui import build_app, launch_options

    folder = tmp_path_factory.mktemp("app")
    predictions = write_simulated_esnli(folder / "predictions.jsonl", DATA, count=40, accuracy=0.8, seed=1)
    db_path = folder / "studies.db"
    demo = build_app(db_path, ADMIN_PASSWORD, models_dir=folder / "models",
                     quickstart_predictions=folder / "none.jsonl")
    port = free_port()
    demo.queue()
    serve(demo, db_path, host="127.0.0.1", port=port, **launch_options())
    yield {"url": f"http://127.0.0.1:{port}/", "db": db_path, "predictions": predictions, "store": Store(db_path)}
    demo.close()


def client(app):
    from gradio_client import Client
    return Client(app["url"], verbose=False)


def gold_of(store: Store, view: dict) -> str:
    """The test reads the gold label from the database (the view must not carry it)."""
    row = store.db.execute("SELECT i.gold_label FROM assignments a JOIN items i ON i.id = a.item_id "
                           "WHERE a.id = ?", [view["assignment_id"]]).fetchone()
    return row[0]


def complete_item(api, store: Store, token: str, view: dict, ratings=("yes", "weak_no")) -> dict:
    assert view["stage"] == "gate"
    rate = api.predict(token, str(view["assignment_id"]), gold_of(store, view), api_name="/annotator_answer_gate")
    assert rate["stage"] == "rate" and rate["assignment_id"] == view["assignment_id"]
    return api.predict(token, str(view["assignment_id"]), ratings[0], ratings[1], "", "", "fine",
                       api_name="/annotator_submit")


def test_two_annotators_rate_through_the_api(app):
    store: Store = app["store"]
    study = store.create_study(app["predictions"], StudySettings(per_label=1, annotators_per_item=1,
                                                                 items_per_page=2, name="flow"))
    alice, bob = store.add_annotators(study, 2)
    api = client(app)
    seen: dict[str, list[str]] = {}
    for person in (alice, bob):
        view = api.predict(person.token, "", "", "", "", api_name="/annotator_start")
        seen[person.id] = []
        while view["stage"] != "done":
            text = json.dumps(view)
            assert "gold_label" not in text and "pred_label" not in text and "\"gold\"" not in text
            seen[person.id].append(store.db["assignments"].get(view["assignment_id"])["item_id"])
            view = complete_item(api, store, person.token, view)
        assert view["completion_code"] == store.db["annotators"].get(person.id)["completion_code"]
    # overlap: one annotator per item, so the three items are split between the two people
    assert len(seen[alice.id]) == 2 and len(seen[bob.id]) == 1
    items = seen[alice.id] + seen[bob.id]
    assert Counter(items) == Counter(set(items)) and len(items) == 3
    rows = list(store.db.query("SELECT * FROM ratings WHERE study_id = ?", [study]))
    assert len(rows) == 6 and {r["question"] for r in rows} == {"model", "gold"}
    assert all(r["seconds_spent"] >= 0 and r["comment"] == "fine" for r in rows)
    by_position = {(r["item_id"], r["shown_position"]): r["rating"] for r in rows}
    assert set(by_position.values()) == {"yes", "weak_no"}  # A got "yes", B got "weak_no", whichever was gold
    # the Admin tab's Export button goes through annotation.admin.export (the analysis module writes the file)
    from annotation.admin import export
    exported = export(app["db"], study, "jsonl", app["db"].parent / "flow.jsonl")
    assert len(exported.read_text().splitlines()) == len(rows)


def test_resume_and_token_isolation(app):
    store: Store = app["store"]
    study = store.create_study(app["predictions"], StudySettings(per_label=1, name="resume"))
    alice, bob = store.add_annotators(study, 2)
    first_tab = client(app)
    view = first_tab.predict(alice.token, "", "", "", "", api_name="/annotator_start")
    second_tab = client(app)  # closing the tab and opening the link again = a new session
    again = second_tab.predict(alice.token, "", "", "", "", api_name="/annotator_start")
    assert again["assignment_id"] == view["assignment_id"] and again["progress"]["text"] == "Item 1 of 3"
    stolen = second_tab.predict(bob.token, str(view["assignment_id"]), gold_of(store, view),
                                api_name="/annotator_answer_gate")
    assert stolen["ok"] is False and "not assigned to your link" in stolen["message"]
    assert stolen.get("assignment_id") != view["assignment_id"]
    forged = second_tab.predict("forged-token", str(view["assignment_id"]), "yes", "yes", "", "", "",
                                api_name="/annotator_submit")
    assert forged["stage"] == "error" and "not valid" in forged["message"]
    assert store.db["ratings"].count_where("study_id = ?", [study]) == 0
    after = complete_item(second_tab, store, alice.token, again)
    assert after["progress"]["text"] == "Item 2 of 3"
    assert store.db["ratings"].count_where("study_id = ? AND annotator_id = ?", [study, alice.id]) == 2


def test_missing_rating_keeps_the_item_and_says_what_to_do(app):
    store: Store = app["store"]
    study = store.create_study(app["predictions"], StudySettings(per_label=1, name="missing"))
    token = store.add_annotators(study, 1)[0].token
    api = client(app)
    view = api.predict(token, "", "", "", "", api_name="/annotator_start")
    api.predict(token, str(view["assignment_id"]), gold_of(store, view), api_name="/annotator_answer_gate")
    result = api.predict(token, str(view["assignment_id"]), "yes", "", "", "", "", api_name="/annotator_submit")
    assert result["ok"] is False and "Explanation B" in result["message"]
    assert result["assignment_id"] == view["assignment_id"] and result["stage"] == "rate"


def test_prolific_sign_in_and_completion_code(app):
    store: Store = app["store"]
    study = store.create_study(app["predictions"], StudySettings(per_label=1, items_per_page=1, name="prolific"))
    api = client(app)
    key = store.study(study)["entry_key"]
    forged = api.predict("", study, "any-made-up-PID", "", "", api_name="/annotator_start")  # the call
    assert forged["stage"] == "error" and "not valid" in forged["message"]
    view = api.predict("", study, "PID123", "PSTUDY", "SESSION1", key, api_name="/annotator_start")
    assert view["stage"] == "gate" and view["token"]
    again = api.predict("", study, "PID123", "PSTUDY", "SESSION2", key, api_name="/annotator_start")
    assert again["assignment_id"] == view["assignment_id"]  # same participant, same annotator
    done = complete_item(api, store, view["token"], view)
    assert done["stage"] == "done" and done["completion_code"] in done["completion_url"]
    assert done["completion_code"] == store.study(study)["completion_code"]  # Prolific checks the study's code
    assert store.db["annotators"].count_where("study_id = ? AND prolific_pid = 'PID123'", [study]) == 1
    assert store.db["annotators"].count_where("study_id = ?", [study]) == 1  # the made-up PID left no trace


def test_only_the_documented_endpoints_are_callable(app):
    info = client(app).view_api(return_format="dict", print_info=False)
    names = set(info["named_endpoints"])
    assert {"/annotator_start", "/annotator_answer_gate", "/annotator_submit"} <= names
    mine = {n for n in names if not n.startswith("/results_")}  # the Results tab is another module's
    assert mine == {"/annotator_start", "/annotator_answer_gate", "/annotator_submit", "/demo_load_model",
                    "/demo_predict"}
    assert not info["unnamed_endpoints"]


def test_app_starts_fast_without_torch_and_builds_the_quickstart_study(tmp_path):
    predictions = write_simulated_esnli(tmp_path / "quick.jsonl", DATA, count=30, seed=2)
    port = free_port()
    env = {**os.environ, "SPARSEFIT_ADMIN_PASSWORD": "from-env"}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--db", str(tmp_path / "s.db"), "--port", str(port),
         "--quickstart-predictions", str(predictions)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.monotonic()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "SparseFit app running" in line or time.monotonic() - started > 60:
                break
        elapsed = time.monotonic() - started
        log = "".join(lines)
        assert "torch imported: False" in log, log
        assert elapsed < 30, f"startup took {elapsed:.1f}s"
        assert "Admin password (generated" not in log  # the env var was used
        link = next(l for l in lines if "annotator link" in l).split()[-1]
        from gradio_client import Client
        view = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            link.split("token=")[1], "", "", "", "", api_name="/annotator_start")
        assert view["study"] == "quickstart" and view["stage"] == "gate"
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_demo_predicts_with_the_tiny_model(app):
    pytest.importorskip("sparsefit.inference", reason="the backend's inference module is not written yet")
    api = client(app)
    label, explanation, prompt, raw = api.predict("tiny-t5", "esnli", "A man plays a guitar.", "A man makes music.",
                                                  "", "", "", "", api_name="/demo_predict")
    assert isinstance(label, str) and explanation.strip() and "guitar" in prompt  # random weights: any text
    import multiprocessing
    assert "sparsefit-demo" in {p.name for p in multiprocessing.active_children()}  # the model is not in here


def test_demo_menu_names_runs_by_their_place_under_models_not_by_server_path(app):
    """The menu's values are what API callers see and pass: "runs/x", never the server's absolute path."""
    from gradio_client.exceptions import AppError
    run = app["predictions"].parent / "models" / "runs" / "named"
    run.mkdir(parents=True, exist_ok=True)
    (run / "manifest.json").write_text("{}", encoding="utf-8")
    (run / "delta.safetensors").write_bytes(b"")
    api = client(app)
    with pytest.raises(AppError, match="unknown model"):
        api.predict(str(run), api_name="/demo_load_model")
    with pytest.raises(AppError) as refused:  # allowed; this empty run then fails to load, under its menu name
        api.predict("runs/named", api_name="/demo_load_model")
    assert "unknown model" not in str(refused.value) and "runs/named" in str(refused.value)
    assert "/root/" not in str(refused.value)  # an internal error gives its kind, not its text
    (run / "manifest.json").write_text(json.dumps({"base_model": "tiny-t5", "base_fingerprint": "elsewhere",
                                                   "method": "sparsefit"}), encoding="utf-8")
    with pytest.raises(AppError) as other_base:  # the backend's own error names the file, relative to models/
        api.predict("runs/named", api_name="/demo_load_model")
    assert "runs/named/manifest.json" in str(other_base.value) and "fingerprint" in str(other_base.value)
    assert str(run.parent.parent) not in str(other_base.value)


def test_demo_requests_are_rate_limited_per_client():
    from annotation.errors import AnnotationError
    from annotation.workers import DemoWorker, RateLimiter
    limiter = RateLimiter(3, 60)
    assert [limiter.allow("a") for _ in range(4)] == [True, True, True, False] and limiter.allow("b")
    worker = DemoWorker(per_client_per_minute=0)
    with pytest.raises(AnnotationError, match="too many demo requests"):
        worker.predict("tiny-t5", "esnli", {"premise": "x", "hypothesis": "y"}, client="1.2.3.4")
    assert worker._process is None  # refused before any model process was started


def test_lockouts_and_rate_limits_count_the_socket_peer_not_a_sent_header():
    """A participant who sends a made-up X-Forwarded-For with every try must not start a fresh count each
    time: only uvicorn's proxy handling (for trusted proxies) may change the address."""
    import gradio as gr
    from starlette.requests import Request
    from annotation.ui import _client
    seen = {_client(gr.Request(Request({"type": "http", "headers": [(b"x-forwarded-for", f"6.6.6.{i}".encode())],
                                        "client": ("10.0.0.2", 40000 + i)}))) for i in range(5)}
    assert seen == {"10.0.0.2"}
    assert _client(None) == "unknown"


def post(app, route: str, body) -> tuple[int, dict]:
    import urllib.error
    import urllib.request
    data = json.dumps(body).encode() if isinstance(body, dict) else body  # bytes, or chunks sent chunked
    request = urllib.request.Request(app["url"] + "api/annotator/" + route, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def status_of_unfinished_post(app, route: str, headers: str, sent: bytes) -> int:
    """The status the server answers with while the body is still incomplete: a server that waited for the
    whole body would time out here. Sending no more avoids the race where it answers and closes while a client
    is still writing (a broken pipe instead of the 413)."""
    import socket
    from urllib.parse import urlsplit
    address = urlsplit(app["url"])
    with socket.create_connection((address.hostname, address.port), timeout=30) as conn:
        conn.sendall(f"POST /api/annotator/{route} HTTP/1.1\r\nHost: x\r\n"
                     f"Content-Type: application/json\r\n{headers}\r\n".encode() + sent)
        reply = conn.makefile("rb").readline()  # b"HTTP/1.1 413 Request Entity Too Large"
    return int(reply.split()[1])


def test_the_json_routes_run_the_same_flow(app):
    store: Store = app["store"]
    study = store.create_study(app["predictions"], StudySettings(per_label=1, items_per_page=1, name="json"))
    token = store.add_annotators(study, 1)[0].token
    status, view = post(app, "start", {"token": token})
    assert status == 200 and view["stage"] == "gate"
    status, rate = post(app, "gate", {"token": token, "assignment_id": view["assignment_id"],
                                      "answer": gold_of(store, view)})
    assert rate["stage"] == "rate"
    status, done = post(app, "submit", {"token": token, "assignment_id": str(view["assignment_id"]),
                                        "rating_a": "yes", "rating_b": "no", "comment": "json"})
    assert done["stage"] == "done" and done["completion_code"]
    replay = post(app, "submit", {"token": token, "assignment_id": view["assignment_id"], "rating_a": "no",
                                  "rating_b": "no", "comment": "rewritten"})[1]
    assert "already saved" in replay["message"]
    assert {r["comment"] for r in store.db["ratings"].rows_where("study_id = ?", [study])} == {"json"}
    assert post(app, "submit", b"[1, 2")[0] == 400
    assert post(app, "submit", {"token": 5})[0] == 400
    assert status_of_unfinished_post(app, "start", "Content-Length: 70000\r\n", b"") == 413  # refused unread
    import urllib.request
    with urllib.request.urlopen(app["url"] + "config", timeout=30) as reply:  # inputs are not kept in browsers
        assert json.loads(reply.read())["run_history"] is False
    chunks = b"".join(b"3e8\r\n" + b"x" * 1000 + b"\r\n" for _ in range(70))  # 70 KB, no last chunk
    assert status_of_unfinished_post(app, "start", "Transfer-Encoding: chunked\r\n", chunks) == 413
    assert post(app, "gate", b'{"token": "\\ud800"}') == (400, {"ok": False, "stage": "error",
                                                               "message": "field 'token' is not valid text"})
    assert post(app, "gate", b'{"token": ' + b"1" * 5000 + b"}")[0] == 400  # past Python's 4,300 digits
    status, huge = post(app, "gate", {"token": token, "assignment_id": 2**64, "answer": "x"})
    assert status == 200 and "bad item number" in huge["message"]
    status, fake = post(app, "start", {"study": study, "prolific_pid": "made-up"})
    assert status == 200 and fake["stage"] == "error"


def test_no_demo_leaves_out_the_demo_endpoints(tmp_path):
    from gradio_client import Client

    from annotation.server import serve
    from annotation.ui import build_app, launch_options
    demo = build_app(tmp_path / "s.db", ADMIN_PASSWORD, models_dir=tmp_path, quickstart_predictions=tmp_path / "no",
                     with_demo=False)
    port = free_port()
    demo.queue()
    serve(demo, tmp_path / "s.db", port=port, **launch_options())
    try:
        info = Client(f"http://127.0.0.1:{port}/", verbose=False).view_api(return_format="dict", print_info=False)
        assert not {n for n in info["named_endpoints"] if n.startswith("/demo_")}
        assert "/annotator_submit" in info["named_endpoints"]
    finally:
        demo.close()


def test_build_quickstart_serves_at_once_and_stops_its_worker(tmp_path):
    port = free_port()
    env = {**os.environ, "SPARSEFIT_ADMIN_PASSWORD": "pw", "SPARSEFIT_MODELS_DIR": str(tmp_path / "models")}
    process = subprocess.Popen(
        [sys.executable, "app.py", "--db", str(tmp_path / "s.db"), "--port", str(port), "--no-demo",
         "--models-dir", str(tmp_path / "models"), "--build-quickstart"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started, lines = time.monotonic(), []
    try:
        for line in process.stdout:
            lines.append(line)
            if "SparseFit app running" in line or time.monotonic() - started > 60:
                break
        assert any("in the background" in l for l in lines), "".join(lines)
        assert time.monotonic() - started < 30, "".join(lines)  # no waiting for a build of minutes
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as page:
            assert page.status == 200
        # the build thread starts its process right after the "running" line; give a loaded CI machine time
        deadline, children = time.monotonic() + 20, []
        while not children and time.monotonic() < deadline:
            children = _children(process.pid)
            time.sleep(0.2)
        assert children, "the build runs in a child process; app output:\n" + "".join(lines)
    finally:
        process.terminate()
        process.wait(timeout=30)
    time.sleep(1)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists() and
                "Z" not in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]]


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return found
