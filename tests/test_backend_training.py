"""Real forward/backward passes on tiny T5 and tiny decoder-only models: loss drops, only chosen tensors change."""

import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from sparsefit.backbones import load_backbone
from sparsefit.config import TrainConfig
from sparsefit.errors import SparseFitError
from sparsefit.methods import Arch, count_parameters, get_method
from sparsefit.methods.selection import select_parameters
from sparsefit.train import train

PAIRS = [
    ("explain nli hypothesis: a man is sitting . premise: a man sits on a bench .",
     "entailment because sitting on a bench is sitting ."),
    ("explain nli hypothesis: a dog is sleeping . premise: a dog runs in the park .",
     "contradiction because a dog cannot sleep and run at once ."),
    ("explain nli hypothesis: the woman is a teacher . premise: a woman stands near a table .",
     "neutral because standing near a table does not say what her job is ."),
    ("explain nli hypothesis: children play . premise: two children are playing ball outside .",
     "entailment because playing ball is playing ."),
]


@pytest.fixture(scope="module", params=["tiny-t5", "tiny-causal"])
def backbone(request):
    torch.set_num_threads(1)
    return load_backbone(request.param)


def _train(backbone, method_name, steps=25, lr=3e-3, **options):
    model = copy.deepcopy(backbone.model)
    method = get_method(method_name, **options)
    if hasattr(method, "total_steps"):
        method.total_steps = steps
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = method.prepare(model, backbone.arch)
    inputs, targets = zip(*PAIRS)
    result = train(backbone, method, model, list(inputs), list(targets),
                   TrainConfig(lr=lr, steps=steps, batch_size=4, seed=1), progress=False)
    return method, model, before, result


def test_sparsefit_trains_only_selected_tensors_and_loss_drops(backbone):
    method, model, before, result = _train(backbone, "sparsefit", preset="paper")
    assert sum(result.losses[-5:]) / 5 < result.losses[0] - 0.1
    selected = set(method.parameter_names)
    assert selected, "the paper preset selected nothing"
    after = model.state_dict()
    for name, value in before.items():
        changed = not torch.equal(after[name], value)
        owner = name in selected
        assert changed == owner, f"{name}: changed={changed}, selected={owner}"
    if backbone.arch.kind == "seq2seq":
        assert all(".SelfAttention.k." in n or ".layer_norm." in n for n in selected)
        assert not any("final_layer_norm" in n for n in selected)
    else:
        assert all(".v_proj." in n or "norm" in n for n in selected)


def test_lora_changes_only_adapter_weights(backbone):
    method, model, before, result = _train(backbone, "lora")
    assert result.losses[-1] < result.losses[0]
    state = model.state_dict()
    for name, value in before.items():
        peft_name = next(k for k in state if k.endswith(name.replace(".weight", ".base_layer.weight"))
                         or k.endswith(name))
        assert torch.equal(state[peft_name], value), f"base weight {name} changed under LoRA"
    saved = method.trained_state(model)
    assert saved and all("lora_" in k for k in saved)


def test_full_fine_tuning_counts_every_parameter(backbone):
    model = copy.deepcopy(backbone.model)
    total = count_parameters(model)[1]
    model = get_method("full").prepare(model, backbone.arch)
    assert count_parameters(model) == (total, total)


def test_component_grammar_and_errors(backbone):
    model = backbone.model
    if backbone.arch.kind == "seq2seq":
        names = select_parameters(model, "enc.self.q,dec.cross.v", backbone.arch)
        assert names and all(("encoder." in n and "SelfAttention.q" in n) or
                             ("decoder." in n and "EncDecAttention.v" in n) for n in names)
    else:
        with pytest.raises(SparseFitError, match="no cross-attention"):
            select_parameters(model, "cross.k", backbone.arch)
        with pytest.raises(SparseFitError, match="no encoder"):
            select_parameters(model, "enc.ffn", backbone.arch)
    with pytest.raises(SparseFitError, match="unknown component 'slef.k'"):
        select_parameters(model, "slef.k", backbone.arch)


def test_divergence_stops_with_clear_message(backbone):
    with pytest.raises(SparseFitError, match="diverged"):
        _train(backbone, "full", steps=30, lr=1e12)


def test_paper_preset_share_of_t5_large_matches_reference():
    """REFERENCE §4: K = 50,331,648 of 737,668,096 parameters; block layer norms add 120 x 1024."""
    config = T5Config(d_model=1024, d_ff=4096, num_layers=24, num_heads=16, d_kv=64, vocab_size=32128,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    assert count_parameters(model)[1] == 737_668_096
    model = get_method("sparsefit", preset="paper").prepare(model, Arch("seq2seq", "t5"))
    trainable = count_parameters(model)[0]
    assert trainable == 50_331_648 + 120 * 1024
    assert round(100 * trainable / 737_668_096, 2) == 6.84


def test_unknown_method_and_option_are_named():
    with pytest.raises(SparseFitError, match="unknown method 'lroa'"):
        get_method("lroa")
    with pytest.raises(SparseFitError, match="takes no options"):
        get_method("full", r=4)
    with pytest.raises(SparseFitError, match="bad option for method 'sparsefit'.*sparsity"):
        get_method("sparsefit", sparsity=0.3)
