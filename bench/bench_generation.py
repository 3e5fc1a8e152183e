"""Generation: HF `generate` vs SparseFit's own greedy loop (finished rows leave the batch), side by side.

    python bench/bench_generation.py                          # default model, 32 e-SNLI dev prompts, auto device
    python bench/bench_generation.py --model tiny-causal --n 8 --max-new-tokens 8   # smallest check
    python bench/bench_generation.py --run models/runs/<run>  # a fine-tuned run (short answers: rows stop early)

Prints seconds per engine, the speed ratio and whether both produced exactly the same texts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prompts_for(n: int) -> tuple[list[str], str]:
    from sparsefit.data import load_examples
    from sparsefit.prompts import format_input
    esnli = ROOT.parent / "shared" / "data" / "esnli"
    if esnli.exists():
        return [format_input(e) for e in load_examples("esnli", str(esnli), "dev")[:n]], "e-SNLI dev"
    return [format_input(e) for e in load_examples("sample-nli", None, "train")[:n]], "sample-nli"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--run", help="a run folder: generate with its fine-tuned model instead")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, help="default: 32 on CPU, 128 on CUDA")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per engine; the fastest counts")
    args = parser.parse_args()

    import torch
    from sparsefit.backbones import load_backbone
    from sparsefit.checkpoint import load_delta
    from sparsefit.generate import generate
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        backbone, model, method, _ = load_delta(args.run, device=args.device, dtype=args.dtype)
        model = method.merge(model)
    else:
        backbone = load_backbone(args.model, device=args.device, dtype=args.dtype)
        model = backbone.model
    prompts, source = prompts_for(args.n)
    seconds: dict[str, float] = {"hf": float("inf"), "own": float("inf")}
    texts: dict[str, list[str]] = {}
    for engine in ("hf", "own"):  # warm-up: first calls pay for lazy initialisation
        generate(backbone, model, prompts[:2], max_new_tokens=2, progress=False, engine=engine)
    for repeat in range(args.repeats):  # alternate the order, so drifting machine load hits both engines
        for engine in (("hf", "own") if repeat % 2 == 0 else ("own", "hf")):
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            texts[engine] = generate(backbone, model, prompts, batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, progress=False, engine=engine)
            if backbone.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[engine] = min(seconds[engine], time.perf_counter() - started)
    same = sum(a == b for a, b in zip(texts["hf"], texts["own"]))
    print(f"{args.run or args.model} on {backbone.device} ({args.dtype}), {len(prompts)} {source} prompts, "
          f"max {args.max_new_tokens} new tokens, threads {torch.get_num_threads()}, best of {args.repeats}")
    words = [len(t.split()) for t in texts["own"]]
    print(f"answer length: {min(words)}-{max(words)} words (mean {sum(words) / len(words):.1f})")
    print(f"{'engine':<8} {'seconds':>8} {'prompts/s':>10}")
    for engine in ("hf", "own"):
        print(f"{engine:<8} {seconds[engine]:>8.2f} {len(prompts) / seconds[engine]:>10.2f}")
    print(f"speed-up own/hf: {seconds['hf'] / seconds['own']:.2f}x; identical texts: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
