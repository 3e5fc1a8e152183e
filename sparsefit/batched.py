"""Episode-batched training: K episodes of one variant trained at once on one frozen base model.

A small model's training step is launch-bound on a GPU (T5-large, batch 4: 161.7 ms; batch 48: 167.1 ms),
so K episodes cost about what one costs when their steps run as one. How:

- Every episode gets its own *proxy*: a structure copy of the base model whose weight tensors are shared
  (no copy), prepared by the method under `torch.manual_seed(seed)` exactly as `run_episode` prepares its
  deep copy -- so adapter initialisation (LoRA A matrices) is the same as in a single run.
- Each trained tensor is stacked over episodes: [K, out, in] for a projection, [K, d] for a norm.
- Each step every episode contributes exactly `batch_size` rows from its own seeded data order
  (`train._batches`), so the stacked batch has K*B rows and episode k owns rows [k*B, (k+1)*B). Every module
  that owns a trained tensor (Linear, T5LayerNorm, Gemma3RMSNorm, Embedding, a LoRA A/B, a peft LN copy) is
  routed: its input is viewed as [K, B, ...] and episode k's tensors are applied to block k (bmm for a
  Linear, `torch.vmap` + the module's own forward otherwise).
- Loss = sum over episodes of each episode's own mean token loss, so each episode's gradient is its solo
  gradient. Gradient clipping is per episode (each episode's norm over its slices). AdamW is elementwise, so
  one AdamW over the stacked tensors is K independent AdamWs.
- Afterwards episode k's tensors are swapped into its proxy and `runner.finish_episode` writes the folder
  (delta + manifest, predictions, results.json last) exactly as a single run does, into a temporary
  sibling folder renamed into place: an episode folder is complete or absent.

Equal to sequential runs up to float summation order -- when nothing random happens during training.
Dropout (model dropout, LoRA dropout) draws different masks than K solo runs would: the result is then
statistically, not numerically, the same. The tiny test models have no dropout; tests use lora_dropout=0.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsefit.errors import SparseFitError
from sparsefit.train import make_optimizer

BATCHABLE_METHODS = ("sparsefit", "ln_tuning", "lora")
PARTIAL_SUFFIX = ".partial"


class NotBatchable(SparseFitError):
    """This variant cannot be episode-batched; callers fall back to sequential episodes."""


def batchable_reason(config: Any) -> str | None:
    """None when the config's method can be episode-batched, else why not (shown as a note)."""
    if config.method not in BATCHABLE_METHODS:
        return f"method '{config.method}' has no episode-batched trainer (only {', '.join(BATCHABLE_METHODS)})"
    return None


def is_out_of_memory(err: BaseException) -> bool:
    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    text = str(err).lower()
    return (oom_type is not None and isinstance(err, oom_type)) or (isinstance(err, RuntimeError) and any(
        marker in text for marker in ("out of memory", "not enough memory", "can't allocate memory")))


# --- proxies and stacked tensors ------------------------------------------------------------------------
def structure_copy(model: nn.Module) -> nn.Module:
    """New module objects, the same parameter and buffer tensors (no weight memory is copied)."""
    import copy
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return copy.deepcopy(model, memo)


def _owners(model: nn.Module, tensor: torch.Tensor) -> list[tuple[nn.Module, str]]:
    """Every (module, attribute) holding this parameter object (a tied weight has several)."""
    return [(m, name) for m in model.modules() for name, p in m._parameters.items() if p is tensor]


@dataclass
class Route:
    """One routed module: its trained attributes and their stacked [K, ...] tensors."""

    module: nn.Module
    stacked: dict[str, torch.Tensor] = field(default_factory=dict)


class _swap_parameters:
    """Put (possibly vmapped) tensors in place of a module's parameters for one call (what functional_call
    does; done by hand because the module's own forward is the routed one while routing is on)."""

    def __init__(self, module: nn.Module, values: dict[str, torch.Tensor]):
        self.module, self.values, self.saved = module, values, {}

    def __enter__(self):
        for name, value in self.values.items():
            self.saved[name] = self.module._parameters[name]
            self.module._parameters[name] = value

    def __exit__(self, *exc):
        self.module._parameters.update(self.saved)


