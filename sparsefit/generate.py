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

# generation-config settings that would add a logits processor to HF greedy decoding, with their no-op values
_PROCESSOR_DEFAULTS = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,), "guidance_scale": (None, 1.0), "watermarking_config": (None,),
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


def _step_done(next_tokens: torch.Tensor, alive: list[int], rows: list[list[int]], stop: set[int]) -> list[int]:
    """Append each live row's token; return the positions (in the current batch) of rows that continue."""
    keep = []
    for position, (row, token) in enumerate(zip(alive, next_tokens.tolist())):  # one device sync per step
        rows[row].append(token)
        if token not in stop:
            keep.append(position)
    return keep


def greedy_causal(model: nn.Module, input_ids: torch.Tensor, attention: torch.Tensor, stop_ids: Sequence[int],
                  max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding of a left-padded batch; returns each row's new tokens (the stop token included)."""
    cache = _new_cache(model, seq2seq=False)
    cache_arg = _cache_argument(model)
    # as HF: positions count real tokens only, padding sits at 0, and an all-ones mask is dropped
    positions = (attention.cumsum(-1) - 1).masked_fill(attention == 0, 0)
    mask = None if bool(attention.all()) else attention
    rows: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    alive, stop = list(range(input_ids.shape[0])), set(stop_ids)
    step_ids, step_positions = input_ids, positions
    for _ in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_positions, use_cache=True,
                    logits_to_keep=1, **{cache_arg: cache})
        next_tokens = out.logits[:, -1].float().argmax(-1)
        keep = _step_done(next_tokens, alive, rows, stop)
        if not keep:
            break
        last_positions = step_positions[:, -1:]
        if len(keep) < len(alive):  # drop finished rows, cache included
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            next_tokens, last_positions = next_tokens[index], last_positions[index]
            mask = mask[index] if mask is not None else None
            alive = [alive[p] for p in keep]
        step_ids, step_positions = next_tokens[:, None], last_positions + 1
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
    return rows


def greedy_seq2seq(model: nn.Module, input_ids: torch.Tensor, attention: torch.Tensor, stop_ids: Sequence[int],
                   max_new_tokens: int) -> list[list[int]]:
    """Greedy decoding for encoder-decoder models: encode once, then decode with self- and cross-attention caches."""
    from transformers.modeling_outputs import BaseModelOutput
    encoder_states = model.get_encoder()(input_ids=input_ids, attention_mask=attention, return_dict=True
                                         ).last_hidden_state
    cache = _new_cache(model, seq2seq=True)
    cache_arg = _cache_argument(model)
    start = model.generation_config.decoder_start_token_id
    if start is None:
        start = model.config.decoder_start_token_id
    step_ids = torch.full((input_ids.shape[0], 1), start, dtype=torch.long, device=input_ids.device)
    rows: list[list[int]] = [[] for _ in range(input_ids.shape[0])]
    alive, stop = list(range(input_ids.shape[0])), set(stop_ids)
    for _ in range(max_new_tokens):
        out = model(encoder_outputs=BaseModelOutput(last_hidden_state=encoder_states), attention_mask=attention,
                    decoder_input_ids=step_ids, use_cache=True, **{cache_arg: cache})
        next_tokens = out.logits[:, -1].float().argmax(-1)
        keep = _step_done(next_tokens, alive, rows, stop)
        if not keep:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=input_ids.device)
            cache.batch_select_indices(index)
            next_tokens, encoder_states, attention = next_tokens[index], encoder_states[index], attention[index]
            alive = [alive[p] for p in keep]
        step_ids = next_tokens[:, None]
    return rows


def _hf_generate(model: nn.Module, input_ids: torch.Tensor, attention: torch.Tensor, seq2seq: bool,
                 stop_ids: Sequence[int], max_new_tokens: int, pad_id: int) -> list[list[int]]:
    generated = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                               do_sample=False, num_beams=1, eos_token_id=list(stop_ids), pad_token_id=pad_id,
                               use_cache=True)
    if not seq2seq:
        generated = generated[:, input_ids.shape[1]:]
    return generated.tolist()
