"""What the full FEB protocol costs on one GPU: one episode eager fp32 vs bf16 + fused AdamW vs + compile vs
60 episodes trained sequentially or episode-batched (K = 12 / 30 / 60), all measured side by side in one run.

    python bench/gpu_protocol.py                       # CUDA: T5-large shapes and the default model's shapes
    python bench/gpu_protocol.py --cpu                 # tiny shapes on CPU: checks batched == sequential
    python bench/gpu_protocol.py --models t5-large --steps 20 --episodes 60

No downloads: models are built from configs (random weights) with T5-large's and Gemma-3-270M's shapes, so
only speed and memory mean anything. SparseFit, paper preset (T5: self.k + layer norms; decoder-only:
self.q + norms), batch 4, random tokens (`--source-len` input and `--target-len` target tokens per example).

Rows (ratios against (a), measured in this run):
  (a) one episode, eager fp32, torch AdamW                     -- the anchor
  (b) one episode, bf16 weights + fused AdamW (CUDA; CPU: plain AdamW)
  (c) (b) + torch.compile (a row that fails to compile says so and is skipped)
  seq 60 episodes one after another = N x (b), projected (same code as (b))
  K=12/30/60: N episodes trained K at a time (sparsefit.batched.StackedTrainer), bf16 + fused AdamW
Each row times `--steps` steps after `--warmup` steps (CUDA-synchronised wall time); "300 steps" is
steps_time x 300 / steps (measured directly when --steps 300). Peak memory: torch.cuda.max_memory_allocated
(stats reset before each row; tensors only, including the resident base model); CPU: process RSS, coarse.
Projected FEB protocol: 60 episodes x 4 datasets, each 300 training steps plus greedy generation of 350 items
(`--gen-items` measured with max_new_tokens forced, so a random model cannot stop early: an upper bound).
max|d| compares the batched episodes' trained tensors with the same episodes trained one by one on the same
batches (the first `--check` episodes; all of them with --cpu): fp32 -> ~1e-6, bf16 -> bf16 rounding.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparsefit.batched import StackedTrainer, structure_copy  # noqa: E402
from sparsefit.config import TrainConfig  # noqa: E402
from sparsefit.methods import Arch, get_method  # noqa: E402
from sparsefit.train import IGNORE, causal_loss, seq2seq_loss  # noqa: E402

PROTOCOL = {"datasets": 4, "episodes": 60, "steps": 300, "eval_items": 350}


def model_config(name: str):
    from transformers import Gemma3TextConfig, T5Config
    if name == "t5-large":
        return T5Config(vocab_size=32128, d_model=1024, d_kv=64, num_heads=16, d_ff=4096, num_layers=24,
                        num_decoder_layers=24, feed_forward_proj="relu", decoder_start_token_id=0, pad_token_id=0,
                        eos_token_id=1)
    if name == "gemma-3-270m":  # the default model's shapes (sparsefit.backbones DEFAULT_MODEL)
        return Gemma3TextConfig(vocab_size=262144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=256, max_position_embeddings=32768,
                                sliding_window=512, query_pre_attn_scalar=256, pad_token_id=0, eos_token_id=1,
                                bos_token_id=2)
    if name == "tiny-t5":
        return T5Config(vocab_size=300, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_decoder_layers=2,
                        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                        dropout_rate=0.0)
    if name == "tiny-causal":
        return Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                                sliding_window=64, query_pre_attn_scalar=8, pad_token_id=0, eos_token_id=1,
                                bos_token_id=1, layer_types=["sliding_attention", "full_attention"])
    raise SystemExit(f"unknown model {name!r}")


def build(name: str, device: torch.device) -> tuple[torch.nn.Module, Arch]:
    from transformers import AutoModelForCausalLM, T5ForConditionalGeneration
    config = model_config(name)
    torch.manual_seed(0)
    seq2seq = config.model_type == "t5"
    model = T5ForConditionalGeneration(config) if seq2seq else AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    return model.to(device).eval(), Arch("seq2seq" if seq2seq else "causal", config.model_type)


def episode_batches(episode: int, steps: int, args, vocab: int, seq2seq: bool) -> list[dict[str, torch.Tensor]]:
    """Episode `episode`'s random batches (its own generator: the same batches in every row)."""
    gen = torch.Generator().manual_seed(1000 + episode)
    batches = []
    for _ in range(steps):
        source = torch.randint(2, vocab, (args.batch_size, args.source_len), generator=gen)
        target = torch.randint(2, vocab, (args.batch_size, args.target_len), generator=gen)
        if seq2seq:
            batches.append({"input_ids": source, "attention_mask": torch.ones_like(source), "labels": target})
        else:
            ids = torch.cat([source, target], 1)
            labels = torch.cat([torch.full_like(source, IGNORE), target], 1)
            batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return batches