def _routed_forward(route: Route, routing: "Routing") -> Callable:
    module, original, episodes = route.module, type(route.module).forward, routing.episodes

    def forward(x: torch.Tensor, *args, **kwargs):
        rows = x.shape[0]
        if rows % episodes or (routing.rows is not None and rows != routing.rows):
            raise NotBatchable(f"a routed {type(module).__name__} got {rows} rows instead of the batch's "
                               f"{routing.rows} (its input is not batch-first), so episodes cannot be told apart")
        if isinstance(module, nn.Linear) and not args and not kwargs:
            weight = route.stacked.get("weight")
            bias = route.stacked.get("bias", module.bias)
            blocks = x.reshape(episodes, -1, x.shape[-1])
            w = weight if weight is not None else module.weight.expand(episodes, *module.weight.shape)
            out = torch.bmm(blocks, w.transpose(1, 2))
            if bias is not None:
                out = out + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
            return out.reshape(*x.shape[:-1], out.shape[-1])

        def one_episode(values, block):
            with _swap_parameters(module, values):
                return original(module, block, *args, **kwargs)
        blocks = x.reshape(episodes, rows // episodes, *x.shape[1:])
        out = torch.vmap(one_episode)(route.stacked, blocks)
        return out.reshape(rows, *out.shape[2:])
    return forward


class Routing:
    """Installs / removes routed forwards on the template proxy's owner modules."""

    def __init__(self, template: nn.Module, names: Sequence[str], stacked: dict[str, torch.Tensor], episodes: int):
        params = dict(template.named_parameters())
        routes: dict[int, Route] = {}
        for name in names:
            for module, attr in _owners(template, params[name]):
                routes.setdefault(id(module), Route(module)).stacked[attr] = stacked[name]
        self.routes, self.episodes = list(routes.values()), episodes
        self.rows: int | None = None  # the stacked batch's rows (K*B) this step; every routed input must have them

    def modules(self) -> list[nn.Module]:
        return [r.module for r in self.routes]

    def __enter__(self):
        for route in self.routes:
            route.module.forward = _routed_forward(route, self)
        return self

    def __exit__(self, *exc):
        for route in self.routes:
            route.module.__dict__.pop("forward", None)


# --- loss, clipping --------------------------------------------------------------------------------------
def episode_losses(model: nn.Module, batch: dict[str, torch.Tensor], episodes: int, seq2seq: bool) -> torch.Tensor:
    """[K] each episode's mean token cross-entropy over its own rows (what its solo loss would be)."""
    from sparsefit.train import IGNORE
    labels = batch["labels"]
    if seq2seq:
        logits = model(**batch).logits
        targets, rows = labels, None
        token_loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE,
                                     reduction="none").view_as(labels)
        keep = labels != IGNORE
        per_row, counts = (token_loss * keep).sum(1), keep.sum(1)
    else:  # as train.causal_loss: the LM head only at target positions
        hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = model.get_output_embeddings()(hidden[:, :-1][keep])
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        token_loss = F.cross_entropy(logits.float(), targets[keep], reduction="none")
        rows = keep.nonzero()[:, 0]
        per_row = torch.zeros(labels.shape[0], device=token_loss.device).index_add_(0, rows, token_loss)
        counts = keep.sum(1)
    per_row_block = per_row.view(episodes, -1).sum(1)
    return per_row_block / counts.view(episodes, -1).sum(1).clamp(min=1)


@torch.no_grad()
def clip_per_episode(stacked: Sequence[torch.Tensor], max_norm: float) -> None:
    """torch.nn.utils.clip_grad_norm_ applied to each episode's slices separately."""
    grads = [p.grad for p in stacked if p.grad is not None]
    if not grads:
        return
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1) for g in grads])  # [params, K]
    total = torch.linalg.vector_norm(norms, dim=0)  # [K]
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))


# --- one group ----------------------------------------------------------------------------------------------
def _check_group(prepared: Sequence[Any]) -> None:
    first = prepared[0]
    key = lambda p: (p.config.model, p.config.method, repr(sorted(p.config.method_options.items())),  # noqa: E731
                     {k: v for k, v in vars(p.train_config).items() if k != "seed"})
    for other in prepared[1:]:
        if key(other) != key(first):
            raise SparseFitError("episodes batched together must share model, method, options and training "
                                 f"settings (seed {first.config.seed} vs {other.config.seed})")


