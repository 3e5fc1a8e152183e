"""Batched greedy generation with the KV cache; decoder-only answers stop at the end of the line."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from sparsefit.backbones import Backbone
from sparsefit.train import causal_prompt_ids


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
def generate(backbone: Backbone, model: nn.Module, prompts: Sequence[str], *, batch_size: int = 16,
             max_new_tokens: int = 48, max_input_length: int = 256, progress: bool = True) -> list[str]:
    """Greedy continuation of each model input (the FEB input text; the causal separator is added here)."""
    from tqdm import tqdm
    from sparsefit.prompts import causal_prompt
    tok = backbone.tokenizer
    model.eval()
    device = next(model.parameters()).device
    if backbone.is_seq2seq:
        encoded = [tok(p, truncation=True, max_length=max_input_length).input_ids for p in prompts]
        stop_ids = [tok.eos_token_id]
    else:
        encoded = [causal_prompt_ids(tok, causal_prompt(p))[-max_input_length:] for p in prompts]
        stop_ids = [tok.eos_token_id, *newline_token_ids(tok)]
    outputs: list[str] = [""] * len(prompts)
    batches = _length_sorted_batches([len(e) for e in encoded], batch_size)
    for indices in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        width = max(len(encoded[i]) for i in indices)
        # decoder-only models continue from the last position, so pad on the left
        left = not backbone.is_seq2seq
        input_ids = torch.full((len(indices), width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, i in enumerate(indices):
            ids = torch.tensor(encoded[i])
            span = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[row, span], attention[row, span] = ids, 1
        generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                   max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                   eos_token_id=stop_ids, pad_token_id=tok.pad_token_id, use_cache=True)
        if not backbone.is_seq2seq:
            generated = generated[:, width:]
        for row, i in enumerate(indices):
            text = tok.decode(generated[row], skip_special_tokens=True)
            outputs[i] = " ".join(text.split("\n")[0].split()) if not backbone.is_seq2seq else " ".join(text.split())
    return outputs
