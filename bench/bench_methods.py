"""One episode per method on the default model (Gemma-3-270M) on this CPU: time, peak memory, trainable %.

    python bench/bench_methods.py                      # ~10-15 minutes on 2 cores (first run converts the
                                                       # default model once, about a minute more)
    python bench/bench_methods.py --steps 30 --n-eval 48 --methods sparsefit,lora

Not run by the tests. Every method runs the same episode (FEB seed 7004; e-SNLI from ../shared/data when it
is there, else the embedded sample-nli task) through `sparsefit.experiments.run_episodes`, so the numbers
are those of real runs: train time is the training loop's wall time, peak memory the process RSS sampled
after every training step (psutil; it includes the base model and the runner's copy of it), trainable %
counts what each method trains (for mask training: the scores, one per masked weight). With so few steps
and examples the quality columns are only a smoke signal, not a comparison of the methods.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHOD_OPTIONS = {
    "sparsefit": {"preset": "paper"},
    "full": {},
    "lora": {},
    "dsee": {"prune": "unstructured", "prune_sparsity": 0.3},
    "mask": {"sparsity": 0.5},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--methods", default=",".join(METHOD_OPTIONS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--n-eval", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "models" / "bench" / "methods"))
    args = parser.parse_args(argv)

    import torch
    from sparsefit.config import RunConfig, TrainConfig
    from sparsefit.errors import SparseFitError
    from sparsefit.experiments import make_variants, run_episodes, write_table_csv, results_table

    torch.set_num_threads(args.threads)
    esnli = ROOT.parent / "shared" / "data" / "esnli"
    dataset = {"dataset": "esnli", "data_path": str(esnli), "train_split": "dev", "eval_split": "dev"} \
        if esnli.exists() else {"dataset": "sample-nli"}
    configs = []
    for method in args.methods.split(","):
        if method not in METHOD_OPTIONS:
            parser.error(f"unknown method {method!r}; choose from {', '.join(METHOD_OPTIONS)}")
        configs.append(RunConfig(**dataset, model=args.model, method=method, method_options=METHOD_OPTIONS[method],
                                 n_eval=args.n_eval, max_new_tokens=args.max_new_tokens,
                                 train=TrainConfig(steps=args.steps, threads=args.threads), name=method))
    try:
        folder = Path(args.out) / f"{Path(args.model).name}-{args.steps}steps-{args.n_eval}eval"
        rows = run_episodes(make_variants(configs), folder, [7004])
    except SparseFitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_table_csv(results_table(rows), Path(args.out) / "table.csv")
    print(f"\n{args.model}, {dataset['dataset']}, seed 7004, {args.steps} steps, {args.n_eval} eval examples, "
          f"{args.threads} threads")
    print(f"{'method':10} {'trainable %':>11} {'train s':>8} {'s/step':>7} {'peak RSS MB':>11} {'accuracy':>8} "
          f"{'nBERTScore':>10}")
    for row in rows:
        def fmt(key, spec):
            value = row.get(key)
            return format(value, spec) if isinstance(value, (int, float)) else "n/a"
        print(f"{row['variant']:10} {fmt('trainable_percent', '11.3f')} {fmt('train_seconds', '8.1f')} "
              f"{fmt('seconds_per_step', '7.2f')} {fmt('peak_memory_mb', '11.0f')} {fmt('accuracy', '8.1f')} "
              f"{fmt('nbertscore', '10.1f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