class StackedTrainer:
    """The episode-batched optimisation of K proxies that share one base: stacked tensors, routing, AdamW.

    `with trainer.active():` freezes every shared tensor, routes the template's owner modules and puts it in
    train mode; `trainer.step(batch)` does one step (rows [k*B, (k+1)*B) belong to episode k) and returns
    the K losses; `trainer.trained(k)` is episode k's tensors by parameter name.
    """

    def __init__(self, template: nn.Module, proxies: Sequence[nn.Module], train_config: Any, device: torch.device,
                 seq2seq: bool):
        self.template, self.config, self.seq2seq, self.episodes = template, train_config, seq2seq, len(proxies)
        self.names = [n for n, p in template.named_parameters() if p.requires_grad]
        if not self.names:
            raise SparseFitError("the method left no trainable parameter")
        params = [dict(proxy.named_parameters()) for proxy in proxies]
        self.flags = [(p, p.requires_grad) for p in {id(p): p for ps in params for p in ps.values()}.values()]
        self.stacked = {n: torch.stack([ps[n].detach() for ps in params]).to(device).requires_grad_(True)
                        for n in self.names}
        self.routing = Routing(template, self.names, self.stacked, self.episodes)
        if not seq2seq and any(m is template.get_output_embeddings() for m in self.routing.modules()):
            raise NotBatchable("the LM head is trained: a decoder-only loss applies it to target tokens only, "
                               "which cannot be routed per episode")
        self.optimizer = make_optimizer(list(self.stacked.values()), train_config)

    def active(self):
        import contextlib

        @contextlib.contextmanager
        def scope():
            for p, _ in self.flags:  # only the stacked tensors learn; the shared base stays frozen
                p.requires_grad_(False)
            self.template.train()
            try:
                with self.routing:
                    yield self
            finally:
                self.template.eval()
                for p, flag in self.flags:
                    p.requires_grad_(flag)
        return scope()

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.routing.rows = batch["input_ids"].shape[0]
        losses = episode_losses(self.template, batch, self.episodes, self.seq2seq)
        losses.sum().backward()
        if self.config.max_grad_norm:
            clip_per_episode(list(self.stacked.values()), self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return losses.detach()

    def trained(self, k: int) -> dict[str, torch.Tensor]:
        return {name: self.stacked[name][k].detach() for name in self.names}


def train_group(backbone: Any, prepared: Sequence[Any], device: torch.device, *, progress: bool = True) -> tuple:
    """Train K prepared episodes at once. Returns one TrainResult per episode and, per episode, its trained
    tensors by parameter name (views into the stacked tensors)."""
    from tqdm import tqdm
    from sparsefit.prompts import format_input, format_target
    from sparsefit.train import MemoryMeter, TrainResult, _batches, collate, encode_training_pairs
    _check_group(prepared)
    episodes, config = len(prepared), prepared[0].train_config
    if config.threads:
        torch.set_num_threads(config.threads)
    trainer = StackedTrainer(prepared[0].model, [p.model for p in prepared], config, device, backbone.is_seq2seq)
    torch.manual_seed(config.seed)
    encoded = [encode_training_pairs(backbone, [format_input(e) for e in p.episode.train],
                                     [format_target(e) for e in p.episode.train], p.train_config) for p in prepared]
    orders = [_batches(len(enc), config.batch_size, config.steps, p.train_config.seed)
              for enc, p in zip(encoded, prepared)]
    pad_id = backbone.tokenizer.pad_token_id
    memory = MemoryMeter(device)
    losses: list[list[float]] = [[] for _ in prepared]
    started = time.perf_counter()
    bar = tqdm(total=config.steps, desc=f"train {episodes} episodes", unit="step", disable=not progress)
    try:
        with trainer.active():
            for step in range(1, config.steps + 1):
                rows = [enc[i] for enc, order in zip(encoded, orders) for i in next(order)]
                batch = {k: v.to(device) for k, v in collate(rows, pad_id, backbone.is_seq2seq).items()}
                values = trainer.step(batch).cpu().tolist()
                bad = [p.config.seed for p, v in zip(prepared, values) if not math.isfinite(v)]
                if bad:
                    raise SparseFitError(f"training diverged at step {step} for episode seed(s) {bad} "
                                         f"(lr={config.lr}); lower the learning rate. Nothing of this batch of "
                                         f"{episodes} episodes was saved.")
                for k, value in enumerate(values):
                    losses[k].append(value)
                memory.sample()
                bar.update()
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    peak = memory.peak_mb()
    return [TrainResult(losses=losses[k], steps=config.steps, seconds=seconds / episodes,
                        seconds_per_step=seconds / episodes / max(1, config.steps), peak_memory_mb=peak,
                        config=dict(vars(p.train_config))) for k, p in enumerate(prepared)], \
        [trainer.trained(k) for k in range(episodes)]


def run_episode_group(configs: Sequence[Any], folders: Sequence[Path], backbone: Any, *,
                      progress: bool = True, evaluate: bool = True) -> list[dict[str, Any]]:
    """Train K episodes of one variant together, then write each one's folder as `run_episode` would."""
    from sparsefit.device import resolve_device, resolve_dtype
    from sparsefit.runner import prepare_episode, sample_for
    device = resolve_device(configs[0].device)
    dtype = resolve_dtype(configs[0].dtype, device)
    base = backbone.model
    first = next(base.parameters())
    if first.device != device or first.dtype != dtype:
        import copy
        base = copy.deepcopy(base).to(device=device, dtype=dtype)
    view = type(backbone)(model=base, tokenizer=backbone.tokenizer, arch=backbone.arch,
                          model_id=backbone.model_id, fingerprint=backbone.fingerprint)
    # sparsefit proxies train the base's own (shared) tensors: their data and flags are put back after each use
    original = [(p, p.data, p.requires_grad) for p in base.parameters()]
    try:
        prepared = [prepare_episode(c, sample_for(c), view, copy_model=structure_copy) for c in configs]
        results, trained = train_group(view, prepared, device, progress=progress)
        rows = []
        for item, result, tensors, folder in zip(prepared, results, trained, folders):
            params = dict(item.model.named_parameters())
            for name, value in tensors.items():
                params[name].data = value
            rows.append(_finish(item, view, Path(folder), result, len(configs), evaluate))
            for p, data, _ in original:
                p.data = data
        return rows
    finally:
        for p, data, flag in original:
            p.data = data
            p.requires_grad_(flag)


def _finish(item, backbone, folder: Path, result, episodes: int, evaluate: bool) -> dict:
    """Write the episode into `<folder>.partial`, then rename: an episode folder is complete or absent."""
    from sparsefit.config import save_run_config
    from sparsefit.runner import finish_episode
    partial = folder.with_name(folder.name + PARTIAL_SUFFIX)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_run_config(item.config, partial / "config.json")
    row = finish_episode(item, backbone, partial, result, progress=False, evaluate=evaluate,
                         extra={"batched_episodes": episodes, "group_train_seconds": result.seconds * episodes})
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    return row


# --- many groups, OOM-safe ----------------------------------------------------------------------------------
def run_batched(configs: Sequence[Any], folders: Sequence[Path], backbone: Any, batch_episodes: int | None, *,
                progress: bool = True, notify: Callable[[str], None] = print,
                on_done: Callable[[int, dict], None] | None = None) -> list[dict[str, Any]]:
    """Episodes of one variant in groups of `batch_episodes` (None/0: all at once). A group that runs out of
    memory is retried with half as many episodes (one line says so); groups that finished stay written."""
    size = len(configs) if not batch_episodes else min(batch_episodes, len(configs))
    rows: list[dict[str, Any] | None] = [None] * len(configs)
    start = 0
    while start < len(configs):
        chunk = slice(start, min(start + size, len(configs)))
        try:
            done = run_episode_group(configs[chunk], folders[chunk], backbone, progress=progress)
        except Exception as err:  # noqa: BLE001 -- only out-of-memory is handled here
            if not is_out_of_memory(err):
                raise
            if size == 1:
                raise SparseFitError("out of memory with a single episode; use a smaller model, --dtype bfloat16 "
                                     "or a smaller --batch-size") from err
            done = None  # the failed group's tensors are freed once this block has ended
        if done is None:
            _free_memory()
            size = max(1, size // 2)
            notify(f"out of memory with {chunk.stop - chunk.start} episodes at once; retrying with {size}")
            continue
        for offset, row in enumerate(done):
            rows[start + offset] = row
            if on_done is not None:
                on_done(start + offset, row)
        start = chunk.stop
    return rows  # type: ignore[return-value]


def _free_memory() -> None:
    import gc
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
