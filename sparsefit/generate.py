"""Batched greedy generation with the KV cache; decoder-only answers stop at the end of the line.

Our own greedy loop replaces HF `generate`: it gives the same tokens (tests/test_generate.py compares them)
but drops a row from the batch, cache included, as soon as it has stopped. HF keeps computing finished rows
until the longest answer ends, which wastes most of a large GPU batch (answers vary from 5 to 48 tokens).
Models the loop cannot reproduce exactly (extra logits processors in their generation config, prompt-learning
PEFT wrappers, a forward without a cache argument) still go through HF `generate`.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import nn

from sparsefit.backbones import Backbone
from sparsefit.train import causal_prompt_ids

CPU_EVAL_BATCH = 32  # CPU throughput kept rising up to 32 (bench/bench_backend.py)
CUDA_EVAL_BATCH = 128  # a GPU is far from busy at 32 rows of a 270M-770M model

# generation-config settings that would add a logits processor or stopping rule to HF greedy decoding, with
# their no-op values
_PROCESSOR_DEFAULTS = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
    "stop_strings": (None,), "max_time": (None,),
}


def default_eval_batch_size(device: torch.device) -> int:
    return CUDA_EVAL_BATCH if device.type == "cuda" else CPU_EVAL_BATCH


def newline_token_ids(tokenizer) -> list[int]:
    """Token ids that decode to exactly a newline (Gemma: "\\n"; SentencePiece byte fallback: <0x0A>)."""
    ids = []
    for candidate in tokenizer(["\n"], add_special_tokens=False).input_ids[0]:
        if tokenizer.decode([candidate]) == "\n":
            ids.append(candidate)
    byte_id = tokenizer.convert_tokens_to_ids("<0x0A>")
    if isinstance(byte_id, int) and byte_id != tokenizer.unk_token_id and byte_id not in ids:
        ids.append(byte_id)
    return ids


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Group similar lengths together so little compute goes to padding; results are put back in order."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def generate(backbone: Backbone, model: nn.Module, prompts: Sequence[str], *, batch_size: int | None = None,
             max_new_tokens: int = 48, max_input_length: int = 256, progress: bool = True,
             engine: str = "auto") -> list[str]:
    """Greedy continuation of each model input (the FEB input text; the causal separator is added here).

    `batch_size` None: 32 on CPU, 128 on CUDA. `engine`: "auto" (own loop where it is exact), "own" or "hf".
    """
    from tqdm import tqdm
    from sparsefit.prompts import causal_prompt
    tok = backbone.tokenizer
    model.eval()
    device = next(model.parameters()).device
    batch_size = batch_size or default_eval_batch_size(device)
    if backbone.is_seq2seq:
        encoded = [tok(p, truncation=True, max_length=max_input_length).input_ids for p in prompts]
        stop_ids = [tok.eos_token_id]
    else:
        encoded = [causal_prompt_ids(tok, causal_prompt(p))[-max_input_length:] for p in prompts]
        stop_ids = [tok.eos_token_id, *newline_token_ids(tok)]
    decoder = _decoder_for(model, engine)
    outputs: list[str] = [""] * len(prompts)
    batches = _length_sorted_batches([len(e) for e in encoded], batch_size)
    for indices in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        input_ids, attention = _pad([encoded[i] for i in indices], tok.pad_token_id, left=not backbone.is_seq2seq)
        input_ids, attention = input_ids.to(device), attention.to(device)
        if decoder is None:
            rows = _hf_generate(model, input_ids, attention, backbone.is_seq2seq, stop_ids, max_new_tokens,
                                tok.pad_token_id)
        elif backbone.is_seq2seq:
            rows = greedy_seq2seq(decoder, input_ids, attention, stop_ids, max_new_tokens)
        else:
            rows = greedy_causal(decoder, input_ids, attention, stop_ids, max_new_tokens)
        for row, i in enumerate(indices):
            text = tok.decode(rows[row], skip_special_tokens=True)
            outputs[i] = " ".join(text.split("\n")[0].split()) if not backbone.is_seq2seq else " ".join(text.split())
    return outputs


def _pad(sequences: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder-only models continue from the last position, so they are padded on the left."""
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span], attention[row, span] = torch.tensor(ids, dtype=torch.long), 1
    return input_ids, attention


def _decoder_for(model: nn.Module, engine: str) -> nn.Module | None:
    """The transformers model our loop can drive with the same result as HF `generate`, or None (use HF)."""
    if engine == "hf":
        return None
    inner = model
    peft_config = getattr(model, "active_peft_config", None)
    if peft_config is not None:
        if peft_config.is_prompt_learning:  # virtual tokens are added inside PeftModel.generate
            inner = None
        else:
            inner = model.get_base_model()  # LoRA-style adapters live inside the base model's layers
    supported = inner is not None and _cache_argument(inner) is not None and _plain_greedy(inner)
    if not supported and engine == "own":
        raise ValueError(f"the own generation loop cannot reproduce HF generate for {type(model).__name__}")
    return inner if supported else None


