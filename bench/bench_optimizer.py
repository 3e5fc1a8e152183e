"""Benchmark: one AdamW step over Gemma-3-270M-sized weight matrices, torch's default vs foreach vs fused.

    python bench/bench_optimizer.py [--threads 2] [--millions 94] [--repeats 3]

The default is Gemma-3-270M's non-embedding weights (94M values: what `fish` and full fine-tuning step besides
the embedding). `sparsefit.train.make_optimizer` uses the fused kernel on every device; this prints why, as
seconds per step and the ratio to fused, measured side by side (interleaved repeats) in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

VARIANTS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def make_params(millions: float) -> list[torch.nn.Parameter]:
    """640x2048 and 640x1024 matrices (Gemma-3-270M's MLP and attention shapes) adding up to ~`millions`."""
    generator = torch.Generator().manual_seed(0)
    shapes, total = [], 0
    while total < millions * 1e6:
        for shape in ((640, 2048), (640, 2048), (640, 2048), (640, 1024), (640, 1024)):
            shapes.append(shape)
            total += shape[0] * shape[1]
    params = [torch.nn.Parameter(torch.randn(*s, generator=generator)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    return params


def seconds_per_step(kind: str, millions: float, steps: int = 5) -> float:
    params = make_params(millions)
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, **VARIANTS[kind])
    optimizer.step()  # allocates the moments
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--millions", type=float, default=94)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for _ in range(args.repeats):  # interleaved, so a busy moment hits every variant
        for kind in VARIANTS:
            times[kind].append(seconds_per_step(kind, args.millions))
    fused = statistics.median(times["fused"])
    print(f"AdamW step over {args.millions:g}M weights, {args.threads} threads, median of {args.repeats}")
    print(f"{'variant':<8} {'s/step':>7} {'x fused':>8}")
    for kind, values in times.items():
        median = statistics.median(values)
        print(f"{kind:<8} {median:>7.3f} {median / fused:>8.1f}")


if __name__ == "__main__":
    main()
