"""Training: turn examples into token batches and fine-tune with AdamW at a constant learning rate.

Decoder-only models compute logits only at the target positions: the 262k-token LM head of Gemma would
otherwise dominate a step (REFERENCE §7: 4.3 s -> 2.5 s per step on 2 cores).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sparsefit.backbones import Backbone
from sparsefit.config import TrainConfig
from sparsefit.errors import SparseFitError
from sparsefit.methods.base import SparseMethod

IGNORE = -100


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    seconds_per_step: float = 0.0
    peak_memory_mb: float = 0.0
    config: dict = field(default_factory=dict)


def _encode_plain(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def causal_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Prompt tokens for a decoder-only model: BOS (if the tokenizer has one) + the text, no EOS."""
    ids = _encode_plain(tokenizer, prompt)
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def encode_training_pairs(backbone: Backbone, inputs: Sequence[str], targets: Sequence[str],
                          config: TrainConfig) -> list[dict[str, list[int]]]:
    """Token ids per example (unpadded). Causal: prompt + target + EOS, loss on the target part only."""
    tok = backbone.tokenizer
    encoded = []
    if backbone.is_seq2seq:
        for source, target in zip(inputs, targets):
            src = tok(source, truncation=True, max_length=config.max_input_length).input_ids
            tgt = tok(target, truncation=True, max_length=config.max_target_length).input_ids
            encoded.append({"input_ids": src, "labels": tgt})
        return encoded
    from sparsefit.prompts import causal_prompt, causal_target
    for source, target in zip(inputs, targets):
        prompt = causal_prompt_ids(tok, causal_prompt(source))[-config.max_input_length:]
        answer = _encode_plain(tok, causal_target(target) + "\n")[: config.max_target_length - 1]
        answer = answer + [tok.eos_token_id]
        encoded.append({"input_ids": prompt + answer, "labels": [IGNORE] * len(prompt) + answer})
    return encoded


