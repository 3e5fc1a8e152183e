"""Mask training ("sparse and robust subnetworks"): learn which frozen weights to keep.

Every targeted linear weight W stays frozen. Each weight gets a real-valued score, initialised from |W|;
the forward pass uses W * m where m is the binary mask of the per-matrix top-k scores ("local sparsity":
every matrix has exactly round(sparsity * numel) zeros). The backward pass sends the mask's gradient
straight through to the scores (m + s - s.detach(): the value is m, the gradient is identity). Only the
scores are trained. The sparsity follows a constant or cubic (Zhu & Gupta 2017) schedule that is enforced
at every step: the mask is recomputed whenever the scores change (the optimizer's in-place update bumps
their version counter) or the schedule moves.

Optional product-of-experts loss (Clark et al. 2019, used by the robust-subnetwork papers): at the label
positions of the target, the loss is CE(log_softmax(log_softmax(f(x)) + log p_bias(x)), y) with a frozen
bias model. For generation tasks the bias model's label distribution is its next-token distribution at
the target's *label* tokens under teacher forcing (the tokens before the first " because "), given the
same input; explanation tokens keep the plain cross-entropy. The bias model must share the tokenizer
(same vocabulary); a typical one is a run trained on partial inputs (e.g. hypothesis-only e-SNLI), passed
as its run folder, or any model id / path that `sparsefit.backbones.load_backbone` accepts.

The helpers at the top (`linear_role`, `block_linears`, `check_options`, `linear_flops_report`) are shared
with DSEE and the N:M export.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.methods.base import Arch, LossFn, SparseMethod, freeze_all, register_method

_CROSS_MARKERS = ("EncDecAttention", "cross_attn", "encoder_attn")
_SELF_MARKERS = ("SelfAttention", "self_attn")
_FFN_MARKERS = ("DenseReluDense", "mlp", "feed_forward")
_PROJECTIONS = {"q": "q", "k": "k", "v": "v", "o": "o", "q_proj": "q", "k_proj": "k", "v_proj": "v",
                "o_proj": "o"}
ROLE_GROUPS = {"attn": {"self", "cross"}, "self": {"self"}, "cross": {"cross"}, "ffn": {"ffn"}}


# --- shared helpers ------------------------------------------------------------------------------------
def check_options(method: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Merge options over defaults; an unknown name is an error that names it (and the closest match)."""
    for key in options:
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SparseFitError(f"method '{method}' has no option {key!r}{hint}; options: "
                                 f"{', '.join(sorted(defaults))}", field=f"method_options.{key}")
    return {**defaults, **options}


def option_error(method: str, key: str, message: str) -> SparseFitError:
    return SparseFitError(f"method '{method}': {message}", field=f"method_options.{key}")


def linear_role(name: str) -> tuple[str, str | None]:
    """(role, projection) of a linear layer from its module name: role is self / cross / ffn / other,
    projection is q / k / v / o for attention projections (T5 `.q`, decoder-only `.q_proj`)."""
    parts = name.split(".")
    projection = _PROJECTIONS.get(parts[-1])
    if any(marker in parts for marker in _CROSS_MARKERS):
        return "cross", projection
    if any(marker in parts for marker in _SELF_MARKERS):
        return "self", projection
    if any(marker in parts for marker in _FFN_MARKERS):
        return "ffn", None
    return "other", None


def parse_roles(method: str, key: str, spec: str) -> set[str]:
    """'attn,ffn' -> {'self', 'cross', 'ffn'}."""
    roles: set[str] = set()
    for token in (t.strip() for t in str(spec).split(",")):
        if token not in ROLE_GROUPS:
            raise option_error(method, key, f"unknown target {token!r} in {spec!r}; use a comma-separated "
                                            f"list of {', '.join(ROLE_GROUPS)}")
        roles |= ROLE_GROUPS[token]
    return roles