def stack_batches(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def prepared_proxy(base: torch.nn.Module, arch: Arch, seed: int, copy_fn: Callable = structure_copy):
    method = get_method("sparsefit", preset="paper")
    proxy = copy_fn(base)
    torch.manual_seed(seed)
    return method.prepare(proxy, arch)


def make_adamw(params, lr: float, fused: bool):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=fused or None)


class Meter:
    """Synchronised wall time and peak memory of one row."""

    def __init__(self, device: torch.device):
        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        import psutil
        return psutil.Process().memory_info().rss / 2**20


@dataclass
class Row:
    label: str
    episodes_at_once: int
    seconds_per_step: float | None  # one step of the row (all episodes trained together in it)
    peak_mb: float | None
    trained: list[dict[str, torch.Tensor]] | None = None
    note: str = ""
    projected_from: str | None = None


def train_single(base, arch, args, device, dtype, *, fused: bool, compile_model: bool, steps: int,
                 episode: int = 0) -> Row:
    """One episode the way sparsefit.train trains it (loss, clip, AdamW step), timed after warmup."""
    seq2seq = arch.kind == "seq2seq"
    meter = Meter(device)
    model = prepared_proxy(base, arch, seed=episode, copy_fn=copy.deepcopy).to(dtype=dtype)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_adamw(params, args.lr, fused)
    loss_fn = seq2seq_loss if seq2seq else causal_loss
    if compile_model:  # the loss function (model forward + loss) under torch.compile, as train.py compiles it
        try:
            loss_fn = torch.compile(loss_fn)
        except Exception as err:  # noqa: BLE001 -- reported in the row
            return Row("", 1, None, None, note=f"compile failed: {err.__class__.__name__}")
    batches = episode_batches(episode, args.warmup + steps, args, model.config.vocab_size, seq2seq)
    model.train()
    try:
        for i, batch in enumerate(batches):
            if i == args.warmup:
                meter.sync()
                started = time.perf_counter()
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = loss_fn(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        meter.sync()
    except Exception as err:  # noqa: BLE001 -- e.g. a compile error surfaces at the first call
        if not compile_model:
            raise
        return Row("", 1, None, None, note=f"compile failed: {str(err).splitlines()[0][:80]}")
    elapsed = time.perf_counter() - started
    trained = {n: p.detach().float().cpu() for n, p in model.named_parameters() if n in names}
    row = Row("", 1, elapsed / steps, meter.peak_mb(), trained=[trained])
    del model, optimizer
    return row


def train_batched(base, arch, args, device, dtype, k: int, *, steps: int) -> Row:
    """Episodes 0..k-1 trained together with sparsefit.batched (one frozen base, stacked trained tensors)."""
    seq2seq = arch.kind == "seq2seq"
    meter = Meter(device)
    base_cast = base if next(base.parameters()).dtype == dtype else copy.deepcopy(base).to(dtype=dtype)
    proxies = [prepared_proxy(base_cast, arch, seed=e) for e in range(k)]
    config = TrainConfig(lr=args.lr, steps=steps, batch_size=args.batch_size, max_grad_norm=1.0)
    original = {id(p): p.requires_grad for p in base_cast.parameters()}
    trainer = StackedTrainer(proxies[0], proxies, config, device, seq2seq)
    if device.type == "cuda":  # what make_optimizer gives on CUDA: the fused AdamW
        trainer.optimizer = make_adamw(list(trainer.stacked.values()), args.lr, fused=True)
    vocab = base.config.vocab_size
    per_episode = [episode_batches(e, args.warmup + steps, args, vocab, seq2seq) for e in range(k)]
    with trainer.active():
        for i in range(args.warmup + steps):
            if i == args.warmup:
                meter.sync()
                started = time.perf_counter()
            batch = {key: v.to(device) for key, v in stack_batches([b[i] for b in per_episode]).items()}
            trainer.step(batch)
        meter.sync()
    elapsed = time.perf_counter() - started
    for p in base_cast.parameters():
        p.requires_grad_(original[id(p)])
    trained = [{n: t.float().cpu() for n, t in trainer.trained(e).items()} for e in range(min(k, args.check))]
    row = Row("", k, elapsed / steps, meter.peak_mb(), trained=trained)
    del trainer, proxies
    return row


@torch.no_grad()
def generation_seconds(base, arch, args, device, dtype) -> float:
    """Greedy generation of --gen-items items (batches of 32, all max_new_tokens), scaled to 350 items."""
    model = base if next(base.parameters()).dtype == dtype else copy.deepcopy(base).to(dtype=dtype)
    gen = torch.Generator().manual_seed(7)
    batch = 32
    items = max(1, args.gen_items)
    meter = Meter(device)
    meter.sync()
    started = time.perf_counter()
    for start in range(0, items, batch):
        n = min(batch, items - start)
        ids = torch.randint(2, model.config.vocab_size, (n, args.source_len), generator=gen).to(device)
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                       min_new_tokens=args.new_tokens, do_sample=False, num_beams=1, use_cache=True,
                       pad_token_id=0)
    meter.sync()
    per_batch = (time.perf_counter() - started) / math.ceil(items / batch)
    return per_batch * math.ceil(PROTOCOL["eval_items"] / batch)


