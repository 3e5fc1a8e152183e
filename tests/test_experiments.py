"""Episodes runner, results table, component grid, CLI, N:M export and the GPU bench script, on tiny models.

The episodes run for real (sample task, tiny T5, 2 training steps, 4 eval examples) through
`sparsefit.runner.run_episode`; a resumed run must give the same table as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sparsefit.config import RunConfig, TrainConfig
from sparsefit.errors import SparseFitError
from sparsefit.experiments import (MEASURED_METRICS, TABLE_METRICS, episode_dir, make_variants, paper_grid,
                                   parse_seeds, rank_table, results_table, run_episodes, run_grid)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
SEEDS = [7004, 3639]
QUALITY = [key for key, _ in TABLE_METRICS if key not in MEASURED_METRICS]


def tiny_config(method: str, **options) -> RunConfig:
    return RunConfig(dataset="sample-nli", model="tiny-t5", method=method, method_options=options, n_eval=4,
                     max_new_tokens=8, eval_batch_size=4, train=TrainConfig(steps=2, batch_size=2, threads=1))


def variants():
    return make_variants([tiny_config("sparsefit"), tiny_config("mask", sparsity=0.3)])


class Spy:
    """Runs the real episode function and remembers which folders it was asked to run."""

    def __init__(self):
        from sparsefit.runner import run_episode
        self.run_episode, self.calls = run_episode, []

    def __call__(self, config, folder, **kwargs):
        self.calls.append(Path(folder))
        return self.run_episode(config, folder, **kwargs)


def quality_columns(table):
    return [{k: v for k, v in row.items() if not k.startswith(MEASURED_METRICS)} for row in table]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    rows = run_episodes(variants(), out, SEEDS, progress=False)
    return out, rows


def test_parse_seeds():
    from sparsefit.episodes import FEB_SEEDS
    assert parse_seeds("all") == list(FEB_SEEDS) and len(FEB_SEEDS) == 60
    assert parse_seeds("3") == list(FEB_SEEDS[:3])
    assert parse_seeds("51,4199") == [51, 4199] and parse_seeds("7004,") == [7004]
    for bad in ("0", "61", "1,1", "x", ""):
        with pytest.raises(SparseFitError, match="seeds"):
            parse_seeds(bad)


def test_table_is_mean_and_std_over_episode_results(uninterrupted):
    out, rows = uninterrupted
    assert len(rows) == 4 and {r["variant"] for r in rows} == {"sparsefit", "mask[sparsity=0.3]"}
    for row in rows:  # every episode wrote its files; results.json is the finished marker
        folder = episode_dir(out, next(v for v in variants() if v.label == row["variant"]), row["seed"])
        assert {"results.json", "predictions.jsonl", "delta.safetensors", "manifest.json"} <= \
            {p.name for p in folder.iterdir()}
        assert json.loads((folder / "results.json").read_text())["seed"] == row["seed"]
    table = results_table(rows)
    assert [t["variant"] for t in table] == ["sparsefit", "mask[sparsity=0.3]"]
    for entry in table:
        mine = [r for r in rows if r["variant"] == entry["variant"]]
        assert entry["episodes"] == 2
        for key in ("accuracy", "nbertscore", "trainable_percent"):
            values = [float(r[key]) for r in mine]
            assert entry[f"{key}_mean"] == pytest.approx(statistics.fmean(values))
            assert entry[f"{key}_std"] == pytest.approx(statistics.stdev(values))
    assert table[1]["trainable_percent_mean"] > table[0]["trainable_percent_mean"]  # scores on every weight


def test_resumed_run_gives_the_same_table(uninterrupted, tmp_path):
    _, rows = uninterrupted
    first, second = variants()
    # the first attempt finished one episode, then crashed in the middle of the next
    run_episodes([first], tmp_path, SEEDS[:1], progress=False)
    finished = episode_dir(tmp_path, first, SEEDS[0]) / "results.json"
    finished_text, finished_mtime = finished.read_text(), finished.stat().st_mtime_ns
    crashed = episode_dir(tmp_path, first, SEEDS[1])
    crashed.mkdir(parents=True)
    (crashed / "config.json").write_text("{}")
    (crashed / "delta.safetensors").write_bytes(b"\x00" * 10)  # torn write
    (crashed / "results.json.tmp").write_text("{")

    spy = Spy()
    resumed = run_episodes(variants(), tmp_path, SEEDS, progress=False, episode_fn=spy)
    assert episode_dir(tmp_path, first, SEEDS[0]) not in spy.calls  # never redone
    assert crashed in spy.calls and len(spy.calls) == 3
    assert finished.read_text() == finished_text and finished.stat().st_mtime_ns == finished_mtime
    assert not (crashed / "results.json.tmp").exists()
    assert quality_columns(results_table(resumed)) == quality_columns(results_table(rows))

    again = Spy()  # everything finished: nothing runs, same table
    assert results_table(run_episodes(variants(), tmp_path, SEEDS, progress=False, episode_fn=again)) == \
        results_table(resumed)
    assert again.calls == []


def test_bad_options_of_any_variant_fail_before_the_first_episode(tmp_path):
    good, bad = tiny_config("mask", sparsity=0.3), tiny_config("sparsefit", sparsity=0.3)
    with pytest.raises(SparseFitError, match="sparsity"):
        run_episodes(make_variants([good, bad]), tmp_path, SEEDS, progress=False)
    assert not any(tmp_path.iterdir())


def test_resume_refuses_a_folder_of_another_configuration(uninterrupted):
    out, _ = uninterrupted
    changed = tiny_config("sparsefit")
    changed.train.steps = 3
    with pytest.raises(SparseFitError, match="different configuration"):
        run_episodes(make_variants([changed]), out, SEEDS[:1], progress=False)


@pytest.mark.parametrize("method, preset", [("sparsefit", {"components": "ln"}), ("fish", {"budget": "2%"})])
def test_a_run_from_a_preset_file_loads_without_it_and_resume_notices_a_rewritten_file(tmp_path, method, preset):
    from safetensors.torch import load_file
    from sparsefit.backbones import load_backbone
    from sparsefit.checkpoint import DELTA_FILE, load_delta
    preset_path = tmp_path / "best_preset.json"
    preset_path.write_text(json.dumps({"method": method, **preset}))
    config = tiny_config(method, preset=str(preset_path))
    run_episodes(make_variants([config]), tmp_path / "runs", SEEDS[:1], progress=False)
    folder = episode_dir(tmp_path / "runs", make_variants([config])[0], SEEDS[0])

    preset_path.write_text(json.dumps({"method": method, **{k: "self.q,ln" if k == "components" else "5%"
                                                            for k in preset}}))
    with pytest.raises(SparseFitError, match="best_preset.json changed since this episode ran"):
        run_episodes(make_variants([config]), tmp_path / "runs", SEEDS[:1], progress=False)

    preset_path.unlink()  # the run still loads: the manifest holds what the file resolved to
    _, model, _, manifest = load_delta(folder, load_backbone("tiny-t5"))
    assert manifest["loading_options"] == ({"components": "ln"} if method == "sparsefit" else
                                           {"budget": 0.02, "exclude": "embed,lm_head", "fisher_examples": 64})
    params = dict(model.named_parameters())
    for name, value in load_file(str(folder / DELTA_FILE)).items():
        if method == "sparsefit":
            assert torch.equal(params[name], value)
        elif name.endswith(".values"):
            base = name.removesuffix(".values")
            indices = load_file(str(folder / DELTA_FILE))[base + ".indices"]
            assert torch.equal(params[base].detach().reshape(-1)[indices], value)


def test_cli_episodes_prints_one_comparison_table_and_resumes(uninterrupted):
    out, rows = uninterrupted
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/results.json")}
    command = [sys.executable, "-m", "sparsefit", "episodes", "--seeds", ",".join(map(str, SEEDS)), "--out", str(out),
               "--quiet"]
    for variant in variants():  # several configs in one call -> one table (all episodes already finished)
        path = out / f"{variant.config.method}.json"
        path.write_text(json.dumps(variant.config.to_dict()))
        command += ["--config", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed-*/results.json")} == before
    lines = done.stdout.splitlines()
    assert lines[0].split()[:2] == ["variant", "n"]
    assert any(line.startswith("sparsefit ") for line in lines) and any(line.startswith("mask[sparsity=0.3]")
                                                                        for line in lines)
    table = (out / "table.csv").read_text().splitlines()
    assert table[0].startswith("variant,method,dataset,model,episodes,seeds,accuracy_mean,accuracy_std")
    assert len(table) == 3
    for label in ("sparsefit", "mask[sparsity=0.3]"):
        mine = [r["accuracy"] for r in rows if r["variant"] == label]
        cell = f"{statistics.fmean(mine):.2f} ± {statistics.stdev(mine):.2f}"
        assert any(line.startswith(label) and cell in line for line in lines), (label, cell)


def test_paper_grid_specs_are_valid_component_specs():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, T5Config, T5ForConditionalGeneration
    from sparsefit.methods import Arch
    from sparsefit.methods.selection import select_parameters
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=64, d_model=16, d_kv=4, num_heads=4, d_ff=32, num_layers=1,
                                             decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    causal = Gemma3ForCausalLM(Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    for model, arch in ((t5, Arch("seq2seq", "t5")), (causal, Arch("causal", "gemma3_text"))):
        specs = paper_grid(arch.kind)
        assert "self.k,ln" in specs and "ln" in specs and "ffn" in specs
        for spec in specs:
            assert select_parameters(model, spec, arch), spec
    assert not any("cross" in s or "enc." in s for s in paper_grid("causal"))


def test_grid_runs_specs_and_ranks_by_accuracy_then_nbertscore(tmp_path):
    base = tiny_config("sparsefit")
    ranked = run_grid(base, tmp_path, SEEDS[:1], ["ln", "self.k,ln"], progress=False)
    assert [r["rank"] for r in ranked] == [1, 2]
    assert {r["variant"] for r in ranked} == {"sparsefit[ln]", "sparsefit[self.k,ln]"}
    keys = [(r["accuracy_mean"], r["nbertscore_mean"]) for r in ranked]
    assert keys == sorted(keys, reverse=True)
    assert (tmp_path / "grid.csv").read_text().startswith("rank,variant")
    config_path = tmp_path / "base.json"
    config_path.write_text(json.dumps(base.to_dict()))
    done = subprocess.run([sys.executable, "-m", "sparsefit", "grid", "--config", str(config_path), "--specs",
                           "ln;self.k,ln", "--seeds", f"{SEEDS[0]},", "--out", str(tmp_path), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr  # resumed: both specs finished above
    printed = [line.split()[:2] for line in done.stdout.splitlines()[2:4]]
    assert printed == [["1", ranked[0]["variant"]], ["2", ranked[1]["variant"]]]
    # the ranking rule itself, on a table where accuracy ties
    table = [{"variant": "a", "accuracy_mean": 50.0, "nbertscore_mean": 10.0},
             {"variant": "b", "accuracy_mean": 60.0, "nbertscore_mean": 5.0},
             {"variant": "c", "accuracy_mean": 50.0, "nbertscore_mean": 20.0}]
    assert [r["variant"] for r in rank_table(table)] == ["b", "c", "a"]


def test_nm_export_of_a_finished_run(uninterrupted):
    from sparsefit.nm import NMPattern, export_run, satisfies
    from sparsefit.checkpoint import load_delta
    out, rows = uninterrupted
    masked = variants()[1]  # a mask-training run: exercises save_delta / load_delta / merge of that method
    run_dir = episode_dir(out, masked, SEEDS[0])
    report = export_run(run_dir, "2:4", progress=False)
    # at least 50%: 2:4 on top of the 30% the mask already removed
    assert report["pruning"]["pruned_layers"] and 0.5 <= report["pruning"]["sparsity"] < 0.65
    results = json.loads((run_dir / "results.json").read_text())
    assert report["dense"]["accuracy"] == results["accuracy"]
    assert report["pruned"]["n_eval"] == results["n_eval"]
    assert report["accuracy_cost"] == pytest.approx(report["dense"]["accuracy"] - report["pruned"]["accuracy"])
    assert report["latency"]["measured"] is torch.cuda.is_available()
    written = json.loads((Path(report["out"]) / "nm_report.json").read_text())
    assert written["pattern"] == "2:4"
    assert sum(1 for _ in (Path(report["out"]) / "predictions.jsonl").open()) == results["n_eval"]
    done = subprocess.run([sys.executable, "-m", "sparsefit", "nm-export", "--run", str(run_dir), "--pattern", "8:2:8",
                           "--no-eval", "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert "8:2:8:" in done.stdout and ("not measured" in done.stdout) != torch.cuda.is_available()
    vnm = json.loads((run_dir / "nm-8-2-8" / "nm_report.json").read_text())
    assert vnm["pruning"]["sparsity"] >= 0.75 and "pruned" not in vnm
    # the export prunes a copy: the run's own delta still loads to the dense model
    _, model, method, _ = load_delta(run_dir)
    merged = method.merge(model)
    assert not all(satisfies(merged.get_submodule(n).weight, NMPattern(2, 4))
                   for n in report["pruning"]["pruned_layers"])


def test_gpu_bench_script_runs_tiny():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_methods.py"), "--tiny", "--steps", "1",
                           "--warmup", "0"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    for label in ("full", "sparsefit", "lora", "dsee", "mask"):
        assert any(line.startswith(label) and "failed" not in line for line in done.stdout.splitlines()), label
