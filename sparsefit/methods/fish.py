"""FISH masks: train only the k individual weights with the largest Fisher information (data-driven sparsity).

Sung et al. 2021, "Training Neural Networks with Fixed Sparse Masks". Before training, the empirical Fisher
of every candidate weight is estimated on the training shots: the mean over examples of the squared
gradient of that example's training loss. The k weights with the largest score over all candidate tensors
(one global top-k) form a fixed mask; training updates only them.

- `budget`: k as a share of *all* parameters ("1%", 0.01). Default: the same share as the structural
  paper preset on this backbone (decoder-only `self.v,ln` is about 1.1% of Gemma-3-270M), so the two are
  compared at equal size.
- `exclude`: components never chosen (component grammar of sparsefit.methods.selection); default
  `embed,lm_head` (frozen, as in the paper; on tied models they are one matrix).
- `fisher_examples`: how many training shots the Fisher estimate uses (the first ones; default 64).

Masked update: every tensor holding at least one chosen weight is trainable, and a gradient hook zeroes the
other entries. With AdamW at weight decay 0 (the default) a weight whose gradient is always zero never moves
(its moments stay 0, the step is 0/eps), so untouched weights stay bit-identical; a positive weight decay
would shrink them, so a positive one is refused (`check_training`).

Saved delta: per trained tensor `<name>.indices` (int64, flat positions) and `<name>.values` (the trained
values at those positions). `load_trained` scatters the values into a fresh base model; `merge` has nothing
to fold (the weights were updated in place).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.methods.base import Arch, LossFn, SparseMethod, count_parameters, freeze_all, register_method
from sparsefit.methods.mask import check_options, option_error
from sparsefit.methods.selection import (PRESETS, is_preset_file, parse_budget, read_preset_file,
                                         select_parameters)


@register_method
class FisherMask(SparseMethod):
    name = "fish"
    description = "train the top-k weights by Fisher information on the training shots (fixed sparse mask)"
    needs_data = True
    DEFAULTS: dict[str, Any] = {"budget": None, "exclude": "embed,lm_head", "fisher_examples": 64, "preset": None}

    def __init__(self, **options: Any):
        self.options = check_options(self.name, options, self.DEFAULTS)
        self.preset_settings: dict[str, Any] = {}
        if self.options["preset"] is not None:
            if not is_preset_file(self.options["preset"]):
                raise option_error(self.name, "preset", "preset must be a preset .json file (from `search`)")
            self.preset_settings = read_preset_file(self.options["preset"], self.name)
            if self.options["budget"] is None and self.preset_settings.get("budget") is not None:
                self.options["budget"] = self.preset_settings["budget"]
        self.fraction = None if self.options["budget"] is None else parse_budget(self.options["budget"],
                                                                                 "method_options.budget")
        examples = self.options["fisher_examples"]
        if not isinstance(examples, int) or examples < 1:
            raise option_error(self.name, "fisher_examples", f"fisher_examples must be a positive integer, "
                                                             f"got {examples!r}")
        self.k = 0
        self.total = 0
        self.indices: dict[str, torch.Tensor] = {}  # parameter name -> sorted flat int64 positions
        self._hooks: list[Any] = []

    # --- choose ------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, arch: Arch) -> nn.Module:
        """Freeze everything and fix k; the weights are chosen in `prepare_with_data` (or loaded)."""
        freeze_all(model)
        self.total = count_parameters(model)[1]
        if self.fraction is None:  # the structural preset's share on this backbone
            preset = set(select_parameters(model, PRESETS["paper"][arch.kind], arch))
            params = dict(model.named_parameters())
            self.fraction = sum(params[n].numel() for n in preset) / self.total
        self.k = max(1, round(self.fraction * self.total))
        excluded = set(select_parameters(model, self.options["exclude"], arch, strict=False)) \
            if self.options["exclude"] else set()
        self.candidates = [n for n, _ in model.named_parameters() if n not in excluded]
        available = sum(p.numel() for n, p in model.named_parameters() if n not in excluded)
        if self.k > available:
            raise option_error(self.name, "budget", f"budget {100 * self.fraction:.3g}% is {self.k:,} weights, "
                                                    f"but only {available:,} are not excluded")
        return model

    def prepare_with_data(self, model: nn.Module, arch: Arch, batches: Iterable[dict[str, torch.Tensor]],
                          loss_fn: LossFn) -> None:
        fisher = self.fisher_scores(model, batches, loss_fn)
        self.indices = top_k_indices(fisher, self.k)
        del fisher
        self._train_only_chosen(model)

    def data_choice_key(self) -> tuple:
        return ("fish", self.k, self.options["exclude"], self.options["fisher_examples"])

    def data_choice(self) -> dict[str, torch.Tensor]:
        return dict(self.indices)

    def reuse_data_choice(self, model: nn.Module, choice: dict[str, torch.Tensor]) -> None:
        self.indices = dict(choice)
        self._train_only_chosen(model)

    def fisher_scores(self, model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                      loss_fn: LossFn) -> dict[str, torch.Tensor]:
        """Mean squared per-example gradient of every candidate weight (eval mode: no dropout noise)."""
        params = dict(model.named_parameters())
        for name in self.candidates:
            params[name].requires_grad_(True)
        fisher = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in self.candidates}
        was_training, count = model.training, 0
        model.eval()
        for batch in batches:
            if count >= self.options["fisher_examples"]:
                break
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
            for name in self.candidates:
                grad = params[name].grad
                if grad is not None:
                    fisher[name] += grad.float() ** 2
            count += 1
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        freeze_all(model)
        if not count:
            raise SparseFitError("method 'fish' needs training examples to estimate the Fisher information")
        return {n: f / count for n, f in fisher.items()}

    def _train_only_chosen(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for name, flat in self.indices.items():
            param = params[name]
            keep = torch.zeros(param.numel(), dtype=torch.bool, device=param.device)
            keep[flat.to(param.device)] = True
            keep = keep.view_as(param)
            param.requires_grad_(True)
            self._hooks.append(param.register_hook(lambda grad, keep=keep: grad * keep))

    # --- count / save / load -------------------------------------------------------------------------
    def trainable_count(self, model: nn.Module) -> int:
        return sum(int(i.numel()) for i in self.indices.values()) if self.indices else self.k

    def training_defaults(self) -> dict[str, Any]:
        return {k: self.preset_settings[k] for k in ("lr", "steps") if self.preset_settings.get(k) is not None}

    def check_training(self, train: Any) -> None:
        # the mask zeroes gradients only: AdamW's decoupled decay would still shrink the unchosen weights of every
        # touched tensor, so the evaluated model would differ from the saved delta (chosen weights only)
        if train.weight_decay:
            raise SparseFitError(f"method 'fish' trains with weight_decay 0 only (got {train.weight_decay:g}): "
                                 "decay would move the weights outside its mask", field="train.weight_decay")

    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        params = dict(model.named_parameters())
        state: dict[str, torch.Tensor] = {}
        for name, flat in self.indices.items():
            state[f"{name}.indices"] = flat.cpu().contiguous()
            state[f"{name}.values"] = params[name].detach().reshape(-1)[flat.to(params[name].device)].cpu()
        return state

    def load_trained(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        names = sorted({key.rsplit(".", 1)[0] for key in tensors})
        indices: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name in names:
                if name not in params or f"{name}.indices" not in tensors or f"{name}.values" not in tensors:
                    raise SparseFitError(f"saved tensors do not fit this model (e.g. {name!r}); was the delta "
                                         f"trained with method 'fish' on this base model?")
                flat, values, param = tensors[f"{name}.indices"].long(), tensors[f"{name}.values"], params[name]
                if flat.numel() != values.numel() or (flat.numel() and int(flat.max()) >= param.numel()):
                    raise SparseFitError(f"sparse delta for {name!r} does not fit its tensor of shape "
                                         f"{tuple(param.shape)}")
                param.view(-1)[flat.to(param.device)] = values.to(device=param.device, dtype=param.dtype)
                indices[name] = flat
        self.indices = indices

    def loading_options(self) -> dict[str, Any] | None:
        if not is_preset_file(self.options["preset"]):
            return None
        return {"budget": self.fraction, "exclude": self.options["exclude"],
                "fisher_examples": self.options["fisher_examples"]}

    def selection(self) -> dict[str, Any]:
        return {"budget_fraction": self.fraction, "k": self.k, "exclude": self.options["exclude"],
                "fisher_examples": self.options["fisher_examples"], "tensors": len(self.indices)}

    def report(self, model: nn.Module) -> dict[str, Any]:
        per_tensor = {n: int(i.numel()) for n, i in self.indices.items()}
        top = sorted(per_tensor.items(), key=lambda item: -item[1])[:5]
        return {"chosen_weights": sum(per_tensor.values()), "tensors_touched": len(per_tensor),
                "largest_tensors": dict(top)}


def top_k_indices(scores: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    """Global top-k over all score tensors -> {name: sorted flat positions} (names with none left out)."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).cpu() for n in names])
    chosen = torch.topk(flat, k, sorted=False).indices.sort().values
    del flat
    result: dict[str, torch.Tensor] = {}
    start = 0
    for name in names:
        size = scores[name].numel()
        lo, hi = torch.searchsorted(chosen, torch.tensor([start, start + size])).tolist()
        if hi > lo:
            result[name] = (chosen[lo:hi] - start).to(torch.int64)
        start += size
    return result
