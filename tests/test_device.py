"""--device / --dtype / --compile: clear one-line refusals, bf16 runs end to end, compile falls back to eager."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsefit.backbones import load_backbone
from sparsefit.checkpoint import load_delta
from sparsefit.config import TrainConfig
from sparsefit.device import resolve_device, resolve_dtype
from sparsefit.errors import SparseFitError
from sparsefit.methods import get_method
from sparsefit.predictions import read_predictions
from sparsefit.train import make_optimizer, train

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()
PAIRS = [
    ("explain nli hypothesis: a man is sitting . premise: a man sits on a bench .",
     "entailment because sitting on a bench is sitting ."),
    ("explain nli hypothesis: a dog is sleeping . premise: a dog runs in the park .",
     "contradiction because a dog cannot sleep and run at once ."),
]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsefit", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def _assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def test_dtype_and_device_names_are_checked():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(SparseFitError, match="unknown dtype 'float16'; use float32 or bfloat16"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(SparseFitError, match="unknown device 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = _cli("run", "--model", "tiny-causal", "--device", "cuda", "--out", str(out), "--threads", "1")
    _assert_one_line_error(result, "--device cuda", "no CUDA GPU", "--device cpu")
    assert not out.exists()
    preds = tmp_path / "preds.jsonl"
    for args in (["predict", "--run", "tiny-t5", "--dataset", "sample-nli", "--split", "train", "--out", str(preds)],
                 ["quickstart", "--out", str(tmp_path / "quick")],
                 ["episodes", "--model", "tiny-t5", "--seeds", "1", "--out", str(tmp_path / "episodes")]):
        _assert_one_line_error(_cli(*args, "--device", "cuda:1"), "--device cuda:1")
    assert list(tmp_path.iterdir()) == []


def test_unknown_dtype_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = _cli("train", "--model", "tiny-t5", "--dtype", "float16", "--out", str(out), "--threads", "1")
    _assert_one_line_error(result, "unknown dtype 'float16'")
    assert not out.exists()


@pytest.mark.parametrize("model", ["tiny-t5", "tiny-causal"])
def test_bfloat16_run_end_to_end_on_cpu(tmp_path, model):
    out = tmp_path / "run"
    result = _cli("run", "--model", model, "--dataset", "sample-nli", "--train-split", "train", "--eval-split",
                  "train", "--n-train", "8", "--n-eval", "4", "--steps", "3", "--batch-size", "4", "--lr", "1e-3",
                  "--device", "cpu", "--dtype", "bfloat16", "--threads", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert manifest["dtype"] == results["dtype"] == "bfloat16" and manifest["device"] == "cpu"
    assert len(read_predictions(out / "predictions.jsonl")) == results["n_eval"] > 0
    assert all(isinstance(loss, float) and loss == loss for loss in (results["first_loss"], results["last_loss"]))

    # the bf16 delta reloads in bf16 (the run's dtype) and onto an fp32 base (same fingerprint)
    backbone, model_bf16, _, _ = load_delta(out, device="cpu")
    assert backbone.dtype == torch.bfloat16 and next(model_bf16.parameters()).dtype == torch.bfloat16
    _, model_fp32, method, _ = load_delta(out, device="cpu", dtype="float32")
    trained = dict(model_fp32.named_parameters())
    for name, value in method.trained_state(model_bf16).items():
        assert torch.equal(trained[name], value.float())


def _train_losses(backbone, compile_backend=None) -> list[float]:
    method = get_method("sparsefit")
    model = method.prepare(copy.deepcopy(backbone.model), backbone.arch)
    inputs, targets = zip(*PAIRS)
    result = train(backbone, method, model, list(inputs), list(targets),
                   TrainConfig(lr=1e-3, steps=2, batch_size=2, seed=1), progress=False,
                   compile=compile_backend or False)
    return result.losses


def test_compile_failure_falls_back_to_eager_with_one_line(capfd):
    """Inductor takes about two minutes per tiny model on this CPU, so a backend that fails stands in for it."""
    from torch._dynamo import register_backend

    @register_backend(name="sparsefit_test_failing")
    def failing(graph_module, example_inputs):
        raise RuntimeError("no compiler here")

    torch.set_num_threads(1)
    backbone = load_backbone("tiny-causal", device="cpu")
    eager = _train_losses(backbone)
    capfd.readouterr()
    fallen_back = _train_losses(backbone, "sparsefit_test_failing")
    messages = [line for line in capfd.readouterr().err.splitlines() if "torch.compile failed" in line]
    assert len(messages) == 1 and messages[0].endswith("continuing in eager mode")
    assert "no compiler here" in messages[0]
    assert fallen_back == eager


def test_compiled_training_gives_the_eager_losses():
    torch.set_num_threads(1)
    backbone = load_backbone("tiny-causal", device="cpu")
    assert _train_losses(backbone, "eager") == pytest.approx(_train_losses(backbone), rel=1e-6)


def test_fused_cpu_optimizer_takes_the_default_adamw_steps():
    start = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    grads = [torch.randn(64, 32, generator=torch.Generator().manual_seed(s)) for s in range(1, 6)]
    results = {}
    for name in ("fused", "default"):
        param = torch.nn.Parameter(start.clone())
        config = TrainConfig(lr=1e-2, weight_decay=0.01)
        optimizer = make_optimizer([param], config) if name == "fused" else \
            torch.optim.AdamW([param], lr=config.lr, weight_decay=config.weight_decay)
        assert bool(optimizer.defaults.get("fused")) == (name == "fused")
        for grad in grads:
            param.grad = grad.clone()
            optimizer.step()
        results[name] = param.detach()
    assert not torch.equal(results["fused"], start)
    torch.testing.assert_close(results["fused"], results["default"], rtol=1e-6, atol=1e-7)


# --- on a GPU (skipped on CPU-only machines) ---------------------------------------------------------------

@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_optimizer_is_fused_on_cuda():
    param = torch.nn.Parameter(torch.zeros(3, device="cuda"))
    assert make_optimizer([param], TrainConfig(lr=1e-3)).defaults["fused"] is True


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("model", ["tiny-t5", "tiny-causal"])
def test_run_on_cuda(tmp_path, model, dtype):
    from sparsefit.config import RunConfig
    from sparsefit.runner import run_episode
    config = RunConfig(dataset="sample-nli", train_split="train", eval_split="train", model=model, n_train=8,
                       n_eval=4, train=TrainConfig(lr=1e-3, steps=3, batch_size=4), max_new_tokens=8,
                       scorer={"meteor": False}, device="cuda", dtype=dtype)
    results = run_episode(config, tmp_path, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["device"].startswith("cuda") and manifest["dtype"] == dtype
    assert results["peak_memory_mb"] > 0 and len(read_predictions(tmp_path / "predictions.jsonl")) == results["n_eval"]
    _, reloaded, _, _ = load_delta(tmp_path, device="cpu", dtype="float32")  # a GPU run predicts on a CPU too
    assert next(reloaded.parameters()).device.type == "cpu"