def max_difference(reference: list[dict[str, torch.Tensor]], other: list[dict[str, torch.Tensor]]) -> float:
    return max((other[e][n] - reference[e][n]).abs().max().item() for e in range(len(other)) for n in other[e])


def run_model(name: str, args, device: torch.device) -> list[str]:
    base, arch = build(name, device)
    low = torch.bfloat16 if device.type == "cuda" else torch.float32  # CPU rows stay fp32 (bf16 matmuls are slow)
    fused = device.type == "cuda"
    steps = args.steps
    print(f"\n{name} ({sum(p.numel() for p in base.parameters()) / 1e6:.0f}M params, {arch.kind}) on {device}: "
          f"{steps} timed steps per row after {args.warmup} warmup, batch {args.batch_size}, "
          f"{args.source_len}+{args.target_len} tokens", flush=True)
    rows: list[Row] = []
    row = train_single(base, arch, args, device, torch.float32, fused=False, compile_model=False, steps=steps)
    row.label = "(a) 1 episode eager fp32"
    rows.append(row)
    row = train_single(base, arch, args, device, low, fused=fused, compile_model=False, steps=steps)
    row.label = f"(b) 1 episode {'bf16 + fused AdamW' if fused else 'fp32 (CPU: no bf16/fused)'}"
    rows.append(row)
    if not args.no_compile:
        row = train_single(base, arch, args, device, low, fused=fused, compile_model=True, steps=steps)
        row.label = "(c) (b) + torch.compile"
        rows.append(row)
    # sequential reference for the batched rows: the first --check episodes one by one, same code as (b)
    reference = [rows[1].trained[0]] + [train_single(base, arch, args, device, low, fused=fused, compile_model=False,
                                                     steps=steps, episode=e).trained[0]
                                        for e in range(1, args.check)]
    seq = Row(f"seq {args.episodes} episodes", 1, rows[1].seconds_per_step, rows[1].peak_mb,
              projected_from="(b)")
    rows.append(seq)
    for k in args.k:
        k = min(k, args.episodes)
        try:
            row = train_batched(base, arch, args, device, low, k, steps=steps)
        except Exception as err:  # noqa: BLE001 -- out of memory at this K is a result, not a crash
            from sparsefit.batched import is_out_of_memory
            if not is_out_of_memory(err):
                raise
            gc.collect()
            torch.cuda.empty_cache() if device.type == "cuda" else None
            row = Row("", k, None, None, note="out of memory")
        row.label = f"batched K={k}"
        rows.append(row)
    gen_fp32 = generation_seconds(base, arch, args, device, torch.float32)
    gen_low = gen_fp32 if low == torch.float32 else generation_seconds(base, arch, args, device, low)
    return render(name, rows, reference, args, gen_fp32, gen_low)


