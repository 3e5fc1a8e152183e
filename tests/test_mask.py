"""Mask training on tiny T5 and tiny decoder-only models: exact per-matrix sparsity after every step, only
the scores change, straight-through gradients, PoE loss, save -> load -> merge."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsefit.errors import SparseFitError
from sparsefit.methods import Arch, get_method
from sparsefit.methods.mask import MaskedLinear, cubic_sparsity, poe_loss

torch.set_num_threads(1)


def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(0)
    config = T5Config(vocab_size=64, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                      num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config).eval(), Arch("seq2seq", "t5")


def tiny_causal():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return Gemma3ForCausalLM(config).eval(), Arch("causal", "gemma3_text")


MODELS = {"t5": tiny_t5, "causal": tiny_causal}


def batch_for(arch: Arch, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, 64, (4, 9), generator=gen)
    if arch.kind == "seq2seq":
        return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "labels": torch.randint(2, 64, (4, 6), generator=gen)}
    labels = input_ids.clone()
    labels[:, :4] = -100  # prompt part: no loss
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}


def plain_loss(model, batch):
    return model(**batch).loss


def train_steps(method, model, arch, steps, on_step=None, lr=0.05):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for step in range(1, steps + 1):
        loss = method.training_loss(model, batch_for(arch, seed=step), plain_loss)
        loss.backward()
        optimizer.step()
        method.after_step(model, step, steps)
        optimizer.zero_grad(set_to_none=True)
        if on_step:
            on_step(step)
    model.eval()


def wrappers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, MaskedLinear)}


def test_unknown_or_bad_options_name_the_option():
    with pytest.raises(SparseFitError, match="sparsty.*did you mean 'sparsity'"):
        get_method("mask", sparsty=0.5)
    with pytest.raises(SparseFitError, match="schedule"):
        get_method("mask", schedule="linear")
    with pytest.raises(SparseFitError, match="sparsity"):
        get_method("mask", sparsity=1.5)
    with pytest.raises(SparseFitError, match="unknown target 'mlp'"):
        get_method("mask", targets="attn,mlp")


@pytest.mark.parametrize("kind", ["t5", "causal"])
def test_exact_sparsity_every_step_and_only_scores_change(kind):
    base, arch = MODELS[kind]()
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    method = get_method("mask", sparsity=0.6, schedule="cubic", initial_sparsity=0.1, schedule_end=0.75)
    model = method.prepare(base, arch)
    masked = wrappers(model)
    assert masked and all("lm_head" not in n and "embed" not in n for n in masked)
    initial_scores = {n: w.mask_scores.detach().clone() for n, w in masked.items()}
    # before training: the initial sparsity, top-|W| kept
    for w in masked.values():
        assert int((~w.current_mask()).sum()) == round(0.1 * w.mask.numel())
    steps, seen = 4, []

    def check(step):
        expected = cubic_sparsity(step, steps, 0.1, 0.6, 0.75)
        seen.append(expected)
        for name, w in masked.items():
            zeros = int((~w.current_mask()).sum())
            assert zeros == round(expected * w.mask.numel()), (name, step)
            effective = w.effective_weight()
            assert torch.equal(effective == 0, ~w.mask | (w.base.weight == 0))

    train_steps(method, model, arch, steps, check)
    assert seen[-1] == pytest.approx(0.6) and seen[0] < seen[1] < seen[2]
    # only the scores were trained: every original parameter is bit-identical
    trained = dict(model.named_parameters())
    for name, value in original.items():
        wrapped = name.rsplit(".", 1)
        key = f"{wrapped[0]}.base.{wrapped[1]}" if wrapped[0] in masked else name
        assert torch.equal(trained[key], value), name
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{n}.mask_scores" for n in masked}
    assert any(not torch.equal(w.mask_scores, initial_scores[n]) for n, w in masked.items())
    report = method.report(model)
    assert report["mask_sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert 0 < report["flops_saved_percent"] < 60


def test_straight_through_gradient_reaches_pruned_scores():
    base, arch = tiny_t5()
    method = get_method("mask", sparsity=0.5, targets="ffn")
    model = method.prepare(base, arch)
    model.train()
    method.training_loss(model, batch_for(arch), plain_loss).backward()
    for w in wrappers(model).values():
        grad = w.mask_scores.grad
        assert grad is not None
        # a dropped weight still gets dL/dm = dL/dW_eff * W, so it can come back
        assert (grad[~w.mask] != 0).any()


@pytest.mark.parametrize("kind", ["t5", "causal"])
def test_save_load_merge_reproduces_trained_outputs(kind, tmp_path):
    base, arch = MODELS[kind]()
    pristine = copy.deepcopy(base)
    method = get_method("mask", sparsity=0.5)
    model = method.prepare(base, arch)
    train_steps(method, model, arch, 3)
    state = method.trained_state(model)
    assert set(state) == {f"{n}.{s}" for n in wrappers(model) for s in ("mask_scores", "mask")}
    save_file(state, str(tmp_path / "delta.safetensors"))
    batch = batch_for(arch, seed=99)
    with torch.no_grad():
        expected = model(**batch).logits

    fresh_method = get_method("mask", sparsity=0.5)
    loaded = fresh_method.prepare(copy.deepcopy(pristine), arch)
    fresh_method.load_trained(loaded, load_file(str(tmp_path / "delta.safetensors")))
    merged = fresh_method.merge(loaded)
    assert not wrappers(merged)
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-5)
    for name, w in wrappers(model).items():
        weight = merged.get_submodule(name).weight
        assert int((weight == 0).sum()) >= round(0.5 * weight.numel())
        assert torch.equal(weight, w.effective_weight().detach())

    with pytest.raises(SparseFitError, match="do not fit"):
        other = get_method("mask", sparsity=0.5, targets="ffn")
        other.load_trained(other.prepare(copy.deepcopy(pristine), arch), load_file(str(tmp_path / "delta.safetensors")))


def test_poe_loss_with_uniform_bias_equals_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 7, generator=gen)
    labels = torch.randint(0, 7, (10,), generator=gen)
    everywhere = torch.ones(10, dtype=torch.bool)
    plain = torch.nn.functional.cross_entropy(logits, labels)
    assert torch.allclose(poe_loss(logits, torch.zeros(10, 7), labels, everywhere), plain)
    # a bias model that already predicts the label lowers the loss the main model must pay
    confident = torch.full((10, 7), -5.0)
    confident[torch.arange(10), labels] = 5.0
    assert poe_loss(logits, confident, labels, everywhere) < plain


@pytest.mark.parametrize("kind", ["t5", "causal"])
def test_poe_training_uses_frozen_bias_model_on_label_tokens(kind):
    base, arch = MODELS[kind]()
    bias, _ = MODELS[kind]()
    torch.manual_seed(5)
    for p in bias.parameters():  # a different, frozen "bias" model with the same vocabulary
        p.data.add_(torch.randn_like(p) * 0.5)
    bias_before = {n: p.detach().clone() for n, p in bias.named_parameters()}
    separator = [7, 8]
    method = get_method("mask", sparsity=0.3)
    model = method.prepare(base, arch)
    method.set_bias_model(bias, separator_ids=separator)
    labels = torch.tensor([[3, 4, 7, 8, 9, 1], [5, 7, 8, 10, 1, -100]])
    positions = method.label_positions(labels)
    assert positions.tolist() == [[True, True, False, False, False, False],
                                  [True, False, False, False, False, False]]
    batch = batch_for(arch)
    model.train()
    poe = method.training_loss(model, batch, plain_loss)
    plain = plain_loss(model, batch)
    assert torch.isfinite(poe) and not torch.isclose(poe, plain)
    train_steps(method, model, arch, 2)
    assert all(torch.equal(p, bias_before[n]) for n, p in bias.named_parameters())


@pytest.mark.parametrize("model_id", ["tiny-t5", "tiny-causal"])
def test_poe_mask_training_through_the_training_loop(model_id):
    """The real training loop (tokenised batches, causal target-only logits) with a PoE bias model."""
    from sparsefit.backbones import load_backbone
    from sparsefit.config import TrainConfig
    from sparsefit.train import train
    backbone = load_backbone(model_id)
    bias = copy.deepcopy(backbone.model)
    method = get_method("mask", sparsity=0.4)
    model = method.prepare(copy.deepcopy(backbone.model), backbone.arch)
    separator = backbone.tokenizer(" because", add_special_tokens=False).input_ids
    method.set_bias_model(bias, separator_ids=separator)
    inputs = ["explain nli hypothesis: a man sleeps premise: a man is sleeping"] * 2
    targets = ["entailment because a man sleeping is a man who sleeps"] * 2
    config = TrainConfig(lr=0.01, steps=2, batch_size=2, threads=1)
    from sparsefit.train import collate, encode_training_pairs
    batch = collate(encode_training_pairs(backbone, inputs, targets, config), 0, backbone.is_seq2seq)
    labels = batch["labels"] if backbone.is_seq2seq else batch["labels"][:, 1:]
    positions = method.label_positions(labels)
    target_tokens = labels != -100
    assert 0 < int(positions[0].sum()) < int(target_tokens[0].sum())  # the label, not the explanation
    result = train(backbone, method, model, inputs, targets, config, progress=False)
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    for w in wrappers(model).values():
        assert int((~w.current_mask()).sum()) == round(0.4 * w.mask.numel())


def test_no_grad_forward_cache_follows_every_update():
    """Generation reuses the masked weight between no-grad forwards; a score update or a schedule step
    made without any grad-enabled forward in between must still refresh it."""
    base, arch = tiny_t5()
    method = get_method("mask", sparsity=0.6, schedule="cubic", initial_sparsity=0.0, schedule_end=1.0)
    model = method.prepare(base, arch)
    batch = batch_for(arch, seed=3)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 4):
        with torch.no_grad():
            before = model(**batch).logits
            for w in wrappers(model).values():  # an optimizer-like in-place update
                w.mask_scores.add_(torch.rand(w.mask_scores.shape, generator=gen))
            method.after_step(model, step, 3)
            cached = model(**batch).logits
        assert not torch.equal(before, cached), step
        assert torch.equal(cached, model(**batch).logits.detach()), step  # grad path: no cache