def block_linears(model: nn.Module, roles: set[str]) -> list[tuple[str, nn.Linear]]:
    """The transformer blocks' linear layers with one of `roles` (never lm_head or embeddings)."""
    return [(name, module) for name, module in model.named_modules()
            if type(module) is nn.Linear and linear_role(name)[0] in roles]


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@torch.no_grad()
def linear_flops_report(model: nn.Module, effective_weights: Iterable[torch.Tensor] | None = None) -> dict[str, Any]:
    """Zeros among all linear weights and the share of per-token linear FLOPs they save.

    FLOPs are counted for the linear layers only: a token through an (out x in) matrix costs 2*out*in
    multiply-adds when dense and 2*nnz when the zeros are skipped, so the saved share is
    zeros / all linear weights (lm_head included in the total). Attention-score products (QK^T, AV),
    norms and embedding look-ups are not counted; encoder and decoder are weighted as if every token
    passed every layer once. Skipping zeros needs a sparse kernel: these are potential savings.
    """
    total = zeros = 0
    wrapped = {id(m.base) for m in model.modules() if isinstance(m, LinearWrapper)}
    for module in model.modules():
        weight = None
        if isinstance(module, LinearWrapper):
            weight = module.effective_weight()
        elif type(module) is nn.Linear and id(module) not in wrapped:
            weight = module.weight
        if weight is None:
            continue
        total += weight.numel()
        zeros += int((weight == 0).sum())
    return {"linear_weights": total, "linear_zeros": zeros,
            "linear_sparsity": zeros / total if total else 0.0,
            "flops_saved_percent": 100.0 * zeros / total if total else 0.0}


