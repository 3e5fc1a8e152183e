"""DSEE (Chen et al. 2021, "Dually Sparsity-Embedded Efficient tuning").

1. Sparse-embedded update. Every targeted projection (q and v by default) keeps its pretrained W frozen
   and learns W + scale * B A + S: a LoRA pair (B zero-initialised, so training starts from the base
   model) plus a sparse residual S that lives only on a fixed support Omega of `sparse_n` entries.
   Omega is chosen once, in `prepare`, from a GoDec-style decomposition W ~ L + S0 (L of rank
   `decomposition_rank`, S0 with exactly `sparse_n` non-zeros; alternate "L = best rank-r fit of W - S0"
   and "S0 = largest entries of W - L"): Omega is S0's support, i.e. the entries the low-rank part
   explains worst. S starts at zero and only its values on Omega are parameters, so it can never leave
   its support.
2. Sparse final weights. After `prune_at` x total steps the final weights are pruned once and training
   continues with the masks enforced in every forward pass ((W + BA + S) * M), so pruned weights stay
   exactly zero: `prune="unstructured"` removes the `prune_sparsity` share of smallest-magnitude final
   weights, globally across the blocks' linear layers; `prune="heads"` removes that share of attention
   heads (at least one kept per attention module), each scored by sum |BA + S| over its rows of the
   adapted projections (columns for o); a pruned head loses its q rows and o columns (and k/v rows when
   every query head sharing them is pruned). `prune="none"` skips the phase.

FLOPs saved (report()): see `linear_flops_report` -- zeros in the final linear weights over all linear
weights (lm_head included), i.e. the share of per-token linear-layer FLOPs a sparse kernel could skip;
attention-score products are not counted (pruned heads would save those too, so heads are undercounted).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.methods.base import Arch, SparseMethod, freeze_all, register_method
from sparsefit.methods.mask import (LinearWrapper, block_linears, check_options, linear_flops_report,
                                    linear_role, option_error, parse_roles, set_submodule)

_ATTENTION_ROLES = {"self", "cross"}
_TENSOR_SUFFIXES = ("lora_A", "lora_B", "sparse_values", "sparse_support", "prune_mask")


def randomized_low_rank(matrix: torch.Tensor, rank: int, generator: torch.Generator,
                        oversample: int = 8, power_iters: int = 2) -> torch.Tensor:
    """Best rank-`rank` approximation via a seeded randomized range finder (deterministic for a seed)."""
    sketch = torch.randn(matrix.shape[1], min(rank + oversample, min(matrix.shape)), generator=generator,
                         dtype=matrix.dtype).to(matrix.device)  # drawn on CPU: the same sketch on any device
    basis = matrix @ sketch
    for _ in range(power_iters):
        basis, _ = torch.linalg.qr(basis)
        basis = matrix @ (matrix.T @ basis)
    basis, _ = torch.linalg.qr(basis)
    u, s, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
    return (basis @ u[:, :rank]) * s[:rank] @ vh[:rank]


def godec_support(weight: torch.Tensor, rank: int, cardinality: int, iterations: int = 3,
                  seed: int = 0) -> torch.Tensor:
    """Flat indices (sorted, on CPU) of the sparse part's support in W ~ L (rank r) + S (card k), GoDec-style.
    Runs on W's device (fast on a GPU); the random sketches come from a seeded CPU generator."""
    matrix = weight.detach().float()
    generator = torch.Generator().manual_seed(seed)
    sparse_index = torch.empty(0, dtype=torch.long, device=matrix.device)
    for _ in range(iterations):
        sparse = torch.zeros_like(matrix).flatten()
        sparse[sparse_index] = matrix.flatten()[sparse_index]
        low_rank = randomized_low_rank(matrix - sparse.view_as(matrix), rank, generator)
        residual = (matrix - low_rank).flatten().abs()
        sparse_index = torch.topk(residual, cardinality, sorted=False).indices
    return torch.sort(sparse_index).values.cpu()


