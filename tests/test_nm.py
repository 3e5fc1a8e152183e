"""N:M and V:N:M pruning: exact pattern validity, magnitude choice, model pruning, honest latency report."""

from __future__ import annotations

import itertools

import pytest
import torch

from sparsefit.errors import SparseFitError
from sparsefit.nm import (NMPattern, nm_mask, parse_pattern, prune_model, satisfies, time_semi_structured,
                          vnm_mask)

try:
    from test_mask import MODELS
except ImportError:  # pragma: no cover
    from tests.test_mask import MODELS

torch.set_num_threads(1)


def random_weight(rows, cols, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def test_parse_pattern():
    assert parse_pattern("2:4") == NMPattern(n=2, m=4)
    assert parse_pattern("64:2:8") == NMPattern(n=2, m=8, v=64)
    assert parse_pattern("64:2:8").sparsity == pytest.approx(0.75)
    for bad in ("4:2", "2:4:6", "a:b", "8:3:8", ""):
        with pytest.raises(SparseFitError, match="bad sparsity pattern"):
            parse_pattern(bad)


def test_two_four_keeps_exactly_the_two_largest_of_every_four():
    weight = random_weight(12, 32)
    mask = nm_mask(weight, 2, 4)
    groups = mask.reshape(12, 8, 4)
    assert torch.equal(groups.sum(-1), torch.full((12, 8), 2))
    magnitude = weight.abs().reshape(12, 8, 4)
    for r, g in itertools.product(range(12), range(8)):
        kept = set(torch.nonzero(groups[r, g]).flatten().tolist())
        assert kept == set(torch.topk(magnitude[r, g], 2).indices.tolist())
    assert satisfies(weight * mask, NMPattern(2, 4))
    assert not satisfies(weight, NMPattern(2, 4))


@pytest.mark.parametrize("v,m", [(4, 8), (8, 16), (2, 4)])
def test_vnm_blocks_keep_four_columns_then_two_four(v, m):
    rows, cols = 3 * v, 4 * m
    weight = random_weight(rows, cols, seed=v + m)
    mask = vnm_mask(weight, v, m)
    blocks = mask.reshape(rows // v, v, cols // m, m)
    assert torch.equal(blocks.sum(-1), torch.full((rows // v, v, cols // m), 2))  # 2 per row per block
    columns = blocks.any(dim=1)
    assert (columns.sum(-1) <= 4).all()
    assert mask.float().mean().item() == pytest.approx(2 / m)  # sparsity exactly 1 - 2/M
    # the chosen columns are the block's 4 strongest by L1 over its rows
    strength = weight.abs().reshape(rows // v, v, cols // m, m).sum(1)
    for rb, cb in itertools.product(range(rows // v), range(cols // m)):
        strongest = set(torch.topk(strength[rb, cb], 4).indices.tolist())
        assert set(torch.nonzero(columns[rb, cb]).flatten().tolist()) <= strongest
    pruned = weight * mask
    assert satisfies(pruned, NMPattern(2, m, v))
    assert satisfies(pruned, NMPattern(2, 4))  # V:2:M is also a valid 2:4 matrix


@pytest.mark.parametrize("kind", ["t5", "causal"])
@pytest.mark.parametrize("spec", ["2:4", "8:2:8"])
def test_prune_model_applies_pattern_to_block_linears_only(kind, spec):
    model, _ = MODELS[kind]()
    lm_head = model.lm_head.weight.detach().clone()
    pattern = parse_pattern(spec)
    report = prune_model(model, pattern)
    assert report.pruned_layers
    for name in report.pruned_layers:
        weight = model.get_submodule(name).weight
        assert satisfies(weight, pattern), name
    assert report.sparsity == pytest.approx(pattern.sparsity, abs=0.01)
    assert torch.equal(model.lm_head.weight, lm_head)
    with torch.no_grad():
        ids = torch.randint(2, 64, (2, 5))
        kwargs = {"decoder_input_ids": ids} if kind == "t5" else {}
        assert torch.isfinite(model(input_ids=ids, **kwargs).logits).all()


def test_layers_that_do_not_divide_are_skipped_and_reported():
    model, _ = MODELS["causal"]()
    report = prune_model(model, "32:2:8")  # k/v projections have 16 rows: not a multiple of 32
    assert any("k_proj" in name for name in report.skipped_layers)
    assert all("k_proj" not in name for name in report.pruned_layers)
    with pytest.raises(SparseFitError, match="no linear layer"):
        prune_model(MODELS["causal"]()[0], "256:2:8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU report")
def test_latency_is_not_invented_without_cuda():
    model, _ = MODELS["t5"]()
    report = prune_model(model, "2:4")
    timing = time_semi_structured(model, report.pruned_layers)
    assert timing["measured"] is False and "not measured" in timing["reason"]
