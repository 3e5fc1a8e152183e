"""N:M export: prune a trained model's linear weights to 2:4 or V:N:M, measure what it costs and gains.

Patterns (along the input dimension, the K of the matmul, as sparse tensor cores need):
- "2:4": in every group of 4 consecutive weights of a row keep the 2 largest |w| (sparsity 50%).
- "V:2:M" (VENOM, Castro et al. 2023), e.g. "64:2:8": split the matrix into V x M blocks; in each block keep
  the 4 columns with the largest L1 norm over the block's V rows, then 2:4 inside those 4 columns in every
  row (sparsity 1 - 2/M). Every group of 4 consecutive columns then holds at most 2 non-zeros per row,
  so a V:2:M matrix is also a valid 2:4 matrix for `torch.sparse.to_sparse_semi_structured` (which only
  exploits the 2:4 part; the V:N:M speed-up needs dedicated kernels).

Layers whose shape does not divide into the pattern are left dense and listed in the report.
Latency is measured only on CUDA (`to_sparse_semi_structured`, fp16); elsewhere the report says it was not
measured -- never an estimate.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.methods.mask import block_linears, parse_roles


@dataclass(frozen=True)
class NMPattern:
    n: int
    m: int
    v: int | None = None  # rows per block for V:N:M; None = plain N:M

    @property
    def sparsity(self) -> float:
        return 1.0 - self.n / self.m if self.v is None else 1.0 - 2.0 / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.v is None else f"{self.v}:{self.n}:{self.m}"


def parse_pattern(spec: str) -> NMPattern:
    """'2:4' -> N:M; 'V:2:M' (M >= 4, a multiple of 4) -> V:N:M."""
    try:
        parts = [int(p) for p in str(spec).split(":")]
    except ValueError:
        parts = []
    if len(parts) == 2 and 0 < parts[0] < parts[1]:
        return NMPattern(n=parts[0], m=parts[1])
    if len(parts) == 3 and parts[0] > 0 and parts[1] == 2 and parts[2] >= 4 and parts[2] % 4 == 0:
        return NMPattern(n=2, m=parts[2], v=parts[0])
    raise SparseFitError(f"bad sparsity pattern {spec!r}: use N:M (e.g. 2:4) or V:2:M with M a multiple of 4 "
                         f"(e.g. 64:2:8)", field="pattern")


def fits(shape: tuple[int, ...], pattern: NMPattern) -> bool:
    rows, cols = shape
    return cols % pattern.m == 0 and (pattern.v is None or rows % pattern.v == 0)


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n largest |w| in every group of m consecutive weights of each row."""
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // m, m)
    keep = torch.topk(groups, n, dim=-1).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True).reshape(rows, cols)


