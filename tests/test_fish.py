"""Fisher-mask method on tiny models: only chosen weights move (bit-identical elsewhere), sparse delta round trip."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from sparsefit.backbones import load_backbone
from sparsefit.checkpoint import load_delta
from sparsefit.config import RunConfig, TrainConfig
from sparsefit.errors import SparseFitError
from sparsefit.generate import generate
from sparsefit.methods import count_parameters, get_method
from sparsefit.runner import run_episode
from sparsefit.train import default_loss_for, example_batches, train
from tests.test_backend_training import PAIRS


@pytest.fixture(scope="module", params=["tiny-t5", "tiny-causal"])
def backbone(request):
    torch.set_num_threads(1)
    return load_backbone(request.param)


def _config(model: str, **options) -> RunConfig:
    return RunConfig(dataset="sample-nli", train_split="train", eval_split="train", model=model, method="fish",
                     method_options={"budget": "2%", **options}, n_train=12, n_eval=6,
                     train=TrainConfig(lr=1e-2, steps=6, batch_size=4), max_new_tokens=8, scorer={"meteor": False})


def test_only_the_top_fisher_weights_change_and_the_rest_stay_bit_identical(backbone):
    model = copy.deepcopy(backbone.model)
    before = {k: v.clone() for k, v in model.named_parameters()}
    method = get_method("fish", budget="2%")
    model = method.prepare(model, backbone.arch)
    inputs, targets = map(list, zip(*PAIRS))
    config = TrainConfig(lr=1e-2, steps=15, batch_size=4, seed=1)
    loss_fn = default_loss_for(backbone)
    method.prepare_with_data(model, backbone.arch, example_batches(backbone, inputs, targets, config), loss_fn)
    total = count_parameters(model)[1]
    assert method.trainable_count(model) == method.k == round(0.02 * total)
    chosen = {name: set(flat.tolist()) for name, flat in method.indices.items()}
    assert not any("embed" in n or "shared" in n or "lm_head" in n for n in chosen)  # excluded by default
    result = train(backbone, method, model, inputs, targets, config, progress=False)
    assert result.losses[-1] < result.losses[0]
    moved = 0
    for name, param in model.named_parameters():
        changed = (param.detach() != before[name]).flatten().nonzero().flatten().tolist()
        assert set(changed) <= chosen.get(name, set()), f"{name}: a weight outside the mask changed"
        untouched = torch.ones(param.numel(), dtype=torch.bool)
        untouched[list(chosen.get(name, ()))] = False
        assert torch.equal(param.detach().flatten()[untouched], before[name].flatten()[untouched])
        moved += len(changed)
    assert moved > 0.5 * method.k


def test_fisher_picks_the_largest_scores(backbone):
    from sparsefit.methods.fish import top_k_indices
    method = get_method("fish", budget="1%")
    model = method.prepare(copy.deepcopy(backbone.model), backbone.arch)
    inputs, targets = map(list, zip(*PAIRS))
    scores = method.fisher_scores(model, example_batches(backbone, inputs, targets, TrainConfig()),
                                  default_loss_for(backbone))
    chosen = top_k_indices(scores, method.k)
    picked = torch.cat([scores[n].flatten()[i] for n, i in chosen.items()])
    none = torch.tensor([], dtype=torch.long)
    rest = torch.cat([scores[n].flatten()[~torch.isin(torch.arange(scores[n].numel()), chosen.get(n, none))]
                      for n in scores])
    assert picked.numel() == method.k and picked.min() >= rest.max()
    assert all(not p.requires_grad for p in model.parameters())  # scoring leaves the model frozen


def test_episode_saves_indices_and_values_and_reloads_to_identical_predictions(tmp_path, backbone):
    model_id = backbone.model_id
    results = run_episode(_config(model_id), tmp_path, backbone=backbone, progress=False)
    assert results["trainable_percent"] == pytest.approx(2.0, abs=0.01)
    delta = load_file(str(tmp_path / "delta.safetensors"))
    assert delta and all(k.endswith((".indices", ".values")) for k in delta)
    assert sum(v.numel() for k, v in delta.items() if k.endswith(".values")) == results["trainable"]
    assert all(v.dtype == torch.int64 for k, v in delta.items() if k.endswith(".indices"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["method"] == "fish" and manifest["selection"]["k"] == results["trainable"]

    predictions = [json.loads(line)["raw_generation"] for line in (tmp_path / "predictions.jsonl").open()]
    prompts = [json.loads(line)["prompt"] for line in (tmp_path / "predictions.jsonl").open()]
    fresh = load_backbone(model_id)
    _, reloaded, method, _ = load_delta(tmp_path, fresh)
    merged = method.merge(reloaded)
    again = generate(fresh, merged, prompts, batch_size=8, max_new_tokens=8, progress=False)
    assert again == predictions


def test_weight_decay_is_refused_before_training(tmp_path, backbone):
    """Decay would move weights outside the mask that the saved delta does not hold."""
    config = _config(backbone.model_id)
    config.train.weight_decay = 0.01
    with pytest.raises(SparseFitError, match="field 'train.weight_decay'.*weight_decay 0 only"):
        run_episode(config, tmp_path, backbone=backbone, progress=False)
    assert not (tmp_path / "delta.safetensors").exists()


def test_bad_options_are_one_clear_error():
    with pytest.raises(SparseFitError, match="ambiguous; write 5%"):
        get_method("fish", budget=5)
    with pytest.raises(SparseFitError, match="ambiguous; write 1% or 0.01"):  # not silently everything
        get_method("fish", budget=1)
    assert get_method("fish", budget="100%").fraction == 1.0
    with pytest.raises(SparseFitError, match="no option 'budgett'.*did you mean 'budget'"):
        get_method("fish", budgett="1%")
    with pytest.raises(SparseFitError, match="positive integer"):
        get_method("fish", fisher_examples=0)


def test_default_budget_is_the_structural_presets_share(backbone):
    model = copy.deepcopy(backbone.model)
    total = count_parameters(model)[1]
    structural = count_parameters(get_method("sparsefit", preset="paper").prepare(model, backbone.arch))[0]
    method = get_method("fish")
    method.prepare(copy.deepcopy(backbone.model), backbone.arch)
    assert method.k == round(structural / total * total)
    # and its training settings on a decoder are the structural default's, the ones its reported runs used
    from sparsefit.config import TrainConfig
    settings = {kind: TrainConfig().resolved("causal", kind) for kind in ("fish", "sparsefit")}
    assert (settings["fish"].lr, settings["fish"].steps) == (settings["sparsefit"].lr, settings["sparsefit"].steps)


def test_a_shared_choice_cache_reuses_the_fisher_mask_only_for_the_same_shots_and_budget(backbone):
    from sparsefit.runner import prepare_episode, sample_for
    model_id = "tiny-t5" if backbone.arch.kind == "seq2seq" else "tiny-causal"
    fresh = prepare_episode(_config(model_id), sample_for(_config(model_id)), backbone)  # no cache: own pass
    choices: dict = {}
    first = prepare_episode(_config(model_id), sample_for(_config(model_id)), backbone, data_choices=choices)
    other_lr = _config(model_id)
    other_lr.train = TrainConfig(lr=1e-3, steps=6, batch_size=4)
    second = prepare_episode(other_lr, sample_for(other_lr), backbone, data_choices=choices)
    assert len(choices) == 1  # the second candidate (another lr) reused the first one's mask
    for prepared in (first, second):
        assert prepared.method.indices.keys() == fresh.method.indices.keys()
        assert all(torch.equal(prepared.method.indices[n], fresh.method.indices[n]) for n in fresh.method.indices)
        trainable = {n for n, p in prepared.model.named_parameters() if p.requires_grad}
        assert trainable == set(fresh.method.indices)  # the reused mask also wires the masked update
    prepare_episode(_config(model_id, budget="4%"), sample_for(_config(model_id)), backbone, data_choices=choices)
    other_shots = _config(model_id)
    other_shots.seed = 99
    prepare_episode(other_shots, sample_for(other_shots), backbone, data_choices=choices)
    assert len(choices) == 3  # another budget and other shots are not served from the cache