def _cache_argument(model: nn.Module) -> str | None:
    """transformers 5.24 calls the KV-cache argument `cache`; earlier releases `past_key_values`."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _plain_greedy(model: nn.Module) -> bool:
    config = getattr(model, "generation_config", None)
    if config is None:
        return True
    return all(getattr(config, key, None) in allowed for key, allowed in _PROCESSOR_DEFAULTS.items())


def _new_cache(model: nn.Module, seq2seq: bool):
    from transformers import DynamicCache, EncoderDecoderCache
    config = model.config.get_text_config(decoder=True)
    if seq2seq:
        return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    return DynamicCache(config=config)


class _RunningBatch:
    """Which rows of the running batch still generate, their tokens so far, and when to drop finished ones.

    Dropping copies the KV cache, so on a GPU (where a decoding step is cheap) finished rows wait until they
    are `drop_fraction` of the batch; on a CPU (a step costs far more than the copy) they leave at once.
    """

    def __init__(self, size: int, stop_ids: Sequence[int], drop_fraction: float):
        self.tokens: list[list[int]] = [[] for _ in range(size)]
        self.rows = list(range(size))  # the original row of each batch position
        self.done = [False] * size
        self.stop, self.drop_fraction = set(stop_ids), drop_fraction

    def record(self, next_tokens: torch.Tensor) -> bool:
        """Append each live row's token; False once every row has stopped."""
        for position, token in enumerate(next_tokens.tolist()):  # the one device sync per step
            if not self.done[position]:
                self.tokens[self.rows[position]].append(token)
                self.done[position] = token in self.stop
        return not all(self.done)

    def positions_to_keep(self) -> list[int] | None:
        """Batch positions that continue, when it is time to drop the finished rows; else None."""
        finished = sum(self.done)
        if finished == 0 or finished < self.drop_fraction * len(self.done):
            return None
        keep = [position for position, done in enumerate(self.done) if not done]
        self.rows, self.done = [self.rows[p] for p in keep], [False] * len(keep)
        return keep


def default_drop_fraction(device: torch.device) -> float:
    return 0.125 if device.type == "cuda" else 0.0


def greedy_causal(model: nn.Module, input_ids: torch.Tensor, attention: torch.Tensor, stop_ids: Sequence[int],
                  max_new_tokens: int, drop_fraction: float | None = None) -> list[list[int]]:
    """Greedy decoding of a left-padded batch; returns each row's new tokens (the stop token included)."""
    cache = _new_cache(model, seq2seq=False)
    cache_arg = _cache_argument(model)
    # as HF: positions count real tokens only, padding sits at 0, and an all-ones mask is dropped
    positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
    mask = None if bool(attention.all()) else attention
    if drop_fraction is None:
        drop_fraction = default_drop_fraction(input_ids.device)
    batch = _RunningBatch(input_ids.shape[0], stop_ids, drop_fraction)
    step_ids, step_positions = input_ids, positions
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, use_cache=True,
                    logits_to_keep=1, **{cache_arg: cache})
        next_tokens = out.logits[:, -1].float().argmax(-1)
        if not batch.record(next_tokens):
            break
        last_positions = step_positions[:, -1:]
        keep = batch.positions_to_keep()
        if keep is not None:  # drop finished rows, cache included
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            next_tokens, last_positions = next_tokens[index], last_positions[index]
            mask = mask[index] if mask is not None else None
        step_ids, step_positions = next_tokens[:, None], last_positions + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    return batch.tokens


def greedy_seq2seq(model: nn.Module, input_ids: torch.Tensor, attention: torch.Tensor, stop_ids: Sequence[int],
                   max_new_tokens: int, drop_fraction: float | None = None) -> list[list[int]]:
    """Greedy decoding for encoder-decoder models: encode once, then decode with self- and cross-attention caches."""
    from transformers.modeling_outputs import BaseModelOutput
    encoder_states = model.get_encoder()(input_ids=input_ids, attention_mask=attention, return_dict=True
                                         ).last_hidden_state
    cache = _new_cache(model, seq2seq=True)
    cache_arg = _cache_argument(model)
    start = model.generation_config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    if drop_fraction is None:
        drop_fraction = default_drop_fraction(input_ids.device)
    batch = _RunningBatch(input_ids.shape[0], stop_ids, drop_fraction)
    step_ids = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
    for _ in range(max_new_tokens):
        out = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states), attention_mask=attention,
                    decoder_input_ids=step_ids, use_cache=True, **{cache_arg: cache})
        next_tokens = out.logits[:, -1].float().argmax(-1)
        if not batch.record(next_tokens):
            break
        keep = batch.positions_to_keep()
        if keep is not None:
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            next_tokens, encoder_states, attention = next_tokens[index], encoder_states[index], attention[index]
        step_ids = next_tokens[:, None]
    return batch.tokens


def _hf_generate(model: nn.Module, input_ids: torch.Tensor, attention: torch.Tensor, seq2seq: bool,
                 stop_ids: Sequence[int], max_new_tokens: int, pad_id: int) -> list[list[int]]:
    generated = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                               do_sample=False, num_beams=1, eos_token_id=list(stop_ids), pad_token_id=pad_id,
                               use_cache=True)
    if not seq2seq:
        generated = generated[:, input_ids.shape[1]:]
    return generated.tolist()