class LinearWrapper(nn.Module):
    """Base for modules that replace an nn.Linear: models read `.weight` (e.g. T5 checks its dtype)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def effective_weight(self) -> torch.Tensor:
        raise NotImplementedError

    def state_key(self) -> tuple:
        """Changes whenever effective_weight() would: tensor versions (bumped by in-place updates) and ids."""
        raise NotImplementedError

    def inference_weight(self) -> torch.Tensor:
        """effective_weight(), computed once per state for no-grad forwards (generation runs many)."""
        key = self.state_key()
        if getattr(self, "_inference_key", None) != key:
            self._inference_weight = self.effective_weight().detach()
            self._inference_key = key
        return self._inference_weight

    def drop_inference_weight(self) -> None:
        self._inference_weight, self._inference_key = None, None


# --- the method ---------------------------------------------------------------------------------------
class MaskedLinear(LinearWrapper):
    """A frozen nn.Linear whose weight is multiplied by the top-k mask of learned scores."""

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.mask_scores = nn.Parameter(base.weight.detach().abs().clone().float())
        self.keep = base.weight.numel()
        self.register_buffer("mask", torch.ones_like(base.weight, dtype=torch.bool), persistent=False)
        self._mask_key: tuple[int, int] | None = None

    def set_sparsity(self, sparsity: float) -> None:
        self.keep = self.base.weight.numel() - round(sparsity * self.base.weight.numel())

    def current_mask(self) -> torch.Tensor:
        key = (self.mask_scores._version, self.keep)
        if key != self._mask_key:
            with torch.no_grad():
                keep_index = torch.topk(self.mask_scores.flatten(), self.keep, sorted=False).indices
                mask = torch.zeros(self.mask_scores.numel(), dtype=torch.bool, device=self.mask_scores.device)
                mask[keep_index] = True
                self.mask = mask.view_as(self.mask_scores)
            self._mask_key = key
        return self.mask

    def use_mask(self, mask: torch.Tensor) -> None:
        """Adopt a saved mask as is (so loading never depends on tie-breaking in top-k)."""
        self.mask = mask.to(device=self.mask_scores.device, dtype=torch.bool).view_as(self.mask_scores)
        self.keep = int(self.mask.sum())
        self._mask_key = (self.mask_scores._version, self.keep)

    def effective_weight(self) -> torch.Tensor:
        return self.base.weight * self.current_mask().to(self.base.weight.dtype)

    def state_key(self) -> tuple:
        self.current_mask()
        return (self._mask_key, id(self.mask), self.base.weight._version)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return F.linear(x, self.inference_weight(), self.base.bias)
        self.drop_inference_weight()
        mask = self.current_mask().to(self.base.weight.dtype)
        if self.mask_scores.requires_grad:
            scores = self.mask_scores.to(mask.dtype)
            mask = mask + (scores - scores.detach())  # value: the binary mask; gradient: straight through
        return F.linear(x, self.base.weight * mask, self.base.bias)


def cubic_sparsity(step: int, total_steps: int, initial: float, final: float, end_fraction: float) -> float:
    """Zhu & Gupta's schedule: final + (initial - final) * (1 - t / T_end)^3, then constant."""
    end = max(1.0, end_fraction * total_steps)
    progress = min(step / end, 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


@register_method
class MaskTraining(SparseMethod):
    """Options: sparsity (final share of zeros per matrix, 0.5), schedule (constant | cubic),
    initial_sparsity (cubic start, 0.0), schedule_end (fraction of steps where cubic reaches the final
    sparsity, 0.8), targets (attn, self, cross, ffn, comma-separated; 'attn,ffn'), poe_bias_model (run
    folder, model id or path of a frozen bias model; none = plain loss), separator (' because')."""

    name = "mask"
    description = "mask training: frozen weights, learned top-k masks per matrix (sparse and robust subnetworks)"
    DEFAULTS: dict[str, Any] = {"sparsity": 0.5, "schedule": "constant", "initial_sparsity": 0.0,
                                "schedule_end": 0.8, "targets": "attn,ffn", "poe_bias_model": None,
                                "separator": " because"}

    def __init__(self, **options: Any):
        self.options = check_options(self.name, options, self.DEFAULTS)
        for key in ("sparsity", "initial_sparsity"):
            value = self.options[key]
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise option_error(self.name, key, f"{key} must be a number in [0, 1), got {value!r}")
        if self.options["schedule"] not in ("constant", "cubic"):
            raise option_error(self.name, "schedule", f"schedule must be 'constant' or 'cubic', got "
                                                      f"{self.options['schedule']!r}")
        if not 0.0 < float(self.options["schedule_end"]) <= 1.0:
            raise option_error(self.name, "schedule_end", "schedule_end must be in (0, 1]")
        self.roles = parse_roles(self.name, "targets", self.options["targets"])
        self.bias_model: nn.Module | None = None
        self.separator_ids: list[int] | None = None
        self.arch: Arch | None = None
        self.current_sparsity = self._sparsity_at(0, 1)

    # --- schedule -------------------------------------------------------------------------------
    def _sparsity_at(self, step: int, total_steps: int) -> float:
        final = float(self.options["sparsity"])
        if self.options["schedule"] == "constant":
            return final
        return cubic_sparsity(step, total_steps, float(self.options["initial_sparsity"]), final,
                              float(self.options["schedule_end"]))

    def _masked(self, model: nn.Module) -> list[tuple[str, MaskedLinear]]:
        return [(n, m) for n, m in model.named_modules() if isinstance(m, MaskedLinear)]

    def prepare(self, model: nn.Module, arch: Arch) -> nn.Module:
        self.arch = arch
        freeze_all(model)
        targets = block_linears(model, self.roles)
        if not targets:
            raise SparseFitError(f"method 'mask' found no linear layers for targets "
                                 f"{self.options['targets']!r} in this {arch.model_type} model")
        for name, linear in targets:
            wrapper = MaskedLinear(linear)
            wrapper.set_sparsity(self.current_sparsity)
            set_submodule(model, name, wrapper)
        if self.options["poe_bias_model"] is not None and self.bias_model is None:
            self.bias_model = self._load_bias_model(self.options["poe_bias_model"])
        return model

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        self.current_sparsity = self._sparsity_at(step, total_steps)
        for _, wrapper in self._masked(model):
            wrapper.set_sparsity(self.current_sparsity)
            wrapper.current_mask()

    # --- product of experts ----------------------------------------------------------------------
    def _load_bias_model(self, spec: Any) -> nn.Module:
        if isinstance(spec, nn.Module):
            model = spec
        elif (Path(str(spec)) / "manifest.json").is_file():
            from sparsefit.checkpoint import load_delta
            backbone, model, *_ = load_delta(Path(str(spec)))
            self._set_separator(backbone.tokenizer)
        else:
            from sparsefit.backbones import load_backbone
            backbone = load_backbone(str(spec))
            model = backbone.model
            self._set_separator(backbone.tokenizer)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    def _set_separator(self, tokenizer: Any) -> None:
        self.separator_ids = list(tokenizer(self.options["separator"], add_special_tokens=False)["input_ids"])

    def set_bias_model(self, model: nn.Module, separator_ids: list[int] | None) -> None:
        """Programmatic alternative to the `poe_bias_model` option (e.g. a model already in memory)."""
        self.bias_model = self._load_bias_model(model)
        self.separator_ids = separator_ids

    def label_positions(self, labels: torch.Tensor) -> torch.Tensor:
        """Target positions before the first separator (the label tokens); the whole target if absent."""
        valid = labels != -100
        if not self.separator_ids:
            return valid
        sep = torch.tensor(self.separator_ids, device=labels.device)
        positions = torch.zeros_like(valid)
        for row in range(labels.shape[0]):
            windows = labels[row].unfold(0, len(sep), 1) if labels.shape[1] >= len(sep) else labels[row][:0]
            hits = (windows == sep).all(dim=1).nonzero()
            end = int(hits[0]) if len(hits) else labels.shape[1]
            positions[row, :end] = valid[row, :end]
        return positions

    def training_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], default_loss: LossFn) -> torch.Tensor:
        if self.bias_model is None:
            return default_loss(model, batch)
        if "labels" not in batch:
            raise SparseFitError("the product-of-experts loss needs 'labels' in the training batch")
        labels = batch["labels"]
        if self.bias_model is not None and next(self.bias_model.parameters()).device != labels.device:
            self.bias_model.to(labels.device)
        if self.arch is not None and self.arch.kind == "seq2seq":
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
            logits = model(**inputs).logits.flatten(0, 1)
            with torch.no_grad():
                bias_logits = self.bias_model(**inputs).logits.flatten(0, 1)
            positions = self.label_positions(labels).flatten()
            labels = labels.flatten()
        else:  # causal: logits at t predict token t+1; the LM head only where a target is predicted
            targets = labels[:, 1:]
            keep = targets != -100
            logits = _target_logits(model, batch, keep)
            with torch.no_grad():
                bias_logits = _target_logits(self.bias_model, batch, keep)
            positions, labels = self.label_positions(targets)[keep], targets[keep]
        if bias_logits.shape[-1] != logits.shape[-1]:
            raise SparseFitError(f"the PoE bias model has a vocabulary of {bias_logits.shape[-1]} but the model "
                                 f"has {logits.shape[-1]}; both must use the same tokenizer",
                                 field="method_options.poe_bias_model")
        return poe_loss(logits, bias_logits, labels, positions)

    # --- save / load / merge -----------------------------------------------------------------------
    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for name, wrapper in self._masked(model):
            state[f"{name}.mask_scores"] = wrapper.mask_scores.detach().cpu().contiguous()
            state[f"{name}.mask"] = wrapper.current_mask().detach().cpu().contiguous()
        return state

    def load_trained(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        wrappers = dict(self._masked(model))
        expected = {f"{n}.{suffix}" for n in wrappers for suffix in ("mask_scores", "mask")}
        unknown = sorted(set(tensors) - expected)
        missing = sorted(expected - set(tensors))
        if unknown or missing:
            example = (unknown or missing)[0]
            raise SparseFitError(f"saved tensors do not fit this model (e.g. {example!r} is "
                                 f"{'unexpected' if unknown else 'missing'}); was the delta trained with "
                                 f"method 'mask' and the same targets on this base model?")
        with torch.no_grad():
            for name, wrapper in wrappers.items():
                scores = tensors[f"{name}.mask_scores"]
                if scores.shape != wrapper.mask_scores.shape:
                    raise SparseFitError(f"tensor '{name}.mask_scores' has shape {tuple(scores.shape)} in the "
                                         f"delta but {tuple(wrapper.mask_scores.shape)} in the model")
                wrapper.mask_scores.copy_(scores)
                wrapper.use_mask(tensors[f"{name}.mask"])
        self.current_sparsity = float(self.options["sparsity"])

    def merge(self, model: nn.Module) -> nn.Module:
        for name, wrapper in self._masked(model):
            with torch.no_grad():
                wrapper.base.weight.copy_(wrapper.effective_weight())
            set_submodule(model, name, wrapper.base)
        return model

    def selection(self) -> dict[str, Any]:
        return {"targets": sorted(self.roles), "sparsity": self.options["sparsity"],
                "schedule": self.options["schedule"], "initial_sparsity": self.options["initial_sparsity"],
                "schedule_end": self.options["schedule_end"],
                "poe_bias_model": None if self.options["poe_bias_model"] is None
                else str(self.options["poe_bias_model"])}

    def report(self, model: nn.Module) -> dict[str, Any]:
        wrappers = self._masked(model)
        masked = sum(w.mask.numel() for _, w in wrappers)
        zeros = sum(int((~w.current_mask()).sum()) for _, w in wrappers)
        return {"masked_matrices": len(wrappers), "masked_weights": masked,
                "mask_sparsity": zeros / masked if masked else 0.0,
                "current_target_sparsity": self.current_sparsity, **linear_flops_report(model)}


def _target_logits(model: nn.Module, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
    """Decoder-only logits at the positions that predict a target token (as the default causal loss)."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                 use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def poe_loss(logits: torch.Tensor, bias_logits: torch.Tensor, labels: torch.Tensor,
             poe_positions: torch.Tensor) -> torch.Tensor:
    """Mean token CE over (N, vocab) logits; rows in `poe_positions` use log_softmax(log p_model + log p_bias)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    combined = F.log_softmax(log_probs + F.log_softmax(bias_logits.float(), dim=-1), dim=-1)
    log_probs = torch.where(poe_positions.unsqueeze(-1), combined, log_probs)
    return F.nll_loss(log_probs, labels, ignore_index=-100)
