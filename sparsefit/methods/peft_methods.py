"""peft baselines behind the same interface: LoRA, AdaLoRA, (IA)3 and LayerNorm tuning.

Defaults follow the SparseFit paper's baselines (REFERENCE §4): LoRA r=8, alpha=32, dropout 0.1 on the
query and value projections; AdaLoRA init_r=8, target_r=4. Target module names are filled in per backbone
(T5: q/v; decoder-only: q_proj/v_proj) unless given.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.methods.base import Arch, SparseMethod, register_method

QV_TARGETS = {"seq2seq": ["q", "v"], "causal": ["q_proj", "v_proj"]}
IA3_TARGETS = {"seq2seq": (["k", "v", "wo"], ["wo"]), "causal": (["k_proj", "v_proj", "down_proj"], ["down_proj"])}
LN_TARGETS = {"seq2seq": r".*\.layer\.\d+\.layer_norm$", "causal": r".*norm$"}


class PeftMethod(SparseMethod):
    """Common save/load/merge for peft adapters; subclasses build the peft config."""

    def __init__(self, **options: Any):
        self.options = options
        self.total_steps = 300

    def peft_config(self, arch: Arch) -> Any:
        raise NotImplementedError

    def task_type(self, arch: Arch) -> str:
        return "SEQ_2_SEQ_LM" if arch.kind == "seq2seq" else "CAUSAL_LM"

    def prepare(self, model: nn.Module, arch: Arch) -> nn.Module:
        from peft import get_peft_model
        try:
            config = self.peft_config(arch)
        except TypeError as err:  # an option peft does not know, e.g. a typo
            raise SparseFitError(f"bad option for method '{self.name}': {err}", field="method_options") from err
        try:
            return get_peft_model(model, config)
        except ValueError as err:
            raise SparseFitError(f"peft could not wrap this model for '{self.name}': {err}",
                                 field="method_options") from err

    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict
        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}

    def load_trained(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict
        result = set_peft_model_state_dict(model, tensors)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise SparseFitError(f"saved adapter does not fit this model (e.g. {unexpected[0]!r})")

    def merge(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

    def selection(self) -> dict[str, Any]:
        return {"peft_options": {k: v for k, v in self.options.items()}}


@register_method
class Lora(PeftMethod):
    name = "lora"
    description = "LoRA r=8, alpha=32, dropout 0.1 on query and value projections (peft)"

    def peft_config(self, arch: Arch) -> Any:
        from peft import LoraConfig
        options = {"r": 8, "lora_alpha": 32, "lora_dropout": 0.1, "target_modules": QV_TARGETS[arch.kind],
                   **self.options}
        return LoraConfig(task_type=self.task_type(arch), **options)


@register_method
class AdaLora(PeftMethod):
    name = "adalora"
    description = "AdaLoRA init_r=8 -> target_r=4 on query and value projections (peft)"

    def peft_config(self, arch: Arch) -> Any:
        from peft import AdaLoraConfig
        options = {"init_r": 8, "target_r": 4, "lora_alpha": 32, "lora_dropout": 0.1,
                   "target_modules": QV_TARGETS[arch.kind], "total_step": self.total_steps,
                   "tinit": max(1, self.total_steps // 10), "tfinal": max(1, self.total_steps // 5),
                   **self.options}
        return AdaLoraConfig(task_type=self.task_type(arch), **options)

    def training_loss(self, model, batch, default_loss):
        # peft adds AdaLoRA's orthogonality regulariser only when the model computes the loss itself;
        # our loss is computed outside (logits at target positions only), so add it here the same way.
        loss = default_loss(model, batch)
        weight = model.peft_config[model.active_adapter].orth_reg_weight
        penalties = []
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_A" in name or "lora_B" in name):
                cov = p @ p.T if "lora_A" in name else p.T @ p
                penalties.append(torch.linalg.matrix_norm(cov - torch.eye(cov.shape[0], dtype=cov.dtype)))
        return loss + weight * torch.stack(penalties).mean() if penalties else loss

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        model.base_model.update_and_allocate(step)


@register_method
class IA3(PeftMethod):
    name = "ia3"
    description = "(IA)3 learned rescaling of keys, values and feed-forward activations (peft)"

    def peft_config(self, arch: Arch) -> Any:
        from peft import IA3Config
        targets, feedforward = IA3_TARGETS[arch.kind]
        options = {"target_modules": targets, "feedforward_modules": feedforward, **self.options}
        return IA3Config(task_type=self.task_type(arch), **options)


@register_method
class LNTuning(PeftMethod):
    name = "ln_tuning"
    description = "LayerNorm tuning: train copies of the block layer norms (peft)"

    def peft_config(self, arch: Arch) -> Any:
        from peft import LNTuningConfig
        options = {"target_modules": LN_TARGETS[arch.kind], **self.options}
        return LNTuningConfig(task_type=self.task_type(arch), **options)
