"""In-context prompting with no training: the reference point for the fine-tuning methods.

The runner puts `icl_shots` solved training examples (spread over labels) in front of each input.
"""

from __future__ import annotations

from torch import nn

from sparsefit.methods.base import Arch, SparseMethod, freeze_all, register_method


@register_method
class InContext(SparseMethod):
    name = "icl"
    description = "no training: k solved examples from the episode are prepended to each input"
    in_context = True

    def prepare(self, model: nn.Module, arch: Arch) -> nn.Module:
        freeze_all(model)
        return model

    def trained_state(self, model: nn.Module) -> dict:
        return {}
