"""DSEE on tiny T5 and tiny decoder-only models: GoDec support, residual stays on its support, only the
intended tensors change, pruned weights stay zero, head pruning, save -> load -> merge."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from sparsefit.errors import SparseFitError
from sparsefit.methods import get_method
from sparsefit.methods.dsee import DSEELinear, godec_support

try:  # tests/ is a plain folder (rootdir on sys.path) or a package
    from test_mask import MODELS, batch_for, train_steps
except ImportError:  # pragma: no cover
    from tests.test_mask import MODELS, batch_for, train_steps

torch.set_num_threads(1)


def wrappers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, DSEELinear)}


def base_name(name: str, wrapped: dict) -> str:
    module, _, leaf = name.rpartition(".")
    return f"{module}.base.{leaf}" if module in wrapped else name


def test_godec_support_finds_planted_sparse_entries():
    gen = torch.Generator().manual_seed(0)
    low_rank = torch.randn(40, 3, generator=gen) @ torch.randn(3, 30, generator=gen)
    planted = torch.randperm(1200, generator=gen)[:25]
    weight = low_rank.flatten().clone()
    weight[planted] += 20.0 * torch.sign(torch.randn(25, generator=gen))
    support = godec_support(weight.view(40, 30), rank=3, cardinality=25, iterations=4)
    assert torch.equal(support, torch.sort(planted).values)


def test_options_are_validated():
    with pytest.raises(SparseFitError, match="lora_rank.*did you mean 'lora_r'"):
        get_method("dsee", lora_rank=4)
    with pytest.raises(SparseFitError, match="prune must be"):
        get_method("dsee", prune="global")
    with pytest.raises(SparseFitError, match="targets"):
        get_method("dsee", targets="q,ffn")


@pytest.mark.parametrize("kind", ["t5", "causal"])
def test_unstructured_dsee_trains_only_lora_and_residual_on_support(kind):
    base, arch = MODELS[kind]()
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    method = get_method("dsee", lora_r=4, sparse_n=16, prune="unstructured", prune_sparsity=0.4, prune_at=0.5)
    model = method.prepare(base, arch)
    wrapped = wrappers(model)
    adapted = {n: w for n, w in wrapped.items() if w.rank}
    assert adapted and all(n.split(".")[-1] in ("q", "v", "q_proj", "v_proj") for n in adapted)
    supports = {n: w.sparse_support.clone() for n, w in adapted.items()}
    steps, masks = 6, {}

    def check(step):
        for name, w in adapted.items():
            residual = (w.delta() - (w.lora_B @ w.lora_A) * w.scaling).flatten()
            off_support = torch.ones_like(residual, dtype=torch.bool)
            off_support[supports[name]] = False
            assert torch.equal(w.sparse_support, supports[name])
            assert torch.all(residual[off_support] == 0), name
        if step < 3:
            assert not method.pruned and all(w.prune_mask is None for w in wrapped.values())
            return
        assert method.pruned
        for name, w in wrapped.items():
            masks.setdefault(name, w.prune_mask.clone())
            assert torch.equal(w.prune_mask, masks[name])  # pruned once, then kept
            assert torch.all(w.effective_weight()[~masks[name]] == 0), (name, step)

    train_steps(method, model, arch, steps, check, lr=0.01)
    pruned = sum(int((~m).sum()) for m in masks.values())
    assert pruned == round(0.4 * sum(m.numel() for m in masks.values()))
    assert any(not torch.equal(w.sparse_values, torch.zeros_like(w.sparse_values)) for w in adapted.values())
    trained = dict(model.named_parameters())
    for name, value in original.items():
        assert torch.equal(trained[base_name(name, wrapped)], value), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{s}" for n in adapted for s in ("lora_A", "lora_B", "sparse_values")}
    report = method.report(model)
    assert report["sparse_residual_entries"] == 16 * len(adapted)
    assert report["linear_zeros"] >= pruned and report["flops_saved_percent"] > 0


@pytest.mark.parametrize("kind", ["t5", "causal"])
def test_head_pruning_removes_whole_heads(kind):
    base, arch = MODELS[kind]()
    method = get_method("dsee", lora_r=4, sparse_n=8, prune="heads", prune_sparsity=0.5, prune_at=0.5)
    model = method.prepare(base, arch)
    train_steps(method, model, arch, 2, lr=0.01)
    head_dim = 8
    modules: dict[str, dict[str, DSEELinear]] = {}
    for name, w in wrappers(model).items():
        modules.setdefault(name.rpartition(".")[0], {})[name.rpartition(".")[2][0]] = w
    total_heads = pruned_heads = 0
    for parts in modules.values():
        q_weight, o_weight = parts["q"].effective_weight(), parts["o"].effective_weight()
        n_heads = q_weight.shape[0] // head_dim
        dead = [h for h in range(n_heads) if torch.all(q_weight[h * head_dim:(h + 1) * head_dim] == 0)]
        for h in dead:
            assert torch.all(o_weight[:, h * head_dim:(h + 1) * head_dim] == 0)
        assert len(dead) < n_heads
        total_heads += n_heads
        pruned_heads += len(dead)
    assert pruned_heads == round(0.5 * total_heads)


@pytest.mark.parametrize("kind", ["t5", "causal"])
def test_save_load_merge_reproduces_trained_outputs(kind, tmp_path):
    base, arch = MODELS[kind]()
    pristine = copy.deepcopy(base)
    options = {"lora_r": 4, "sparse_n": 16, "prune": "unstructured", "prune_sparsity": 0.3}
    method = get_method("dsee", **options)
    model = method.prepare(base, arch)
    train_steps(method, model, arch, 4, lr=0.01)
    save_file(method.trained_state(model), str(tmp_path / "delta.safetensors"))
    batch = batch_for(arch, seed=42)
    with torch.no_grad():
        expected = model(**batch).logits

    fresh = get_method("dsee", **options)
    loaded = fresh.prepare(copy.deepcopy(pristine), arch)
    fresh.load_trained(loaded, load_file(str(tmp_path / "delta.safetensors")))
    assert fresh.pruned
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, expected, atol=1e-5)
    merged = fresh.merge(loaded)
    assert not wrappers(merged)
    with torch.no_grad():
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-5)
    zeros = sum(int((m.weight == 0).sum()) for n, m in merged.named_modules()
                if isinstance(m, torch.nn.Linear) and n != "lm_head")
    assert zeros >= round(0.3 * sum(m.weight.numel() for n, m in merged.named_modules()
                                    if isinstance(m, torch.nn.Linear) and n != "lm_head"))


def test_no_grad_forward_cache_follows_updates_and_pruning():
    base, arch = MODELS["t5"]()
    method = get_method("dsee", lora_r=4, sparse_n=8, prune="unstructured", prune_sparsity=0.3, prune_at=0.5)
    model = method.prepare(base, arch)
    batch = batch_for(arch, seed=3)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 3):  # step 1 changes LoRA/S in place, step 2 (of 2) also prunes
        with torch.no_grad():
            before = model(**batch).logits
            for w in wrappers(model).values():
                if w.rank:
                    w.lora_B.add_(torch.rand(w.lora_B.shape, generator=gen))
                    w.sparse_values.add_(1.0)
            method.after_step(model, step, 2)
            cached = model(**batch).logits
        assert not torch.equal(before, cached), step
        assert torch.equal(cached, model(**batch).logits.detach()), step
    assert method.pruned


def test_dsee_round_trip_through_the_checkpoint_files(tmp_path):
    """Real training loop + save_delta / load_delta on the tiny decoder-only backbone: the reloaded model
    (GoDec recomputed in prepare, then the saved support and masks adopted) gives the trained outputs."""
    from sparsefit.backbones import load_backbone
    from sparsefit.checkpoint import load_delta, save_delta
    from sparsefit.config import TrainConfig
    from sparsefit.train import train
    backbone = load_backbone("tiny-causal")
    options = {"lora_r": 4, "sparse_n": 16, "prune": "heads", "prune_sparsity": 0.25}
    method = get_method("dsee", **options)
    model = method.prepare(copy.deepcopy(backbone.model), backbone.arch)
    train(backbone, method, model, ["explain nli hypothesis: a dog runs premise: a dog is running"] * 2,
          ["entailment because running is what the dog does"] * 2,
          TrainConfig(lr=0.01, steps=2, batch_size=2, threads=1), progress=False)
    assert method.pruned
    save_delta(tmp_path, method, model, {"base_model": "tiny-causal", "base_fingerprint": backbone.fingerprint,
                                         "method_options": options})
    batch = batch_for(backbone.arch, seed=5)
    batch["input_ids"] = batch["input_ids"] % backbone.model.config.vocab_size
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits
    _, loaded, loaded_method, manifest = load_delta(tmp_path)
    assert manifest["method"] == "dsee"
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=batch["input_ids"]).logits, expected, atol=1e-5)
        merged = loaded_method.merge(loaded)
        assert torch.allclose(merged(input_ids=batch["input_ids"]).logits, expected, atol=1e-5)