def collate(encoded: Sequence[dict[str, list[int]]], pad_id: int, seq2seq: bool) -> dict[str, torch.Tensor]:
    """Right-pad a batch. Seq2seq pads labels separately (decoder side); padding never counts in the loss."""
    width = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    label_width = max(len(e["labels"]) for e in encoded) if seq2seq else width
    labels = torch.full((len(encoded), label_width), IGNORE, dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        input_ids[row, :n] = torch.tensor(e["input_ids"])
        attention[row, :n] = 1
        labels[row, : len(e["labels"])] = torch.tensor(e["labels"])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def example_batches(backbone: Backbone, inputs: Sequence[str], targets: Sequence[str], config: TrainConfig):
    """One collated batch per example, on the model's device (per-example gradients, e.g. Fisher scores)."""
    device = next(backbone.model.parameters()).device
    for encoded in encode_training_pairs(backbone, inputs, targets, config):
        yield {k: v.to(device) for k, v in
               collate([encoded], backbone.tokenizer.pad_token_id, backbone.is_seq2seq).items()}


def seq2seq_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    if out.logits.dtype == torch.float32:
        return out.loss
    # bf16 weights: the cross-entropy is taken in fp32, as for decoder-only models
    return F.cross_entropy(out.logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)


def causal_target_logits(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and gold ids at the target positions only (row by row), with the LM head applied only there."""
    hidden = model.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 use_cache=False).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, targets[keep]


def causal_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy on target tokens."""
    logits, gold = causal_target_logits(model, batch)
    return F.cross_entropy(logits.float(), gold)


@dataclass
class ValidationScore:
    """Teacher-forced validation: one forward pass per batch, no generation.

    `label_accuracy`: % of examples whose greedy answer would start with the gold target's label, " because"
    and a new word (the argmax at every position of that span equals the gold token, and the next argmax
    starts a word: greedy decoding conditions on its own previous tokens, which then are the gold ones, so
    this is exact; an answer that spells the label with other tokens counts as wrong). `loss`: mean
    cross-entropy per target token (label and explanation).
    """
    label_accuracy: float
    loss: float
    matches: list[bool] = field(default_factory=list)  # per example: greedy would start with the gold span


def label_span_length(backbone: Backbone, target_text: str, answer_ids: Sequence[int]) -> int:
    """Tokens of `answer_ids` that spell the label and " because" (at least one)."""
    from sparsefit.prompts import EXPLANATION_SEP, causal_target
    head = target_text.split(EXPLANATION_SEP)[0] + EXPLANATION_SEP.rstrip()
    head_ids = _encode_plain(backbone.tokenizer, causal_target(head) if not backbone.is_seq2seq else head)
    common = 0
    for a, b in zip(head_ids, answer_ids):
        if a != b:
            break
        common += 1
    return max(1, common)


@torch.no_grad()
def validation_score(backbone: Backbone, model: nn.Module, inputs: Sequence[str], targets: Sequence[str],
                     config: TrainConfig, batch_size: int = 8) -> ValidationScore:
    """Label accuracy (exact for greedy decoding) and target loss on (input, target) pairs, in one pass."""
    encoded = encode_training_pairs(backbone, inputs, targets, config)
    answers = [[i for i in e["labels"] if i != IGNORE] for e in encoded]
    spans = [min(label_span_length(backbone, t, a), len(a)) for a, t in zip(answers, targets)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    matches: list[bool] = []
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(chunk, backbone.tokenizer.pad_token_id, backbone.is_seq2seq).items()}
        logits, gold = _target_logits(backbone, model, batch)
        loss_sum += F.cross_entropy(logits.float(), gold, reduction="sum").item()
        tokens += gold.numel()
        predicted, gold = logits.argmax(-1).tolist(), gold.tolist()
        offset = 0
        for answer, span in zip(answers[start:start + batch_size], spans[start:start + batch_size]):
            n = len(answer)
            same = predicted[offset:offset + span] == gold[offset:offset + span]
            # after "because" greedy must go on with a word (" the ..."), not glue on ("becausee")
            matches.append(same and (span == n or _starts_a_word(backbone.tokenizer, predicted[offset + span])))
            offset += n
    model.train(was_training)
    return ValidationScore(label_accuracy=100.0 * sum(matches) / max(1, len(encoded)),
                           loss=loss_sum / max(1, tokens), matches=matches)


def _starts_a_word(tokenizer, token_id: int) -> bool:
    piece = tokenizer.convert_ids_to_tokens(token_id) or ""
    return piece.startswith(("\u2581", "\u0120", " "))  # SentencePiece ▁, byte-level BPE Ġ, plain space


def _target_logits(backbone: Backbone, model: nn.Module, batch: dict[str, torch.Tensor]):
    """Logits and gold ids at every target position, row by row in order (padding and prompt left out)."""
    if not backbone.is_seq2seq:
        return causal_target_logits(model, batch)
    logits = model(**batch).logits
    keep = batch["labels"] != IGNORE
    return logits[keep], batch["labels"][keep]


def default_loss_for(backbone: Backbone):
    return seq2seq_loss if backbone.is_seq2seq else causal_loss


def _batches(n: int, batch_size: int, steps: int, seed: int):
    """Shuffled epochs (seeded), cut into `steps` batches of indices."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(n))
                rng.shuffle(order)
            batch.append(order.pop())
        yield batch


class MemoryMeter:
    """Peak resident memory (CPU, sampled each step) or peak allocated CUDA memory."""

    def __init__(self, device: torch.device):
        import psutil
        self.device, self.process, self.peak = device, psutil.Process(), 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        self.peak = max(self.peak, self.process.memory_info().rss)

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self.peak / 2**20


def make_optimizer(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW fused into one kernel per step, on CUDA and on the CPU. On the CPU torch's default (one tensor at
    a time) takes 4.5x as long per step over Gemma's 94M non-embedding weights, 0.34 s against 0.08 s at one
    thread (`bench/bench_optimizer.py`): a tenth of a `fish` or full fine-tuning step."""
    try:
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype the fused kernel lacks: the default still works
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


class CompiledLoss:
    """The loss function under torch.compile, falling back to eager mode (with one line) if compiling fails.

    Compilation happens at the first forward (and backward), so failures show up there, not here: `train`
    calls `fall_back` when a compiled step raises and repeats the step eagerly.
    """

    def __init__(self, loss_fn, backend: str = "inductor"):
        self.eager = loss_fn
        self.compiled = torch.compile(loss_fn, dynamic=True, backend=backend)
        self.active = True

    def __call__(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.compiled if self.active else self.eager)(model, batch)

    def fall_back(self, err: BaseException) -> None:
        self.active = False
        root = err  # dynamo wraps the compiler's own error (BackendCompilerFailed -> the real cause)
        while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None and inner is not root:
            root = inner
        reason = " ".join(str(root).split())[:200] or type(root).__name__
        print(f"torch.compile failed ({type(root).__name__}: {reason}): continuing in eager mode", file=sys.stderr)


def _forward_backward(method: SparseMethod, model: nn.Module, batch: dict[str, torch.Tensor], loss_fn,
                      optimizer: torch.optim.Optimizer, step: int, lr: float) -> torch.Tensor:
    try:
        loss = method.training_loss(model, batch, loss_fn)
        _check_finite(loss, step, lr)
        loss.backward()
        return loss
    except SparseFitError:
        raise
    except Exception as err:  # noqa: BLE001 -- any compiler error; eager errors are re-raised below
        if not (isinstance(loss_fn, CompiledLoss) and loss_fn.active):
            raise
        loss_fn.fall_back(err)
        optimizer.zero_grad(set_to_none=True)  # a backward that failed halfway may have left gradients
        loss = method.training_loss(model, batch, loss_fn)
        _check_finite(loss, step, lr)
        loss.backward()
        return loss


def _check_finite(loss: torch.Tensor, step: int, lr: float) -> None:
    if not torch.isfinite(loss):
        raise SparseFitError(f"training diverged: loss is {loss.item()} at step {step} (lr={lr}). "
                             "Lower the learning rate or check the data; nothing was saved.")


def train(backbone: Backbone, method: SparseMethod, model: nn.Module, inputs: Sequence[str],
          targets: Sequence[str], config: TrainConfig, *, progress: bool = True,
          compile: bool | str = False, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Fine-tune `model` (already prepared by `method`) on (input, target) text pairs, in place.

    The model's device and dtype are used as they are. `compile`: run the loss under torch.compile
    (True: the default inductor backend; a string: that torch.compile backend). `on_step(step)` is called
    after each optimizer step (e.g. to score a checkpoint; the model is put back in training mode after it).
    """
    from tqdm import tqdm
    if not inputs:
        raise SparseFitError("no training examples")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise SparseFitError(f"method '{method.name}' left no trainable parameter")
    device = next(model.parameters()).device
    encoded = encode_training_pairs(backbone, inputs, targets, config)
    optimizer = make_optimizer(params, config)
    loss_fn = default_loss_for(backbone)
    if compile:
        loss_fn = CompiledLoss(loss_fn, "inductor" if compile is True else compile)
    pad_id = backbone.tokenizer.pad_token_id
    memory = MemoryMeter(device)
    result = TrainResult(config=dict(vars(config)))
    model.train()
    started = time.perf_counter()
    bar = tqdm(total=config.steps, desc=f"train {method.name}", unit="step", disable=not progress)
    for step, indices in enumerate(_batches(len(encoded), config.batch_size, config.steps, config.seed), 1):
        batch = {k: v.to(device) for k, v in
                 collate([encoded[i] for i in indices], pad_id, backbone.is_seq2seq).items()}
        loss = _forward_backward(method, model, batch, loss_fn, optimizer, step, config.lr)
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        method.after_step(model, step, config.steps)
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        result.losses.append(value)
        memory.sample()
        bar.update()
        bar.set_postfix(loss=f"{value:.3f}")
        if on_step is not None:
            on_step(step)
            model.train()
    bar.close()
    model.eval()
    result.steps = config.steps
    result.seconds = time.perf_counter() - started
    result.seconds_per_step = result.seconds / max(1, config.steps)
    result.peak_memory_mb = memory.peak_mb()
    return result
