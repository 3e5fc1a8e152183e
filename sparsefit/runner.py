"""One few-shot episode end to end: sample → prepare → train → generate → score → files.

Writes into the run folder: config.json, manifest.json + delta.safetensors (only trained tensors),
predictions.jsonl (the contract with the annotation app) and results.json.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from sparsefit.backbones import Backbone, dtype_name, load_backbone, resolve_placement
from sparsefit.checkpoint import save_delta, write_manifest
from sparsefit.config import RunConfig, save_run_config
from sparsefit.methods.base import count_parameters, get_method
from sparsefit.predictions import PredictionRecord, write_predictions


@dataclass
class Generations:
    raw: list[str]
    labels: list[str]
    explanations: list[str]
    correct: list[bool]
    seconds: float


def load_pools(config: RunConfig):
    """Training and evaluation pools; the same list when both splits are the same (e.g. e-SNLI dev only)."""
    from sparsefit.data import load_examples
    train_pool = load_examples(config.dataset, config.data_path, config.train_split)
    if config.eval_split == config.train_split:
        return train_pool, train_pool
    return train_pool, load_examples(config.dataset, config.data_path, config.eval_split)


def icl_demonstrations(train: Sequence, shots: int, seed: int) -> list:
    """`shots` training examples for in-context prompting, spread over labels (round robin), in a seeded random
    order: in label order every episode's prompt had the same label sequence, and in-context answers are
    known to follow the order of the demonstrations (Lu et al., 2022)."""
    rng = random.Random(seed)
    by_label: dict[str, list] = {}
    for example in sorted(train, key=lambda e: e.id):
        by_label.setdefault(example.label, []).append(example)
    for group in by_label.values():
        rng.shuffle(group)
    chosen, labels = [], sorted(by_label)
    while len(chosen) < shots and any(by_label.values()):
        for label in labels:
            if by_label[label] and len(chosen) < shots:
                chosen.append(by_label[label].pop())
    rng.shuffle(chosen)
    return chosen


def icl_prefix(backbone: Backbone, demonstrations: Sequence) -> str:
    from sparsefit.prompts import causal_prompt, causal_target, format_input, format_target
    if backbone.is_seq2seq:
        # a literal "</s>" (UnifiedQA formats) inside the prompt would read as end-of-sequence to T5
        return " ".join(f"{format_input(d).removesuffix('</s>')} {format_target(d)}" for d in demonstrations) + " "
    return "".join(causal_prompt(format_input(d)) + causal_target(format_target(d)) + "\n\n"
                   for d in demonstrations)


def predict_examples(backbone: Backbone, model: nn.Module, examples: Sequence, config: RunConfig,
                     prefix: str = "", progress: bool = True) -> tuple[list[str], Generations]:
    from sparsefit.generate import generate
    from sparsefit.prompts import format_input, is_correct, parse_generation
    prompts = [prefix + format_input(e) for e in examples]
    started = time.perf_counter()
    raw = generate(backbone, model, prompts, batch_size=config.eval_batch_size,  # None: the device's default
                   max_new_tokens=config.max_new_tokens,
                   max_input_length=config.train.max_input_length * (1 + config.icl_shots if prefix else 1),
                   progress=progress)
    parsed = [parse_generation(text, e.dataset) for text, e in zip(raw, examples)]
    correct = [is_correct(label, e.label, e.dataset) for (label, _), e in zip(parsed, examples)]
    return prompts, Generations(raw=raw, labels=[p[0] for p in parsed], explanations=[p[1] for p in parsed],
                                correct=correct, seconds=time.perf_counter() - started)


def score(examples: Sequence, generations: Generations, config: RunConfig, device: torch.device | None = None):
    """BERTScore runs on `device` (the run's) unless the config's scorer names another."""
    from sparsefit.metrics import ScorerConfig, score_explanations, summarize
    scorer = ScorerConfig(**{**({"device": str(device)} if device is not None else {}), **config.scorer})
    scores = score_explanations(generations.explanations, [list(e.explanations) for e in examples], scorer)
    return scores, summarize(generations.correct, scores)


def per_item_metrics(scores, index: int) -> dict[str, float | None]:
    """The record's `metrics` field; all null when the predictions were not scored."""
    from sparsefit.metrics import METRIC_NAMES
    return scores.item_metrics(index) if scores is not None else dict.fromkeys(METRIC_NAMES)


def build_records(examples, prompts, generations: Generations, scores, config: RunConfig,
                  trainable_percent: float | None) -> list[PredictionRecord]:
    from sparsefit.data import label_options
    labels = label_options(examples[0].dataset, examples)
    return [PredictionRecord(
        id=e.id, dataset=e.dataset, split=e.split, inputs=dict(e.inputs), prompt=prompts[i],
        gold_label=e.label, gold_explanations=list(e.explanations), pred_label=generations.labels[i],
        pred_explanation=generations.explanations[i], raw_generation=generations.raw[i],
        correct=generations.correct[i], model=config.model, method=config.method,
        trainable_percent=trainable_percent, seed=config.seed, metrics=per_item_metrics(scores, i),
        label_options=labels, scorer=dict(scores.scorers) if scores is not None else None)
        for i, e in enumerate(examples)]


@dataclass
class PreparedEpisode:
    """An episode sampled and its model prepared by the method, ready to train (phase 1 of run_episode)."""

    config: RunConfig
    episode: Any  # sparsefit.episodes.Episode
    train_config: Any  # TrainConfig, resolved for the backbone kind and method
    method: Any  # SparseMethod
    model: nn.Module
    total: int
    trainable: int
    device: torch.device  # where the model was placed (resolved from config.device / config.dtype once)
    dtype: torch.dtype

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total


def sample_for(config: RunConfig):
    from sparsefit.episodes import sample_episode
    train_pool, eval_pool = load_pools(config)
    return sample_episode(config.dataset, train_pool, eval_pool, config.seed, config.n_train, config.n_eval)


def prepare_episode(config: RunConfig, episode, backbone: Backbone, *,
                    copy_model: Callable[[nn.Module], nn.Module] = copy.deepcopy,
                    data_choices: dict | None = None) -> PreparedEpisode:
    """Copy the base model (`copy_model`) and let the method freeze / wrap it, seeded by the episode seed.

    `data_choices`: a dict the caller keeps across episodes of one base model; a data-driven method's choice
    (e.g. the Fisher mask) is stored there and reused for the same shots and key instead of recomputed.
    """
    method = get_method(config.method, **config.method_options)
    train_config = config.train.resolved(backbone.arch.kind, config.method, method.training_defaults())
    method.check_training(train_config)
    if hasattr(method, "total_steps"):
        method.total_steps = train_config.steps
    device, dtype = resolve_placement(config.device, config.dtype)
    model = copy_model(backbone.model).to(device=device, dtype=dtype)  # no-op when the backbone matches
    total = count_parameters(model)[1]
    torch.manual_seed(config.seed)  # adapter / score initialisation must not depend on what ran before
    model = method.prepare(model, backbone.arch)
    if method.needs_data:
        key = method.data_choice_key() if data_choices is not None else None
        if key is not None:
            key = (key, tuple(e.id for e in episode.train), train_config.seed, str(device), str(dtype))
        if key is not None and key in data_choices:
            method.reuse_data_choice(model, data_choices[key])
        else:
            prepare_with_examples(backbone, method, model, episode.train, train_config)
            if key is not None:
                data_choices[key] = method.data_choice()
    return PreparedEpisode(config=config, episode=episode, train_config=train_config, method=method, model=model,
                           device=device, dtype=dtype,
                           total=total, trainable=method.trainable_count(model))


def run_episode(config: RunConfig, out_dir: str | Path, *, backbone: Backbone | None = None,
                progress: bool = True, evaluate: bool = True) -> dict[str, Any]:
    """Run one episode and write its files. A given `backbone` is not modified (the model is copied).

    `evaluate=False` stops after training and saving (the `train` command).
    """
    device, dtype = resolve_placement(config.device, config.dtype)  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_run_config(config, out / "config.json")
    episode = sample_for(config)
    if backbone is None:
        backbone = load_backbone(config.model, device=device, dtype=dtype)
    prepared = prepare_episode(config, episode, backbone)
    train_result = None
    prefix = ""
    if getattr(prepared.method, "in_context", False):
        prefix = icl_prefix(backbone, icl_demonstrations(episode.shots or episode.train, config.icl_shots, config.seed))
    else:
        train_result = method_train(backbone, prepared.method, prepared.model, episode.train,
                                    prepared.train_config, progress,
                                    compile=config.compile)
    return finish_episode(prepared, backbone, out, train_result, prefix=prefix, progress=progress,
                          evaluate=evaluate)


def finish_episode(prepared: PreparedEpisode, backbone: Backbone, out: Path, train_result, *, prefix: str = "",
                   progress: bool = True, evaluate: bool = True,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phase 2 of run_episode, on a trained model: delta + manifest, predictions, results.json (last)."""
    from sparsefit.data import data_hash
    config, episode, method, model = prepared.config, prepared.episode, prepared.method, prepared.model
    train_config, trainable, total = prepared.train_config, prepared.trainable, prepared.total
    trainable_percent = prepared.trainable_percent
    in_context = getattr(method, "in_context", False)
    device, dtype = prepared.device, prepared.dtype
    manifest = {
        "base_model": config.model, "base_fingerprint": backbone.fingerprint,
        "model_type": backbone.arch.model_type, "kind": backbone.arch.kind, "method_options": config.method_options,
        "train": vars(train_config), "dataset": config.dataset, "seed": config.seed,
        "data_hash": {"train": data_hash(episode.train), "eval": data_hash(episode.eval)},
        "trainable": trainable, "total": total, "trainable_percent": trainable_percent,
        "device": str(device), "dtype": dtype_name(dtype),
    }
    if in_context:
        write_manifest(out, method, manifest)
    else:
        save_delta(out, method, model, manifest)
    summary: dict[str, Any] = {}
    generations = None
    if evaluate:
        prompts, generations = predict_examples(backbone, model, episode.eval, config, prefix, progress)
        scores, summary = score(episode.eval, generations, config, device)
        records = build_records(episode.eval, prompts, generations, scores, config, trainable_percent)
        write_predictions(out / "predictions.jsonl", records)
    results = {
        "name": config.name or out.name, "dataset": config.dataset, "model": config.model,
        "method": config.method, "method_options": config.method_options, "seed": config.seed,
        "n_train": len(episode.train), "n_eval": len(episode.eval), **summary,
        "trainable": trainable, "total": total, "trainable_percent": trainable_percent,
        "train_seconds": train_result.seconds if train_result else 0.0,
        "seconds_per_step": train_result.seconds_per_step if train_result else None,
        "peak_memory_mb": train_result.peak_memory_mb if train_result else None,
        "first_loss": train_result.losses[0] if train_result else None,
        "last_loss": (sum(train_result.losses[-10:]) / len(train_result.losses[-10:])) if train_result else None,
        "generation_seconds": generations.seconds if generations else None,
        "broken_generations": sum(1 for e in generations.explanations if e == "UNK") if generations else None,
        "train_config": vars(train_config), "report": method.report(model),
        "device": str(device), "dtype": dtype_name(dtype), "compile": config.compile, **(extra or {}),
    }
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(out / "results.json")  # written last and atomically: its presence marks a finished episode
    return results


def prepare_with_examples(backbone, method, model, train_examples, train_config) -> None:
    """Hand a data-driven method (e.g. Fisher masks) the training shots as single-example batches."""
    from sparsefit.prompts import format_input, format_target
    from sparsefit.train import default_loss_for, example_batches
    if train_config.threads:
        torch.set_num_threads(train_config.threads)
    batches = example_batches(backbone, [format_input(e) for e in train_examples],
                              [format_target(e) for e in train_examples], train_config)
    method.prepare_with_data(model, backbone.arch, batches, default_loss_for(backbone))


def method_train(backbone, method, model, train_examples, train_config, progress, *, compile: bool = False,
                 on_step=None):
    from sparsefit.prompts import format_input, format_target
    from sparsefit.train import train
    inputs = [format_input(e) for e in train_examples]
    targets = [format_target(e) for e in train_examples]
    return train(backbone, method, model, inputs, targets, train_config, progress=progress, compile=compile,
                 on_step=on_step)


def predict_to_file(run: str, dataset: str, data_path: str | None, split: str, out_path: str | Path, *,
                    n: int | None = None, seed: int | None = None, score_outputs: bool = True,
                    device: str = "auto", dtype: str | None = None, eval_batch_size: int | None = None) -> Path:
    """Predict a dataset split with a saved run (or a base model id) and write a predictions file.

    `dtype` None: the run's training dtype (float32 for a base model id).
    """
    from sparsefit.checkpoint import MANIFEST_FILE, load_delta
    from sparsefit.data import load_examples
    resolve_placement(device, dtype)  # a bad --device fails before the model or data are read
    examples = load_examples(dataset, data_path, split)[: n or None]
    if (Path(run) / MANIFEST_FILE).exists():
        backbone, model, method, manifest = load_delta(run, device=device, dtype=dtype)
        config = RunConfig(dataset=dataset, model=manifest["base_model"], method=manifest["method"],
                           seed=manifest.get("seed") if seed is None else seed)
        percent = manifest.get("trainable_percent")
    else:
        backbone = load_backbone(run, device=device, dtype=dtype or "float32")
        model, percent = backbone.model, 0.0
        config = RunConfig(dataset=dataset, model=run, method="none", seed=seed)
    config.eval_batch_size = eval_batch_size
    prompts, generations = predict_examples(backbone, model, examples, config)
    scores = score(examples, generations, config, backbone.device)[0] if score_outputs else None
    return write_predictions(out_path, build_records(examples, prompts, generations, scores, config, percent))


def evaluate_file(predictions: str | Path, out_path: str | Path | None = None, *,
                  scorer_model: str | None = None, scorer_layers: int | None = None,
                  device: str = "auto") -> dict[str, Any]:
    """Score any predictions file (from any model): fills per-item metrics and returns the summary.

    BERTScore runs on `device` ("auto": CUDA when available)."""
    from dataclasses import replace
    from sparsefit.device import resolve_device
    from sparsefit.metrics import ScorerConfig, score_explanations, summarize
    from sparsefit.predictions import read_predictions
    scorer_device = resolve_device(device)
    records = read_predictions(predictions)
    config = ScorerConfig(device=str(scorer_device))
    if scorer_model:
        config = replace(config, bertscore_model=scorer_model, bertscore_layers=scorer_layers)
    scores = score_explanations([r.pred_explanation for r in records], [r.gold_explanations for r in records],
                                config)
    for i, record in enumerate(records):
        record.metrics = {**record.metrics, **per_item_metrics(scores, i)}
        record.scorer = dict(scores.scorers)
    out = Path(out_path) if out_path else Path(predictions).with_suffix(".scored.jsonl")
    write_predictions(out, records)
    return {**summarize([r.correct for r in records], scores), "written": str(out)}
