"""Benchmark: `python -m sparsefit search` with its default settings (target: <= 30 minutes on 2 CPU cores).

    python bench/bench_search.py [--model default] [--dataset esnli --path ../shared/data/esnli --split dev]
    python bench/bench_search.py --model tiny-causal --dataset sample-nli --split train --n-val 24  # smallest mode

Runs the search in a fresh temporary folder (no resume) with the CLI's default budget, lrs, rungs and
validation size, and prints candidates, trials, wall seconds and the ratio to the 30-minute target.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsefit.search import build_candidates, register_cli, run_search, settings_from_args  # noqa: E402

TARGET_SECONDS = 30 * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dataset", default="esnli")
    parser.add_argument("--path", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "esnli"))
    parser.add_argument("--split", default="dev")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--n-val", help="validation examples per episode (the sample task has only 42 to spare)")
    args = parser.parse_args()
    search_parser = argparse.ArgumentParser()
    register_cli(search_parser.add_subparsers(dest="command"))
    argv = ["search", "--dataset", args.dataset, "--train-split", args.split, "--model", args.model,
            "--threads", str(args.threads)] + (["--path", args.path] if args.dataset != "sample-nli" else []) \
        + (["--n-val", args.n_val] if args.n_val else [])
    settings = settings_from_args(search_parser.parse_args(argv))
    candidates = build_candidates(settings)
    with tempfile.TemporaryDirectory(prefix="bench-search-") as out:
        started = time.perf_counter()
        ranked = run_search(settings, out, progress=True)
        seconds = time.perf_counter() - started
        trials = [json.loads(line) for line in (Path(out) / "trials.jsonl").open() if line.strip()]
    per_rung: dict[int, list[float]] = {}
    for trial in trials:  # a rung is known by its step count
        per_rung.setdefault(trial["steps"], []).append(trial["seconds"])
    for steps, times in sorted(per_rung.items()):
        print(f"rung of {steps} steps: {len(times)} trials, {sum(times):.0f} s (trials {min(times):.0f}-{max(times):.0f} s)")
    for row in ranked[:4]:
        print(f"#{row['rank']} {row['candidate']}: rung {row['rung']}, val label accuracy {row['val_accuracy']:.1f} "
              f"at {row['best_steps']} steps, val loss {row['val_loss']:.2f}")
    rows = [("model", args.model), ("budget", f"{100 * settings.budget:g}%"), ("candidates", len(candidates)),
            ("trials", len(trials)), ("best", ranked[0]["candidate"]), ("seconds", f"{seconds:.0f}"),
            ("target seconds", TARGET_SECONDS), ("ratio to target", f"{seconds / TARGET_SECONDS:.2f}")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


if __name__ == "__main__":
    main()