def render(name: str, rows: list[Row], reference, args, gen_fp32: float, gen_low: float) -> list[str]:
    anchor = rows[0]
    total_episodes = PROTOCOL["datasets"] * PROTOCOL["episodes"]
    header = ["row", "episodes", "s/step", "300 steps s", "peak MB", "examples/s", "x (a) per episode",
              "FEB protocol min", "max|d| vs seq", "note"]
    lines = []
    for row in rows:
        if row.seconds_per_step is None:
            lines.append([row.label, str(row.episodes_at_once), *["-"] * 7, row.note])
            continue
        episodes_per_group = row.episodes_at_once
        groups_for_n = math.ceil(args.episodes / episodes_per_group)
        per_group_300 = row.seconds_per_step * PROTOCOL["steps"]
        wall_300 = per_group_300 * (groups_for_n if row.label.startswith(("seq", "batched")) else 1)
        per_episode = per_group_300 / episodes_per_group
        speedup = (anchor.seconds_per_step * PROTOCOL["steps"]) / per_episode
        examples = args.batch_size * episodes_per_group / row.seconds_per_step
        gen = gen_fp32 if row is anchor else gen_low
        protocol_min = (per_episode + gen) * total_episodes / 60
        diff = "-"
        if row.label.startswith("batched") and row.trained:
            diff = f"{max_difference(reference[: len(row.trained)], row.trained):.1e}"
        note = row.note or (f"{args.episodes} x {row.projected_from}, projected" if row.projected_from else "")
        lines.append([row.label, str(args.episodes if row.label.startswith(("seq", "batched")) else 1),
                      f"{row.seconds_per_step:.4f}", f"{wall_300:.1f}", f"{row.peak_mb:.0f}", f"{examples:.1f}",
                      f"{speedup:.2f}", f"{protocol_min:.1f}", diff, note])
    widths = [max(len(c) for c in col) for col in zip(header, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [f"[{name}] generation of {PROTOCOL['eval_items']} items: {gen_fp32:.1f} s fp32, {gen_low:.1f} s in the "
           f"rows' dtype (measured on {args.gen_items}, {args.new_tokens} new tokens each)",
           fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines)]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on CPU (checks the code and the equality)")
    parser.add_argument("--models", help="comma list: t5-large, gemma-3-270m, tiny-t5, tiny-causal")
    parser.add_argument("--steps", type=int, help="timed steps per row (default 20 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3 on CUDA, 1 on CPU)")
    parser.add_argument("--episodes", type=int, help="episodes per dataset (default 60; CPU 6)")
    parser.add_argument("--k", help="comma list of K for the batched rows (default 12,30,60; CPU 2,3,6)")
    parser.add_argument("--check", type=int, help="episodes compared with sequential runs (default 2; CPU all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--source-len", type=int, help="input tokens (default 128; CPU 16)")
    parser.add_argument("--target-len", type=int, help="target tokens (default 32; CPU 8)")
    parser.add_argument("--new-tokens", type=int, help="generated tokens per item (default 48; CPU 4)")
    parser.add_argument("--gen-items", type=int, help="items generated to time generation (default 64; CPU 8)")
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--no-compile", action="store_true", help="skip row (c)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    cpu = args.cpu or not torch.cuda.is_available()
    if not args.cpu and cpu:
        print("no CUDA GPU visible: running the --cpu table on tiny shapes")
    device = torch.device("cpu" if cpu else "cuda")
    defaults = dict(steps=(3, 20), warmup=(1, 3), episodes=(6, 60), k=("2,3,6", "12,30,60"), check=(6, 2),
                    source_len=(16, 128), target_len=(8, 32), new_tokens=(4, 48), gen_items=(8, 64),
                    models=("tiny-t5,tiny-causal", "t5-large,gemma-3-270m"))
    for key, (on_cpu, on_gpu) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, on_cpu if cpu else on_gpu)
    args.k = [int(k) for k in str(args.k).split(",")]
    args.check = min(args.check, args.episodes, max(args.k))
    if args.threads:
        torch.set_num_threads(args.threads)
    if cpu and args.lr == 3e-5:
        args.lr = 1e-2  # tiny random models: a large step so that equality is checked on moved tensors
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name() if not cpu else 'CPU'}; "
          f"FEB protocol = {PROTOCOL['datasets']} datasets x {PROTOCOL['episodes']} episodes x "
          f"({PROTOCOL['steps']} steps + {PROTOCOL['eval_items']} generations)")
    for name in args.models.split(","):
        print("\n".join(run_model(name.strip(), args, device)), flush=True)
    print("\nx (a) per episode: the anchor's time for 300 steps of one episode / this row's time per episode "
          "(group time / episodes at once). FEB protocol min: (training per episode + generation) x 240 "
          "episodes, one GPU. seq and batched rows train --episodes episodes; s/step is one step of the group.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
