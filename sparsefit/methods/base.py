"""The one interface every fine-tuning method implements, and the registry that names them.

Life cycle, the same for every method (peft's tuners/ layout is the model):

    method = get_method("sparsefit", preset="paper")           # options come from the run config
    model = method.prepare(backbone.model, backbone.arch)       # freeze all, then unfreeze / wrap
    if method.needs_data:                                       # data-driven selection (fish)
        method.prepare_with_data(model, arch, single_example_batches, default_loss)
    ... training loop: loss = method.training_loss(model, batch, default_loss)
                       optimizer.step(); method.after_step(model, step, total_steps)
    tensors = method.trained_state(model)                       # only what was trained (+ masks)
    # later, on a fresh copy of the same base model:
    model = method.prepare(base_model, arch); method.load_trained(model, tensors)
    plain = method.merge(model)                                 # a plain transformers model again

`trained_state` returns a flat {name: tensor} dict that `save_file` from safetensors can store; names
must be stable across `prepare` calls so `load_trained` finds them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Hashable, Iterable

import torch
from torch import nn

from sparsefit.errors import SparseFitError

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Arch:
    """What a method needs to know about the backbone."""

    kind: str  # "seq2seq" (T5 family) or "causal" (decoder-only)
    model_type: str  # config.model_type, e.g. "t5", "gemma3_text", "llama"


class SparseMethod:
    """Base class: subclasses set `name`, accept keyword options, and override the hooks they need."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True for methods that choose what to train from the training examples (e.g. Fisher masks): the runner
    # then calls `prepare_with_data` right after `prepare`, before training.
    needs_data: ClassVar[bool] = False

    def __init__(self, **options: Any):
        if options:
            raise SparseFitError(f"method '{self.name}' takes no options, got {sorted(options)}",
                                 field="method_options")

    # --- choose / wrap parameters -------------------------------------------------------------
    def prepare(self, model: nn.Module, arch: Arch) -> nn.Module:
        """Freeze everything, then unfreeze or wrap what this method trains. Returns the model to train."""
        raise NotImplementedError

    def prepare_with_data(self, model: nn.Module, arch: Arch, batches: Iterable[dict[str, torch.Tensor]],
                          loss_fn: LossFn) -> None:
        """For `needs_data` methods: look at single-example training batches (with labels) before training."""

    def data_choice_key(self) -> Hashable | None:
        """What the data-driven choice depends on besides the shots and the base model (e.g. budget); None
        when it cannot be reused. Lets a caller (the search) run `prepare_with_data` once per episode."""
        return None

    def data_choice(self) -> Any:
        """The choice `prepare_with_data` made, to hand to `reuse_data_choice` on a fresh copy of the model."""
        raise NotImplementedError

    def reuse_data_choice(self, model: nn.Module, choice: Any) -> None:
        """Apply an earlier `data_choice()` (same key, same shots, same base model) instead of computing it."""
        raise NotImplementedError

    def trainable_count(self, model: nn.Module) -> int:
        """Number of trained values (a masked method trains fewer than its trainable tensors hold)."""
        return count_parameters(model)[0]

    def training_defaults(self) -> dict[str, Any]:
        """lr / steps this configuration should train with unless the run config sets them (preset files)."""
        return {}

    def loading_options(self) -> dict[str, Any] | None:
        """After prepare: options that rebuild this configuration without reading files again (a preset file
        resolved), stored in the manifest so a run still loads when its preset file is moved or rewritten;
        None: the run's options as given suffice."""
        return None

    def check_training(self, train: Any) -> None:
        """Refuse (SparseFitError) resolved training settings this method cannot honour (a `TrainConfig`)."""

    # --- training hooks --------------------------------------------------------------------------
    def training_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], default_loss: LossFn) -> torch.Tensor:
        return default_loss(model, batch)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Called after every optimizer step (1-based `step`): schedules, pruning, projections."""

    # --- save / load / merge ---------------------------------------------------------------------
    def trained_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Default: every parameter with requires_grad, under its own name, detached to CPU."""
        return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}

    def load_trained(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in tensors if n not in params]
        if missing:
            raise SparseFitError(f"saved tensors do not fit this model (e.g. {missing[0]!r}); was the delta "
                                 f"trained with method '{self.name}' on this base model?")
        with torch.no_grad():
            for name, value in tensors.items():
                if params[name].shape != value.shape:
                    raise SparseFitError(f"tensor {name!r} has shape {tuple(value.shape)} in the delta but "
                                         f"{tuple(params[name].shape)} in the model")
                params[name].copy_(value.to(params[name].dtype))

    def merge(self, model: nn.Module) -> nn.Module:
        """Return a plain model with the trained updates folded into its weights."""
        return model

    # --- reporting -------------------------------------------------------------------------------
    def selection(self) -> dict[str, Any]:
        """What this method selected, for the manifest (patterns, ranks, sparsity, ...)."""
        return {}

    def report(self, model: nn.Module) -> dict[str, Any]:
        """Extra numbers for results (final sparsity, FLOPs saved, ...)."""
        return {}


_REGISTRY: dict[str, type[SparseMethod]] = {}


def register_method(cls: type[SparseMethod]) -> type[SparseMethod]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    from sparsefit import methods  # noqa: F401  (importing the package registers the built-ins)
    return sorted(_REGISTRY)


def get_method(name: str, **options: Any) -> SparseMethod:
    from sparsefit import methods  # noqa: F401
    if name not in _REGISTRY:
        raise SparseFitError(f"unknown method {name!r}; choose one of: {', '.join(sorted(_REGISTRY))}",
                             field="method")
    try:
        return _REGISTRY[name](**options)
    except TypeError as err:  # an option the method's constructor does not take (e.g. a typo)
        raise SparseFitError(f"bad option for method '{name}': {err}", field="method_options") from err


def freeze_all(model: nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) over unique parameters (tied weights counted once)."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