def vnm_mask(weight: torch.Tensor, v: int, m: int) -> torch.Tensor:
    """V:2:M: per V x M block the 4 strongest columns (L1 over the block's rows), then 2:4 inside them."""
    rows, cols = weight.shape
    magnitude = weight.detach().abs().float().reshape(rows // v, v, cols // m, m)
    column_strength = magnitude.sum(dim=1, keepdim=True)  # (row blocks, 1, col blocks, m)
    chosen = torch.topk(column_strength, 4, dim=-1).indices
    column_mask = torch.zeros_like(column_strength, dtype=torch.bool).scatter_(-1, chosen, True)
    candidates = magnitude.masked_fill(~column_mask, -1.0)  # |w| >= 0 > -1: unchosen columns lose
    keep = torch.topk(candidates, 2, dim=-1).indices
    return torch.zeros_like(magnitude, dtype=torch.bool).scatter_(-1, keep, True).reshape(rows, cols)


def pattern_mask(weight: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    if pattern.v is None:
        return nm_mask(weight, pattern.n, pattern.m)
    return vnm_mask(weight, pattern.v, pattern.m)


def satisfies(weight: torch.Tensor, pattern: NMPattern) -> bool:
    """Does the non-zero pattern of `weight` obey the pattern (at most, not exactly, the kept counts)?"""
    rows, cols = weight.shape
    nonzero = weight != 0
    if pattern.v is None:
        return bool((nonzero.reshape(rows, cols // pattern.m, pattern.m).sum(-1) <= pattern.n).all())
    blocks = nonzero.reshape(rows // pattern.v, pattern.v, cols // pattern.m, pattern.m)
    columns_used = blocks.any(dim=1).sum(-1)  # distinct non-zero columns per block
    per_row = blocks.sum(-1)  # non-zeros per row per block
    return bool((columns_used <= 4).all() and (per_row <= 2).all())


@dataclass
class PruneReport:
    pattern: str
    pruned_layers: list[str] = field(default_factory=list)
    skipped_layers: dict[str, str] = field(default_factory=dict)  # name -> why
    pruned_weights: int = 0
    zeros: int = 0

    @property
    def sparsity(self) -> float:
        return self.zeros / self.pruned_weights if self.pruned_weights else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sparsity": self.sparsity}


@torch.no_grad()
def prune_model(model: nn.Module, pattern: NMPattern | str, targets: str = "attn,ffn") -> PruneReport:
    """Prune the blocks' nn.Linear weights in place (lm_head and embeddings stay dense)."""
    pattern = parse_pattern(pattern) if isinstance(pattern, str) else pattern
    report = PruneReport(pattern=str(pattern))
    for name, linear in block_linears(model, parse_roles("nm-export", "targets", targets)):
        shape = tuple(linear.weight.shape)
        if not fits(shape, pattern):
            report.skipped_layers[name] = f"shape {shape} does not divide into {pattern}"
            continue
        linear.weight.mul_(pattern_mask(linear.weight, pattern).to(linear.weight.dtype))
        report.pruned_layers.append(name)
        report.pruned_weights += linear.weight.numel()
        report.zeros += int((linear.weight == 0).sum())
    if not report.pruned_layers:
        raise SparseFitError(f"no linear layer of this model fits the pattern {pattern}", field="pattern")
    return report


# --- latency (CUDA only) -------------------------------------------------------------------------------
def _median_ms(fn, repeats: int = 50, warmup: int = 10) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def time_semi_structured(model: nn.Module, layer_names: list[str], tokens: int = 2048) -> dict[str, Any]:
    """Per distinct weight shape of the pruned layers: dense vs `to_sparse_semi_structured` F.linear
    latency (fp16, `tokens` rows of input, median of 50 CUDA-event timings)."""
    if not torch.cuda.is_available():
        return {"measured": False, "reason": "CUDA is not available here: latency was not measured"}
    from torch.sparse import to_sparse_semi_structured
    shapes: dict[tuple[int, int], torch.Tensor] = {}
    for name in layer_names:
        weight = model.get_submodule(name).weight
        shapes.setdefault(tuple(weight.shape), weight.detach())
    rows = []
    for shape, weight in sorted(shapes.items()):
        dense = weight.to("cuda", torch.float16)
        x = torch.randn(tokens, shape[1], device="cuda", dtype=torch.float16)
        row: dict[str, Any] = {"shape": list(shape), "tokens": tokens}
        row["dense_ms"] = _median_ms(lambda: F.linear(x, dense))
        try:
            sparse = to_sparse_semi_structured(dense)
            row["sparse_ms"] = _median_ms(lambda: F.linear(x, sparse))
            row["max_abs_diff"] = float((F.linear(x, sparse) - F.linear(x, dense)).abs().max())
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
        except (RuntimeError, ValueError) as err:  # unsupported shape / GPU: say so, do not guess
            row["error"] = str(err).splitlines()[0][:200]
        rows.append(row)
    return {"measured": True, "device": torch.cuda.get_device_name(), "dtype": "float16", "shapes": rows}


# --- export of a trained run --------------------------------------------------------------------------
def export_run(run_dir: str | Path, pattern: str, out_dir: str | Path | None = None, *, targets: str = "attn,ffn",
               evaluate: bool = True, n_eval: int | None = None, save_model: bool = False,
               progress: bool = True, device: str = "auto", dtype: str | None = None) -> dict[str, Any]:
    """Load a run, merge its delta, prune to `pattern`, re-evaluate on the episode's eval set, time on CUDA.

    Writes nm_report.json (and predictions.jsonl of the pruned model when evaluating) into `out_dir`
    (default: <run_dir>/nm-<pattern>). The dense numbers come from the run's results.json, or are
    recomputed when `n_eval` changes the eval set. The model loads on `device` in `dtype` (None: the run's).
    """
    from sparsefit.checkpoint import load_delta
    run_dir = Path(run_dir)
    parsed = parse_pattern(pattern)
    out = Path(out_dir) if out_dir else run_dir / f"nm-{str(parsed).replace(':', '-')}"
    backbone, model, method, manifest = load_delta(run_dir, device=device, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    model = method.merge(model)
    model.eval()
    report: dict[str, Any] = {"run": str(run_dir), "out": str(out), "method": manifest.get("method"),
                              "pattern": str(parsed)}
    dense = _evaluate(backbone, model, run_dir, n_eval, progress) if evaluate and n_eval else None
    if evaluate and dense is None:
        dense = _results_summary(run_dir)
    pruning = prune_model(model, parsed, targets)
    report["pruning"] = pruning.to_dict()
    if evaluate:
        sparse = _evaluate(backbone, model, run_dir, n_eval, progress, out / "predictions.jsonl")
        report["dense"], report["pruned"] = dense, sparse
        report["accuracy_cost"] = (dense["accuracy"] - sparse["accuracy"]
                                   if dense and dense.get("accuracy") is not None else None)
    report["latency"] = time_semi_structured(model, pruning.pruned_layers)
    if save_model:
        model.save_pretrained(out / "model")
        backbone.tokenizer.save_pretrained(out / "model")
    (out / "nm_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return report


_SUMMARY_KEYS = ("accuracy", "nbertscore", "bertscore_all", "bertscore_correct", "bleu", "meteor", "n_eval")


def _results_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text(encoding="utf-8"))
    return {k: results.get(k) for k in _SUMMARY_KEYS}


def _evaluate(backbone, model, run_dir: Path, n_eval: int | None, progress: bool,
              predictions_path: Path | None = None) -> dict[str, Any]:
    """Generation + metrics on the run's own eval episode (same config, same seed)."""
    from sparsefit.config import load_run_config
    from sparsefit.episodes import sample_episode
    from sparsefit.predictions import write_predictions
    from sparsefit.runner import build_records, load_pools, predict_examples, score
    config = load_run_config(run_dir / "config.json")
    if n_eval:
        config.n_eval = n_eval
    train_pool, eval_pool = load_pools(config)
    episode = sample_episode(config.dataset, train_pool, eval_pool, config.seed, config.n_train, config.n_eval)
    prompts, generations = predict_examples(backbone, model, episode.eval, config, "", progress)
    scores, summary = score(episode.eval, generations, config, backbone.device)
    if predictions_path is not None:
        config.method = f"{config.method}+nm"
        write_predictions(predictions_path, build_records(episode.eval, prompts, generations, scores, config, None))
    return {**{k: summary.get(k) for k in _SUMMARY_KEYS if k in summary}, "n_eval": len(episode.eval)}
