"""The own greedy loop (finished rows leave the batch) gives exactly HF `generate`'s greedy tokens."""

import copy

import pytest
import torch

from sparsefit.backbones import load_backbone
from sparsefit.data import load_examples
from sparsefit.generate import _pad, generate, greedy_causal, greedy_seq2seq
from sparsefit.prompts import causal_prompt, format_input
from sparsefit.train import causal_prompt_ids

MODELS = ["tiny-t5", "tiny-causal"]


@pytest.fixture(scope="module", params=MODELS)
def backbone(request):
    torch.set_num_threads(1)
    return load_backbone(request.param, device="cpu")


def _varied(model):
    """A copy with a seeded random output layer: the random tiny T5 (tied embeddings) always predicts its
    padding token, which would make every comparison trivially equal. Real weights, real forward passes."""
    varied = copy.deepcopy(model)
    head = varied.get_output_embeddings()
    generator = torch.Generator().manual_seed(0)
    head.weight = torch.nn.Parameter(torch.randn(head.weight.shape, generator=generator).to(head.weight.dtype))
    return varied


def _prompts(n: int = 10) -> list[str]:
    """Real prompts of clearly different lengths (cut at different points), so batches carry padding."""
    texts = [format_input(e) for e in load_examples("sample-nli", None, "train")[:n]]
    return [text[: 40 + 23 * i] for i, text in enumerate(texts)]


def test_generate_matches_hf_batched_and_one_by_one(backbone):
    prompts, model = _prompts(), _varied(backbone.model)
    hf = generate(backbone, model, prompts, batch_size=4, max_new_tokens=12, progress=False, engine="hf")
    own = generate(backbone, model, prompts, batch_size=4, max_new_tokens=12, progress=False, engine="own")
    one_by_one = generate(backbone, model, prompts, batch_size=1, max_new_tokens=12, progress=False, engine="own")
    assert own == hf
    assert own == one_by_one
    assert len(set(own)) > 1  # not one degenerate answer for every prompt


def _encoded(backbone, prompts):
    tok = backbone.tokenizer
    if backbone.is_seq2seq:
        return [tok(p).input_ids for p in prompts]
    return [causal_prompt_ids(tok, causal_prompt(p)) for p in prompts]


@pytest.mark.parametrize("drop_fraction", [0.0, 0.3])  # 0: the CPU's (drop at once); 0.3: wait for a few
def test_rows_that_stop_early_leave_the_batch_with_the_same_tokens(backbone, drop_fraction):
    """Stop tokens picked from HF's own output make rows finish at different steps; tokens must still match."""
    tok, model = backbone.tokenizer, _varied(backbone.model)
    input_ids, attention = _pad(_encoded(backbone, _prompts(8)), tok.pad_token_id, left=not backbone.is_seq2seq)
    kwargs = dict(input_ids=input_ids, attention_mask=attention, do_sample=False, num_beams=1, use_cache=True,
                  pad_token_id=tok.pad_token_id)
    free = model.generate(**kwargs, max_new_tokens=10, eos_token_id=[tok.eos_token_id])
    start = 1 if backbone.is_seq2seq else input_ids.shape[1]  # T5 output begins with the decoder start token
    free_rows = free[:, start:].tolist()
    stop = sorted({free_rows[0][2], free_rows[3][5], free_rows[5][7]} - {tok.pad_token_id})
    reference = model.generate(**kwargs, max_new_tokens=10, eos_token_id=stop)[:, start:].tolist()
    loop = greedy_seq2seq if backbone.is_seq2seq else greedy_causal
    rows = loop(model, input_ids, attention, stop, max_new_tokens=10, drop_fraction=drop_fraction)
    lengths = {len(r) for r in rows}
    assert len(lengths) >= 2 and min(lengths) < 10  # rows really did stop at different steps
    for row, ref in zip(rows, reference):
        assert row == ref[: len(row)]  # HF pads the rest of a finished row
        assert all(t == tok.pad_token_id for t in ref[len(row):])


def test_bfloat16_generation_matches_hf(backbone):
    bf16 = load_backbone(backbone.model_id, device="cpu", dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16 and bf16.fingerprint == backbone.fingerprint
    prompts, model = _prompts(6), _varied(bf16.model)
    hf = generate(bf16, model, prompts, batch_size=3, max_new_tokens=8, progress=False, engine="hf")
    own = generate(bf16, model, prompts, batch_size=3, max_new_tokens=8, progress=False, engine="own")
    assert own == hf and len(set(own)) > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", MODELS)
def test_cuda_generation_matches_hf(model):
    backbone = load_backbone(model, device="cuda")
    prompts, varied = _prompts(), _varied(backbone.model)
    hf = generate(backbone, varied, prompts, batch_size=4, max_new_tokens=12, progress=False, engine="hf")
    own = generate(backbone, varied, prompts, batch_size=4, max_new_tokens=12, progress=False, engine="own")
    assert own == hf and len(set(own)) > 1


def test_models_with_extra_logits_processors_keep_hf_generate():
    """A repetition penalty in the generation config changes greedy output; the own loop must not ignore it."""
    backbone = load_backbone("tiny-causal", device="cpu")
    model = _varied(backbone.model)
    model.generation_config.repetition_penalty = 5.0
    prompts = _prompts(4)
    hf = generate(backbone, model, prompts, batch_size=2, max_new_tokens=12, progress=False, engine="hf")
    assert generate(backbone, model, prompts, batch_size=2, max_new_tokens=12, progress=False) == hf
    with pytest.raises(ValueError, match="cannot reproduce HF generate"):
        generate(backbone, model, prompts, max_new_tokens=12, progress=False, engine="own")
    model.generation_config.repetition_penalty = 1.0
    plain = generate(backbone, model, prompts, batch_size=2, max_new_tokens=12, progress=False, engine="own")
    assert plain != hf  # the penalty really changed the answers, so the check above means something
