"""Step time and peak GPU memory per fine-tuning method on a random-init T5-large, next to full fine-tuning.

    python bench/gpu_methods.py                 # CUDA, T5-large shapes (737M params), < 5 minutes on one H100
    python bench/gpu_methods.py --tiny --steps 1 --warmup 0   # a 2-layer T5 on CPU: checks the script runs

No downloads: the model is built from a T5Config with T5-large's dimensions and random weights, so only
speed and memory mean anything (the loss does not). Every method trains the same random batches
(batch 4, 256 input / 64 target tokens by default) with AdamW, through the methods' own hooks
(`training_loss`, `after_step`), exactly as `sparsefit.train` does.

What is measured, per method: the median wall time of a training step (forward, backward, optimizer step,
after_step; CUDA-synchronised) after `--warmup` steps, and `torch.cuda.max_memory_allocated` from before
the method's copy of the model is made to the end (tensors only, not the CUDA context; it includes the
resident fp32 base model, ~2.8 GiB for T5-large, kept for the next method, so differences between methods
are what they add). On CPU (--tiny) memory is the process RSS
after the steps (psutil), a much coarser number. Reported as measured; nothing is extrapolated.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsefit.errors import SparseFitError  # noqa: E402
from sparsefit.methods import Arch, count_parameters, get_method  # noqa: E402

# (label, method, options); DSEE prunes at half of the measured steps, so both phases are timed.
METHODS = (
    ("full", "full", {}),
    ("sparsefit (paper: self.k + ln)", "sparsefit", {"preset": "paper"}),
    ("lora r=8 q,v", "lora", {}),
    ("dsee (lora q,v + S, prune 30%)", "dsee", {"prune": "unstructured", "prune_sparsity": 0.3}),
    ("mask (50%, attn+ffn)", "mask", {"sparsity": 0.5}),
)


def t5_config(tiny: bool):
    from transformers import T5Config
    if tiny:
        return T5Config(vocab_size=128, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                        num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    # t5-large: 24+24 layers, d_model 1024, 16 heads x 64, d_ff 4096, 32128-token vocabulary
    return T5Config(vocab_size=32128, d_model=1024, d_kv=64, num_heads=16, d_ff=4096, num_layers=24,
                    num_decoder_layers=24, feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0,
                    eos_token_id=1)


def random_batches(n: int, batch: int, source_len: int, target_len: int, vocab: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    for _ in range(n):
        input_ids = torch.randint(2, vocab, (batch, source_len), generator=gen)
        labels = torch.randint(2, vocab, (batch, target_len), generator=gen)
        yield {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device),
               "labels": labels.to(device)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loss(model, batch):
    return model(**batch).loss


def bench_method(base, method_name: str, options: dict, args, device: torch.device) -> dict:
    total = count_parameters(base)[1]
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = copy.deepcopy(base)
    method = get_method(method_name, **options)
    started = time.perf_counter()
    model = method.prepare(model, Arch("seq2seq", "t5"))
    prepare_seconds = time.perf_counter() - started
    trainable = count_parameters(model)[0]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)
    model.train()
    steps = args.warmup + args.steps
    times = []
    for step, batch in enumerate(random_batches(steps, args.batch, args.source_len, args.target_len,
                                                base.config.vocab_size, device), 1):
        sync(device)
        started = time.perf_counter()
        loss = method.training_loss(model, batch, plain_loss)
        loss.backward()
        optimizer.step()
        method.after_step(model, step, steps)
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if step > args.warmup:
            times.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        import psutil
        peak = psutil.Process().memory_info().rss / 2**30
    row = {"trainable_percent": 100.0 * trainable / total, "step_ms": 1000 * statistics.median(times),
           "peak_gib": peak, "prepare_s": prepare_seconds, "loss": loss.item()}
    del model, optimizer, params
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2-layer T5 (CPU is fine): a correctness check")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--source-len", type=int, default=256)
    parser.add_argument("--target-len", type=int, default=64)
    parser.add_argument("--methods", help="comma-separated method names to run (default: all)")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.tiny:
        args.source_len, args.target_len = min(args.source_len, 16), min(args.target_len, 8)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.tiny:
        parser.error("no CUDA device: run with --tiny for a CPU check (T5-large timings need a GPU)")
    if device.type != "cuda":
        torch.set_num_threads(1)  # tiny ops on a shared CPU: extra threads only spin
    from transformers import T5ForConditionalGeneration
    torch.manual_seed(0)
    started = time.perf_counter()
    with torch.device(device):
        base = T5ForConditionalGeneration(t5_config(args.tiny))
    total = count_parameters(base)[1]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{'tiny T5' if args.tiny else 'T5-large (random init)'}: {total:,} parameters on {name}, built in "
          f"{time.perf_counter() - started:.1f}s; batch {args.batch}, {args.source_len}/{args.target_len} tokens, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    chosen = set(args.methods.split(",")) if args.methods else None
    rows = []
    for label, method_name, options in METHODS:
        if chosen and method_name not in chosen:
            continue
        try:
            rows.append((label, bench_method(base, method_name, options, args, device)))
        except (SparseFitError, RuntimeError) as err:  # e.g. out of memory: report it, go on
            rows.append((label, {"error": str(err).splitlines()[0][:120]}))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    full = next((r for label, r in rows if label == "full" and "step_ms" in r), None)
    memory_unit = "peak GiB (max allocated)" if device.type == "cuda" else "RSS GiB (process)"
    print(f"\n{'method':34} {'trainable %':>11} {'step ms':>9} {'vs full':>8} {memory_unit:>24} {'vs full':>8} "
          f"{'prepare s':>9}")
    for label, row in rows:
        if "error" in row:
            print(f"{label:34} failed: {row['error']}")
            continue
        step_ratio = f"{row['step_ms'] / full['step_ms']:.2f}x" if full else "n/a"
        mem_ratio = f"{row['peak_gib'] / full['peak_gib']:.2f}x" if full else "n/a"
        print(f"{label:34} {row['trainable_percent']:11.3f} {row['step_ms']:9.1f} {step_ratio:>8} "
              f"{row['peak_gib']:24.2f} {mem_ratio:>8} {row['prepare_s']:9.2f}")
    return 0 if all("error" not in r for _, r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
