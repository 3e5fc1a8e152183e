"""Load test of the annotation server: simulated annotators against `python app.py --no-demo` on loopback.

    python bench/bench_load.py                                  # 200 annotators, 2-6 s think time, 60 s
    python bench/bench_load.py --annotators 50 --duration 30    # smaller
    python bench/bench_load.py --think 0 --annotators 32        # saturation: no pauses
    python bench/bench_load.py --think 0 --items 300,100000     # next-item cost: small vs 100k-item study
    python bench/bench_load.py --kill-every 15                  # kill -9 the server every 15 s, restart it

Each simulated annotator opens its link, answers the gate, rates, and repeats (a new link when its page
is full), through the JSON routes (POST /api/annotator/{start,gate,submit}) over keep-alive HTTP, from
`--processes` separate processes so the load generator does not share the server's interpreter. Bounded:
at most `--duration` seconds per configuration, loopback only.

Prints per call p50/p95/p99 latency, throughput, errors (a reply that refused the call), calls with no reply
(the server was down: only with --kill-every; the client waits 0.5 s and opens its link again), the
server's CPU per call and start-up time, and then checks the
database: every acknowledged rating is stored exactly once, no item holds more than its annotator count,
no annotator went past their page. Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LABELS = ("entailment", "neutral", "contradiction")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=200, help="simulated annotators at once")
    parser.add_argument("--think", default="2-6", help="seconds between calls, 'lo-hi' (uniform) or 0")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per configuration")
    parser.add_argument("--items", default="3000", help="items in the study; a comma list runs each in turn")
    parser.add_argument("--per-item", type=int, default=3, help="annotators per item")
    parser.add_argument("--page", type=int, default=10, help="items per annotator page")
    parser.add_argument("--processes", type=int, default=4, help="load-generator processes")
    parser.add_argument("--kill-every", type=float, default=0.0, help="kill -9 the server every N s (0 = never)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (database, logs)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------- setup


def write_predictions(path: Path, count: int) -> dict[str, str]:
    """A synthetic predictions file; returns premise -> gold label (the bench's answer key for the gate)."""
    from annotation.backend import PredictionRecord, write_predictions as write
    answers, records = {}, []
    for i in range(count):
        gold = LABELS[i % 3]
        premise = f"Bench premise number {i}: a person does thing {i % 97} in place {i % 89}."
        answers[premise] = gold
        records.append(PredictionRecord(
            id=f"r{i}", dataset="esnli", split="test", inputs={"premise": premise, "hypothesis": f"Hypothesis {i}."},
            prompt="", gold_label=gold, gold_explanations=[f"Because reason {i}."], pred_label=gold,
            pred_explanation=f"Because the model says {i}.", raw_generation="", correct=True, model="bench",
            method="bench", trainable_percent=None, seed=0, metrics={}))
    write(path, records)
    return answers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python app.py --no-demo` in a child process; restartable, and its CPU time is read from /proc."""

    def __init__(self, db: Path, port: int, log: Path):
        self.db, self.port, self.log = db, port, log
        self.process: subprocess.Popen | None = None
        self.cpu_before_restarts = 0.0

    def start(self) -> float:
        started = time.monotonic()
        env = {**os.environ, "SPARSEFIT_ADMIN_PASSWORD": "bench", "OMP_NUM_THREADS": "1"}
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--no-demo", "--db", str(self.db), "--port", str(self.port),
             "--quickstart-predictions", str(self.db.parent / "none.jsonl")],
            cwd=ROOT, env=env, stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        while time.monotonic() - started < 120:
            try:
                status, _ = call(http.client.HTTPConnection("127.0.0.1", self.port, timeout=5), "start", {})
                if status == 200:
                    return time.monotonic() - started
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"the server did not answer within 120 s; see {self.log}")

    def cpu_seconds(self) -> float:
        if self.process is None or self.process.poll() is not None:
            return self.cpu_before_restarts
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return self.cpu_before_restarts + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def kill(self) -> None:
        self.cpu_before_restarts = self.cpu_seconds()
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


# ------------------------------------------------------------------------------------------- load


def call(conn: http.client.HTTPConnection, route: str, body: dict) -> tuple[int, dict]:
    conn.request("POST", f"/api/annotator/{route}", json.dumps(body), {"Content-Type": "application/json"})
    reply = conn.getresponse()
    return reply.status, json.loads(reply.read() or b"{}")


def worker_main(spec: dict, out_path: str) -> None:
    """One load-generator process: a thread per simulated annotator; writes its measurements as JSON."""
    answers = json.loads(Path(spec["answers"]).read_text())
    samples: list[tuple[str, float, bool, bool]] = []  # (call, seconds, ok, the server answered)
    acknowledged: list[list] = []
    messages: dict[str, int] = {}  # refusals by message, to explain any errors
    lock = threading.Lock()
    end = time.monotonic() + spec["duration"]
    lo, hi = spec["think"]

    def annotator(tokens: list[str], seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=30)

        def timed(route: str, body: dict) -> dict | None:
            nonlocal conn
            started = time.perf_counter()
            try:
                try:
                    status, view = call(conn, route, body)
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    # the server closed an idle keep-alive connection (uvicorn: after 5 s); like any HTTP
                    # client, reconnect and send again (all three calls are idempotent)
                    conn.close()
                    status, view = call(conn, route, body)
                ok = status == 200 and view.get("ok") is True
            except (OSError, http.client.HTTPException, json.JSONDecodeError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", spec["port"], timeout=30)
                status, view, ok = 0, None, False  # no answer: e.g. the server is restarting
            if not ok and view is not None:
                with lock:
                    messages[view.get("message", "")[:80]] = messages.get(view.get("message", "")[:80], 0) + 1
            with lock:
                samples.append((route, time.perf_counter() - started, ok, status != 0))
            if not ok:
                time.sleep(0.5)  # e.g. the server is restarting
            return view if ok else None

        def think() -> None:
            time.sleep(rng.uniform(lo, hi) if hi > 0 else 0)

        time.sleep(rng.uniform(0, hi))  # arrivals spread over one think time, not all in the first instant
        for token in tokens:
            view = None
            while time.monotonic() < end:
                view = view or timed("start", {"token": token})
                if view is None:
                    continue
                if view["stage"] == "done" or view["stage"] == "error":
                    break
                think()
                if view["stage"] == "gate":
                    premise = view["inputs"][0]["text"]
                    view = timed("gate", {"token": token, "assignment_id": view["assignment_id"],
                                          "answer": answers[premise]})
                    continue
                assignment = view["assignment_id"]
                view = timed("submit", {"token": token, "assignment_id": assignment, "rating_a": "yes",
                                        "rating_b": rng.choice(["yes", "weak_no", "no"]), "comment": "bench"})
                if view is not None and view.get("message") == "Saved.":
                    with lock:
                        acknowledged.append([token, assignment])
            if time.monotonic() >= end:
                break
        conn.close()

    threads = [threading.Thread(target=annotator, args=(tokens, i)) for i, tokens in enumerate(spec["tokens"])]
    [t.start() for t in threads]
    [t.join() for t in threads]
    Path(out_path).write_text(json.dumps({"samples": samples, "acknowledged": acknowledged, "messages": messages}))


def run_configuration(args: argparse.Namespace, items: int, folder: Path) -> dict:
    from annotation.store import Store, StudySettings
    lo, hi = (0.0, 0.0) if args.think in ("0", "0-0") else tuple(float(x) for x in args.think.split("-"))
    folder.mkdir(parents=True, exist_ok=True)
    answers = write_predictions(folder / "predictions.jsonl", items)
    (folder / "answers.json").write_text(json.dumps(answers))
    db = folder / "studies.db"
    store = Store(db)
    study = store.create_study(folder / "predictions.jsonl", StudySettings(
        per_label=0, annotators_per_item=args.per_item, items_per_page=args.page, name=f"bench-{items}"))
    pages_each = 2 + int(args.duration / max(0.005, (lo + hi) / 2 * 2 * args.page)) if hi > 0 else 50
    tokens = [a.token for a in store.add_annotators(study, args.annotators * pages_each)]
    per_annotator = [tokens[i::args.annotators] for i in range(args.annotators)]

    server = Server(db, args.port or free_port(), folder / "server.log")
    startup = server.start()
    cpu_start = server.cpu_seconds()
    context = multiprocessing.get_context("spawn")
    workers, outputs = [], []
    for p in range(args.processes):
        spec = {"port": server.port, "duration": args.duration, "think": [lo, hi], "answers": str(folder / "answers.json"),
                "tokens": per_annotator[p::args.processes]}
        out = folder / f"worker{p}.json"
        outputs.append(out)
        workers.append(context.Process(target=worker_main, args=(spec, str(out))))
    started = time.monotonic()
    [w.start() for w in workers]
    restarts = []
    if args.kill_every > 0:
        while any(w.is_alive() for w in workers) and time.monotonic() - started < args.duration - args.kill_every / 2:
            time.sleep(args.kill_every)
            server.kill()
            restarts.append(server.start())
    [w.join() for w in workers]
    elapsed = time.monotonic() - started
    cpu = server.cpu_seconds() - cpu_start
    server.stop()

    samples, acknowledged, messages = [], [], {}
    for out in outputs:
        data = json.loads(out.read_text())
        samples += data["samples"]
        acknowledged += data["acknowledged"]
        for text, n in data["messages"].items():
            messages[text] = messages.get(text, 0) + n
    return {"items": items, "startup_s": startup, "elapsed_s": elapsed, "server_cpu_s": cpu, "samples": samples,
            "acknowledged": acknowledged, "restarts_s": restarts, "messages": messages, "checks": check_database(db, study, acknowledged,
                                                                                          args)}


def check_database(db: Path, study: str, acknowledged: list, args) -> dict[str, int]:
    import sqlite3
    conn = sqlite3.connect(db)
    ids = {a for _, a in acknowledged}
    counts = dict(conn.execute("SELECT assignment_id, n FROM (SELECT a.id AS assignment_id, count(r.id) AS n "
                               "FROM assignments a LEFT JOIN ratings r ON r.item_id = a.item_id AND "
                               "r.annotator_id = a.annotator_id GROUP BY a.id)").fetchall())
    return {
        "acknowledged": len(acknowledged),
        "lost": sum(1 for a in ids if counts.get(a, 0) < 2),  # both explanations' ratings, or it is lost
        "duplicated": len(acknowledged) - len(ids) + sum(1 for a in ids if counts.get(a, 0) > 2),
        "items_over_count": conn.execute(
            "SELECT count(*) FROM (SELECT item_id FROM assignments WHERE status IN ('assigned', 'submitted') "
            "GROUP BY item_id HAVING count(*) > ?)", [args.per_item]).fetchone()[0],
        "quota_overflow": conn.execute(
            "SELECT count(*) FROM (SELECT annotator_id FROM assignments WHERE status IN ('assigned', 'submitted', "
            "'gate_failed') GROUP BY annotator_id HAVING count(*) > ?)", [args.page]).fetchone()[0],
    }


# ------------------------------------------------------------------------------------------- report


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(result: dict) -> dict[str, float]:
    rows = {}
    print(f"\nstudy of {result['items']} items: {len(result['samples'])} calls in {result['elapsed_s']:.1f} s = "
          f"{len(result['samples']) / result['elapsed_s']:.1f} calls/s; server CPU "
          f"{1000 * result['server_cpu_s'] / max(1, len(result['samples'])):.1f} ms per call; startup "
          f"{result['startup_s']:.1f} s" + (f"; restarts after kill -9: {', '.join(f'{s:.1f}' for s in result['restarts_s'])} s"
                                               if result["restarts_s"] else ""))
    print(f"{'call':<8} {'count':>7} {'errors':>7} {'no reply':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
          f"{'mean ms':>8}")
    for route in ("start", "gate", "submit", "all"):
        chosen = [s for s in result["samples"] if route in ("all", s[0])]
        times = [1000 * s[1] for s in chosen if s[2]]
        errors = sum(1 for s in chosen if not s[2] and s[3])
        down = sum(1 for s in chosen if not s[3])
        rows[route] = percentile(times, 0.5)
        print(f"{route:<8} {len(chosen):>7} {errors:>7} {down:>8} {percentile(times, .5):>8.1f} {percentile(times, .95):>8.1f} "
              f"{percentile(times, .99):>8.1f} {statistics.fmean(times) if times else float('nan'):>8.1f}")
    if result["messages"]:
        print("refusals: " + "; ".join(f"{n}x {text!r}" for text, n in result["messages"].items()))
    print("database checks: " + ", ".join(f"{k} {v}" for k, v in result["checks"].items()))
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="sparsefit-bench-load-"))
    print(f"{args.annotators} annotators, think {args.think} s, {args.duration:.0f} s per run, {args.processes} "
          f"load processes, {os.cpu_count()} CPUs (the load generator shares them); folder {folder}")
    results = [run_configuration(args, int(n), folder / f"items-{n}") for n in args.items.split(",")]
    p50s = [report(r) for r in results]
    if len(results) > 1:
        base = p50s[0]["submit"]
        print("\nsubmit p50 relative to the first study: " + ", ".join(
            f"{r['items']} items {p['submit'] / base:.2f}x" for r, p in zip(results, p50s)))
    failed = any(r["checks"]["lost"] or r["checks"]["duplicated"] or r["checks"]["items_over_count"]
                 or r["checks"]["quota_overflow"] for r in results)
    if not args.keep:
        import shutil
        shutil.rmtree(folder, ignore_errors=True)
    print("\nFAILED: see the database checks above" if failed else "\nall database checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
