"""An episode end to end on tiny models, delta save/load, the CLI, config errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsefit.backbones import load_backbone
from sparsefit.checkpoint import load_delta
from sparsefit.config import RunConfig, TrainConfig, load_run_config
from sparsefit.errors import SparseFitError
from sparsefit.predictions import read_predictions
from sparsefit.runner import run_episode

ROOT = Path(__file__).resolve().parents[1]


def _config(model: str, method: str = "sparsefit", **extra) -> RunConfig:
    return RunConfig(dataset="sample-nli", train_split="train", eval_split="train", model=model, method=method,
                     n_train=12, n_eval=6, train=TrainConfig(lr=3e-3, steps=4, batch_size=4), max_new_tokens=8,
                     scorer={"meteor": False}, **extra)


@pytest.mark.parametrize("model", ["tiny-t5", "tiny-causal"])
def test_episode_writes_valid_predictions_and_a_loadable_delta(tmp_path, model):
    torch.set_num_threads(1)
    backbone = load_backbone(model)
    results = run_episode(_config(model), tmp_path, backbone=backbone, progress=False)
    records = read_predictions(tmp_path / "predictions.jsonl")  # validates the schema line by line
    assert len(records) == results["n_eval"] == 6
    assert {r.gold_label for r in records} == {"entailment", "neutral", "contradiction"}
    assert all(r.metrics["bertscore_f1"] is not None for r in records)
    assert 0 < results["trainable_percent"] < 100
    assert results["accuracy"] == pytest.approx(100 * sum(r.correct for r in records) / len(records))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["base_fingerprint"] == backbone.fingerprint and manifest["method"] == "sparsefit"
    assert manifest["data_hash"]["train"] != manifest["data_hash"]["eval"]

    # the saved delta holds only the trained tensors, and reloads to the same weights
    fresh = load_backbone(model)
    _, reloaded, method, _ = load_delta(tmp_path, fresh)
    from safetensors.torch import load_file
    delta = load_file(str(tmp_path / "delta.safetensors"))
    assert set(delta) == set(method.parameter_names)
    params = dict(reloaded.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in delta.items())


def test_delta_refused_on_a_different_base(tmp_path):
    run_episode(_config("tiny-t5"), tmp_path, progress=False, evaluate=False)
    other = load_backbone("tiny-causal")
    with pytest.raises(SparseFitError, match="trained on base model 'tiny-t5'"):
        load_delta(tmp_path, other)


def test_icl_reference_point_trains_nothing(tmp_path):
    results = run_episode(_config("tiny-causal", method="icl"), tmp_path, progress=False)
    assert results["trainable"] == 0 and results["train_seconds"] == 0
    record = read_predictions(tmp_path / "predictions.jsonl")[0]
    assert record.prompt.count("explain nli hypothesis:") == 4  # three demonstrations + the query
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["method"] == "icl" and "torch" in manifest["versions"]
    assert not (tmp_path / "delta.safetensors").exists()


def test_icl_demonstrations_cover_the_labels_in_an_order_that_varies_by_seed():
    from sparsefit.data import load_examples
    from sparsefit.runner import icl_demonstrations
    train = load_examples("sample-nli", None, "train")
    orders = set()
    for seed in range(12):
        chosen = icl_demonstrations(train, 3, seed)
        assert sorted(e.label for e in chosen) == sorted({e.label for e in train})  # one per label
        assert [e.id for e in chosen] == [e.id for e in icl_demonstrations(train, 3, seed)]  # seeded
        orders.add(tuple(e.label for e in chosen))
    assert len(orders) > 2  # not always the alphabetical label order


def test_config_typo_names_file_and_field(tmp_path):
    bad = tmp_path / "run.json"
    bad.write_text(json.dumps({"dataset": "esnli", "train": {"learning_rate": 1e-4}}))
    with pytest.raises(SparseFitError) as err:
        load_run_config(bad)
    assert str(bad) in str(err.value) and "train.learning_rate" in str(err.value) and "train.lr" in str(err.value)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsefit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_data_stats_and_show(shared_data):
    stats = _cli("data", "stats", "--dataset", "esnli", "--path", str(shared_data / "esnli"), "--split", "dev",
                 "--json")
    assert stats.returncode == 0, stats.stderr
    data = json.loads(stats.stdout)
    assert data["examples"] == 9842 and sum(data["labels"].values()) == 9842
    show = _cli("data", "show", "--dataset", "esnli", "--path", str(shared_data / "esnli"), "--split", "dev",
                "--index", "0", "--json")
    shown = json.loads(show.stdout)
    assert shown["input"].startswith("explain nli hypothesis: ") and " premise: " in shown["input"]
    assert " because " in shown["target"]


def test_cli_params_from_a_config_only_folder(tmp_path):
    from transformers import T5Config
    T5Config(d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64, vocab_size=32128,
             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1).save_pretrained(tmp_path)
    result = _cli("params", "--model", str(tmp_path), "--method", "sparsefit", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["total"] == 222_903_552  # T5-base
    assert round(data["percent"], 2) == 6.37  # REFERENCE §4


def test_cli_errors_are_one_line(tmp_path):
    result = _cli("data", "stats", "--dataset", "esnli", "--path", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert str(tmp_path / "missing") in result.stderr


def test_predict_and_evaluate_any_predictions_file(tmp_path):
    from sparsefit.runner import predict_to_file
    run_dir = tmp_path / "run"
    run_episode(_config("tiny-t5"), run_dir, progress=False, evaluate=False)
    out = predict_to_file(str(run_dir), "sample-nli", None, "train", tmp_path / "preds.jsonl", n=5,
                          score_outputs=False)
    records = read_predictions(out)
    assert len(records) == 5 and all(r.metrics["bertscore_f1"] is None for r in records)
    assert all(r.method == "sparsefit" and r.model == "tiny-t5" for r in records)

    # the evaluate command scores a file from any model: here, gold explanations as predictions score ~100
    for record in records:
        record.pred_explanation = record.gold_explanations[0]
    from sparsefit.predictions import write_predictions
    write_predictions(out, records)
    result = _cli("evaluate", "--predictions", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["bertscore_all"] > 99 and summary["n"] == 5
    scored = read_predictions(summary["written"])
    assert all(r.metrics["bertscore_f1"] > 99 for r in scored) and "bertscore_f1" in scored[0].scorer
