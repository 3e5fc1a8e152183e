"""Benchmark: analyse a study with 100,000 ratings end to end (target: `analyze --json` from the command
line, imports included, <= 3 s on the 2-core dev machine).

    python bench/bench_analysis.py [--ratings 100000] [--repeat 3] [--export]

Builds a temporary study database (3 raters per item, model + gold ratings, 24 systems, metrics in every
record, some wrong gates, some shortcomings), then times `analyze` in this process (load + QC + scores +
agreement with CIs + paired tests + correlations with bootstrap CIs + JSON and text report) and
`python -m annotation analyze --json` as a subprocess (what a user waits for: interpreter start and imports
included), and prints a table with wall and CPU seconds. CPU seconds are what a busy shared machine does
not inflate.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotation.analysis import QCSettings, format_report, run_analysis  # noqa: E402
from annotation.schema import open_db  # noqa: E402

TARGET_SECONDS = 3.0
REPO = Path(__file__).resolve().parents[1]
SCALE = [("yes", 1.0), ("weak_yes", 2 / 3), ("weak_no", 1 / 3), ("no", 0.0)]
PROTOCOL = {
    "name": "bench", "title": "Rate", "instructions_md": "", "question": "Given {context}, justified?",
    "contexts": {"default": "the input above"},
    "scale": [{"value": v, "label": v.replace("_", " ").title(), "score": s, "key": str(i + 1)}
              for i, (v, s) in enumerate(SCALE)],
    "binary_positive": ["yes", "weak_yes"], "gate": {"enabled": True, "policy": "record"},
    "rate": ["model", "gold"],
    "shortcomings": [{"value": v, "label": v} for v in ("restates_input", "insufficient", "confusing_or_wrong",
                                                        "none")],
    "judge_as_if_label_correct": True, "comment": True, "defaults": {},
}


def build_database(path: Path, n_ratings: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    db = open_db(path)
    conn = db.conn
    conn.execute("BEGIN")
    conn.execute("INSERT INTO studies (id, name, created_at, preset, protocol_json, status) VALUES "
                 "('bench', 'benchmark', '2026-01-01', 'bench', ?, 'open')", (json.dumps(PROTOCOL),))
    systems = [(m, meth, d) for m in ("t5-base", "t5-large") for meth in ("sparsefit", "lora", "full")
               for d in ("esnli", "comve", "ecqa", "sbic")]
    raters, questions = 3, ("model", "gold")
    n_items = n_ratings // (raters * len(questions)) + 1
    annotators = [f"a{i}" for i in range(300)]
    conn.executemany("INSERT INTO annotators (id, study_id, token, source) VALUES (?, 'bench', ?, 'link')",
                     [(a, f"tok-{a}") for a in annotators])
    items, assignments, ratings = [], [], []
    for i in range(n_items):
        model, method, dataset = systems[i % len(systems)]
        quality = rng.random()
        record = {"id": f"r{i}", "dataset": dataset, "gold_label": "yes", "pred_label": "yes", "correct": True,
                  "model": model, "method": method, "pred_explanation": f"model says {i}",
                  "gold_explanations": [f"gold says {i}"],
                  "metrics": {"bertscore_f1": 50 + 40 * quality + rng.gauss(0, 8), "bleu": rng.uniform(0, 30),
                              "meteor": rng.uniform(0, 1)}}
        items.append((f"i{i}", f"r{i}", i, dataset, "yes", "yes", 1, model, method, json.dumps(record)))
        for annotator in rng.sample(annotators, raters):
            gate = 0 if rng.random() < 0.03 else 1
            assignments.append((f"i{i}", annotator, gate, rng.uniform(2, 90)))
            for question in questions:
                p = quality if question == "model" else 0.8
                value = SCALE[min(3, int((1 - p) * 4 * rng.random() + rng.random()))][0]
                shortcomings = json.dumps(rng.sample(["restates_input", "insufficient", "none"], 1))
                ratings.append((f"i{i}", annotator, question, value, dict(SCALE)[value], shortcomings))
    ratings = ratings[:n_ratings]
    conn.executemany("INSERT INTO items (id, study_id, record_id, position, dataset, gold_label, pred_label, "
                     "correct, model, method, record_json) VALUES (?, 'bench', ?, ?, ?, ?, ?, ?, ?, ?, ?)", items)
    conn.executemany("INSERT INTO assignments (study_id, item_id, annotator_id, status, gate_correct, seconds_spent)"
                     " VALUES ('bench', ?, ?, 'submitted', ?, ?)", assignments)
    conn.executemany("INSERT INTO ratings (study_id, item_id, annotator_id, question, rating, score, "
                     "shortcomings_json, origin) VALUES ('bench', ?, ?, ?, ?, ?, ?, 'app')", ratings)
    conn.execute("COMMIT")
    conn.close()


def time_analysis(db_path: Path, settings: QCSettings) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time is what a busy shared machine does not inflate."""
    start, cpu = time.perf_counter(), time.process_time()
    report = run_analysis(db_path, "bench", settings).report
    json.dumps(report, allow_nan=False)
    format_report(report)
    return time.perf_counter() - start, time.process_time() - cpu


def time_cli(db_path: Path, *extra: str) -> tuple[float, float]:
    """(wall, CPU of the child) of `python -m annotation analyze --json` as a user runs it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "annotation", "analyze", "--db", str(db_path), "--study", "bench",
                           "--json", *extra], cwd=REPO, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"analyze failed: {done.stderr.strip()}")
    json.loads(done.stdout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--export", action="store_true", help="also time a CSV export")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db_path = Path(tmp) / "bench.db"
        start = time.perf_counter()
        build_database(db_path, args.ratings)
        print(f"built {args.ratings:,} ratings in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        rows = []
        for label, settings in (("analyze (default QC)", QCSettings()),
                                ("analyze (all QC rules on)", QCSettings(min_seconds=5, min_gold_acceptance=0.5))):
            times = [time_analysis(db_path, settings) for _ in range(args.repeat)]
            rows.append((label, *min(times)))
        for label, extra in (("CLI analyze --json", ()),
                             ("CLI analyze --json, all QC", ("--min-seconds", "5", "--min-gold-acceptance", "0.5"))):
            times = [time_cli(db_path, *extra) for _ in range(args.repeat)]
            rows.append((label, *min(times)))
        if args.export:
            from annotation.export import export_study

            start, cpu = time.perf_counter(), time.process_time()
            export_study(db_path, "bench", "csv", Path(tmp) / "out.csv")
            rows.append(("export csv", time.perf_counter() - start, time.process_time() - cpu))
    print(f"{'what':28} {'ratings':>9} {'wall s':>7} {'cpu s':>7} {'wall / 3 s target':>18}")
    for label, wall, cpu in rows:
        print(f"{label:28} {args.ratings:>9,} {wall:>7.2f} {cpu:>7.2f} {wall / TARGET_SECONDS:>18.2f}")
    print(f"(best of {args.repeat}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