class DSEELinear(LinearWrapper):
    """Frozen W plus optional LoRA and sparse residual; optional pruning mask on the final weight."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, support: torch.Tensor | None):
        super().__init__(base)
        self.rank, self.scaling = rank, (alpha / rank if rank else 0.0)
        device = base.weight.device
        if rank:
            self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=device))
        if support is not None:
            self.register_buffer("sparse_support", support.to(device))
            self.sparse_values = nn.Parameter(torch.zeros(len(support), device=device))
        self.register_buffer("prune_mask", None)

    def delta(self) -> torch.Tensor:
        """BA * scale + S (zeros if neither is trained here)."""
        delta = torch.zeros_like(self.base.weight, dtype=torch.float32)
        if self.rank:
            delta = delta + (self.lora_B @ self.lora_A) * self.scaling
        if hasattr(self, "sparse_values"):
            delta = delta.flatten().index_add(0, self.sparse_support, self.sparse_values).view_as(delta)
        return delta

    def effective_weight(self) -> torch.Tensor:
        weight = self.base.weight
        if self.rank or hasattr(self, "sparse_values"):
            weight = weight + self.delta().to(weight.dtype)
        if self.prune_mask is not None:
            weight = weight * self.prune_mask.to(weight.dtype)
        return weight

    def state_key(self) -> tuple:
        tensors = [getattr(self, n, None) for n in ("lora_A", "lora_B", "sparse_values")]
        return (self.base.weight._version, *(t._version for t in tensors if t is not None),
                id(getattr(self, "sparse_support", None)), id(self.prune_mask))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.inference_weight(), self.base.bias)
        self.drop_inference_weight()
        return F.linear(x, self.effective_weight(), self.base.bias)


@register_method
class DSEE(SparseMethod):
    """Options: targets (projections for LoRA + sparse residual, 'q,v'), lora_r (8), lora_alpha (32),
    sparse_n (entries of S per matrix, 64), decomposition_rank (GoDec rank, 8), decomposition_iters (3),
    prune (none | unstructured | heads; 'unstructured'), prune_sparsity (0.3: share of final weights or
    heads removed), prune_at (fraction of total steps after which to prune, 0.5), prune_targets
    (blocks' linear layers to prune for 'unstructured': attn, self, cross, ffn; 'attn,ffn')."""

    name = "dsee"
    description = "DSEE: LoRA + sparse residual on a GoDec support, then magnitude pruning of final weights"
    DEFAULTS: dict[str, Any] = {"targets": "q,v", "lora_r": 8, "lora_alpha": 32, "sparse_n": 64,
                                "decomposition_rank": 8, "decomposition_iters": 3, "prune": "unstructured",
                                "prune_sparsity": 0.3, "prune_at": 0.5, "prune_targets": "attn,ffn"}

    def __init__(self, **options: Any):
        self.options = opts = check_options(self.name, options, self.DEFAULTS)
        self.projections = {p.strip() for p in str(opts["targets"]).split(",")}
        if not self.projections or not self.projections <= {"q", "k", "v", "o"}:
            raise option_error(self.name, "targets", f"targets must list projections among q,k,v,o, got "
                                                     f"{opts['targets']!r}")
        for key in ("lora_r", "sparse_n", "decomposition_rank", "decomposition_iters"):
            if not isinstance(opts[key], int) or opts[key] < 0:
                raise option_error(self.name, key, f"{key} must be a non-negative integer, got {opts[key]!r}")
        if opts["lora_r"] == 0 and opts["sparse_n"] == 0:
            raise option_error(self.name, "lora_r", "lora_r and sparse_n are both 0: nothing would be trained")
        if opts["prune"] not in ("none", "unstructured", "heads"):
            raise option_error(self.name, "prune", f"prune must be none, unstructured or heads, got "
                                                   f"{opts['prune']!r}")
        if not isinstance(opts["prune_sparsity"], (int, float)) or not 0.0 <= opts["prune_sparsity"] < 1.0:
            raise option_error(self.name, "prune_sparsity", "prune_sparsity must be in [0, 1)")
        if not 0.0 <= float(opts["prune_at"]) <= 1.0:
            raise option_error(self.name, "prune_at", "prune_at must be in [0, 1]")
        self.prune_roles = parse_roles(self.name, "prune_targets", opts["prune_targets"])
        self.pruned = False

    def _wrappers(self, model: nn.Module) -> dict[str, DSEELinear]:
        return {n: m for n, m in model.named_modules() if isinstance(m, DSEELinear)}

    def prepare(self, model: nn.Module, arch: Arch) -> nn.Module:
        freeze_all(model)
        opts = self.options
        prune_roles = _ATTENTION_ROLES if opts["prune"] == "heads" else self.prune_roles
        roles = _ATTENTION_ROLES | (prune_roles if opts["prune"] != "none" else set())
        adapted = 0
        for name, linear in block_linears(model, roles):
            role, projection = linear_role(name)
            adapt = role in _ATTENTION_ROLES and projection in self.projections
            if not adapt and (opts["prune"] == "none" or role not in prune_roles):
                continue
            support = None
            if adapt and opts["sparse_n"]:
                support = godec_support(linear.weight, opts["decomposition_rank"],
                                        min(opts["sparse_n"], linear.weight.numel()), opts["decomposition_iters"])
            set_submodule(model, name, DSEELinear(linear, opts["lora_r"] if adapt else 0,
                                                  float(opts["lora_alpha"]), support))
            adapted += adapt
        if not adapted:
            raise SparseFitError(f"method 'dsee' found no attention projections {sorted(self.projections)} in "
                                 f"this {arch.model_type} model")
        self.pruned = False
        return model

    # --- pruning phase ------------------------------------------------------------------------------
    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        if self.options["prune"] == "none" or self.pruned:
            return
        if step >= max(1, round(float(self.options["prune_at"]) * total_steps)):
            self.prune(model)

    @torch.no_grad()
    def prune(self, model: nn.Module) -> None:
        """Prune the final weights once (see the module docstring); later forwards enforce the masks."""
        if self.options["prune"] == "heads":
            self._prune_heads(model)
        else:
            self._prune_unstructured(model)
        self.pruned = True

    def _prune_unstructured(self, model: nn.Module) -> None:
        wrappers = [w for n, w in self._wrappers(model).items() if linear_role(n)[0] in self.prune_roles]
        magnitudes = torch.cat([w.effective_weight().abs().flatten().float() for w in wrappers])
        n_prune = round(float(self.options["prune_sparsity"]) * magnitudes.numel())
        if n_prune == 0:
            return
        threshold = torch.kthvalue(magnitudes, n_prune).values
        for wrapper in wrappers:
            wrapper.prune_mask = wrapper.effective_weight().abs().float() > threshold.to(wrapper.base.weight.device)

    def _prune_heads(self, model: nn.Module) -> None:
        wrappers = self._wrappers(model)
        modules = _attention_modules(wrappers)
        head_dims = {attn: _head_dim(model, attn) for attn in modules}
        scores = [(score, attn, head) for attn, parts in modules.items()
                  for head, score in enumerate(_head_scores(parts, head_dims[attn]))]
        n_prune = round(float(self.options["prune_sparsity"]) * len(scores))
        pruned: dict[str, set[int]] = {attn: set() for attn in modules}
        for score, attn, head in sorted(scores, key=lambda item: item[0]):
            if n_prune == 0:
                break
            if len(pruned[attn]) + 1 < _head_counts(modules[attn], head_dims[attn])[0]:  # keep >= 1 head
                pruned[attn].add(head)
                n_prune -= 1
        for attn, heads in pruned.items():
            _apply_head_mask(modules[attn], heads, head_dims[attn])

    # --- save / load / merge -------------------------------------------------------------------------
    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for name, wrapper in self._wrappers(model).items():
            for suffix in _TENSOR_SUFFIXES:
                value = getattr(wrapper, suffix, None)
                if value is not None:
                    state[f"{name}.{suffix}"] = value.detach().cpu().contiguous()
        return state

    def load_trained(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        wrappers = self._wrappers(model)
        for key in tensors:
            module_name, _, suffix = key.rpartition(".")
            if module_name not in wrappers or suffix not in _TENSOR_SUFFIXES:
                raise SparseFitError(f"saved tensor {key!r} does not fit this model; was the delta trained with "
                                     f"method 'dsee' and the same options on this base model?")
        with torch.no_grad():
            for name, wrapper in wrappers.items():
                for suffix in ("lora_A", "lora_B", "sparse_values"):
                    if f"{name}.{suffix}" in tensors:
                        param = getattr(wrapper, suffix)
                        value = tensors[f"{name}.{suffix}"]
                        if param.shape != value.shape:
                            raise SparseFitError(f"tensor '{name}.{suffix}' has shape {tuple(value.shape)} in "
                                                 f"the delta but {tuple(param.shape)} in the model")
                        param.copy_(value)
                if f"{name}.sparse_support" in tensors:
                    wrapper.sparse_support = tensors[f"{name}.sparse_support"].to(wrapper.base.weight.device)
                if f"{name}.prune_mask" in tensors:
                    wrapper.prune_mask = tensors[f"{name}.prune_mask"].to(wrapper.base.weight.device)
                    self.pruned = True

    def merge(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for name, wrapper in self._wrappers(model).items():
                wrapper.base.weight.copy_(wrapper.effective_weight())
                set_submodule(model, name, wrapper.base)
        return model

    def selection(self) -> dict[str, Any]:
        return {**{k: self.options[k] for k in self.DEFAULTS}, "decomposition": "GoDec (randomized SVD, seed 0)"}

    def report(self, model: nn.Module) -> dict[str, Any]:
        wrappers = self._wrappers(model).values()
        return {"pruned": self.pruned,
                "sparse_residual_entries": sum(len(w.sparse_support) for w in wrappers
                                               if hasattr(w, "sparse_support")),
                "lora_parameters": sum(w.lora_A.numel() + w.lora_B.numel() for w in wrappers if w.rank),
                **linear_flops_report(model)}


# --- attention-head helpers ----------------------------------------------------------------------------
def _attention_modules(wrappers: dict[str, DSEELinear]) -> dict[str, dict[str, DSEELinear]]:
    """{attention module name: {'q': wrapper, 'k': ..., 'v': ..., 'o': ...}}."""
    modules: dict[str, dict[str, DSEELinear]] = {}
    for name, wrapper in wrappers.items():
        role, projection = linear_role(name)
        if role in _ATTENTION_ROLES and projection:
            modules.setdefault(name.rpartition(".")[0], {})[projection] = wrapper
    incomplete = [n for n, parts in modules.items() if set(parts) != {"q", "k", "v", "o"}]
    if incomplete:
        raise SparseFitError(f"head pruning needs q, k, v and o in every attention module; {incomplete[0]} "
                             f"has only {sorted(modules[incomplete[0]])}")
    return modules


def _head_dim(model: nn.Module, attention_name: str) -> int:
    module = model.get_submodule(attention_name)
    head_dim = getattr(module, "head_dim", None) or getattr(module, "key_value_proj_dim", None)
    if not head_dim:
        raise SparseFitError(f"head pruning: cannot tell the head size of {attention_name} "
                             f"({type(module).__name__} has no head_dim / key_value_proj_dim)")
    return int(head_dim)


def _head_counts(parts: dict[str, DSEELinear], head_dim: int) -> tuple[int, int, int]:
    """(query heads, key/value heads, head dim); k/v have fewer heads under grouped-query attention."""
    return parts["q"].out_features // head_dim, parts["k"].out_features // head_dim, head_dim


def _head_scores(parts: dict[str, DSEELinear], head_dim: int) -> list[float]:
    """sum |BA + S| over each query head's slice of the adapted projections."""
    n_heads, n_kv, head_dim = _head_counts(parts, head_dim)
    group = n_heads // n_kv
    scores = [0.0] * n_heads
    for projection, wrapper in parts.items():
        if not (wrapper.rank or hasattr(wrapper, "sparse_values")):
            continue
        delta = wrapper.delta().abs()
        for head in range(n_heads):
            if projection == "q":
                scores[head] += float(delta[head * head_dim:(head + 1) * head_dim].sum())
            elif projection == "o":
                scores[head] += float(delta[:, head * head_dim:(head + 1) * head_dim].sum())
            else:  # k / v rows are shared by a group of query heads
                kv = head // group
                scores[head] += float(delta[kv * head_dim:(kv + 1) * head_dim].sum()) / group
    return scores


def _apply_head_mask(parts: dict[str, DSEELinear], heads: set[int], head_dim: int) -> None:
    n_heads, n_kv, head_dim = _head_counts(parts, head_dim)
    group = n_heads // n_kv
    for projection, wrapper in parts.items():
        mask = torch.ones_like(wrapper.base.weight, dtype=torch.bool)
        if projection in ("q", "o"):
            for head in heads:
                rows = slice(head * head_dim, (head + 1) * head_dim)
                if projection == "q":
                    mask[rows] = False
                else:
                    mask[:, rows] = False
        else:
            for kv in range(n_kv):
                if all(h in heads for h in range(kv * group, (kv + 1) * group)):
                    mask[kv * head_dim:(kv + 1) * head_dim] = False
        wrapper.prune_mask = mask
