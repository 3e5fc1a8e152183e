"""Experiments: many episodes per configuration, one comparison table, the paper's component grid, N:M export.

- `run_episodes(variants, out_root, seeds)`: every (variant, seed) episode runs in its own folder
  `<out_root>/<variant>/seed-<seed>/` through `sparsefit.runner.run_episode`. A folder with results.json
  (written last and atomically by the runner) is a finished episode and is never redone; a folder without
  it is a crashed episode and is emptied and run again. Global RNGs are seeded per episode, so an episode
  gives the same numbers whether it runs in a fresh process, after others, or on resume. With
  `batch_episodes` the episodes of a variant train together (`sparsefit.batched`, same results); with
  `ray_address` they run as Ray tasks (`sparsefit.distributed`). See docs/batched.md.
- `results_table(rows)`: mean and sample standard deviation (ddof=1; empty for one episode) over episodes
  of accuracy, nBERTScore, BERTScore (all / correct), BLEU, METEOR, trainable %, train seconds and peak
  memory, one row per variant. Peak memory is what the runner's meter records: on CPU the process's
  resident set size (psutil) sampled after every training step -- it includes the loaded base model and
  everything else in the process; on CUDA `torch.cuda.max_memory_allocated` (tensors only).
- `run_grid`: the paper's single components and pairs (`paper_grid`) as SparseFit component specs,
  ranked by the paper's selection criterion: mean dev accuracy, then mean nBERTScore.
- `register_cli(subparsers)`: the `episodes`, `grid` and `nm-export` commands.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import random
import re
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from sparsefit.errors import SparseFitError

TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"), ("nbertscore", "nBERTScore"), ("bertscore_all", "BERTScore all"),
    ("bertscore_correct", "BERTScore correct"), ("bleu", "BLEU"), ("meteor", "METEOR"),
    ("trainable_percent", "trainable %"), ("train_seconds", "train s"), ("peak_memory_mb", "peak MB"),
)
# Measurements of this machine at this moment, not of the method: they differ between two runs.
MEASURED_METRICS = ("train_seconds", "peak_memory_mb")
RESULTS_FILE = "results.json"
CONFIG_FILE = "config.json"

SINGLE_COMPONENTS = ("ln", "lm_head", "self.q", "self.k", "self.v", "self.o", "self", "cross", "ffn",
                     "enc.self", "dec.self")
PAIRED_COMPONENTS = ("self.q,ln", "self.k,ln", "self.v,ln", "self.o,ln", "self,ln", "cross,ln", "ffn,ln",
                     "lm_head,ln", "self.k,lm_head", "self.k,ffn", "enc.self.k,ln", "dec.self.k,ln",
                     "enc.ffn,ln", "dec.ffn,ln")


@dataclass
class Variant:
    """One configuration of the comparison: a label (table row, folder name) and its run config."""

    label: str
    config: Any  # sparsefit.config.RunConfig


# --- seeds and labels -------------------------------------------------------------------------------------
def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """'all' -> FEB's 60 seeds; 'K' -> the first K of them; '7004,3639' (or '7004,') -> exactly those."""
    from sparsefit.episodes import FEB_SEEDS
    if isinstance(spec, int):
        spec = str(spec)
    if not isinstance(spec, str):
        return [int(s) for s in spec]
    text = spec.strip()
    if text == "all":
        return list(FEB_SEEDS)
    if "," in text:
        try:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        except ValueError:
            seeds = []
        if seeds and len(set(seeds)) == len(seeds):
            return seeds
    elif text.isdigit() and 1 <= int(text) <= len(FEB_SEEDS):
        return list(FEB_SEEDS[: int(text)])
    raise SparseFitError(f"--seeds must be 'all', a count 1..{len(FEB_SEEDS)} (the first K published seeds) or "
                         f"a comma-separated list of distinct seeds (one seed: '7004,'), got {spec!r}", field="seeds")


def variant_label(config: Any) -> str:
    if config.name:
        return config.name
    options = ",".join(f"{k}={v}" for k, v in sorted(config.method_options.items()))
    return f"{config.method}[{options}]" if options else config.method


def folder_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", label).strip("_") or "variant"


def make_variants(configs: Sequence[Any]) -> list[Variant]:
    variants, folders = [], {}
    for config in configs:
        label = variant_label(config)
        folder = folder_name(label)
        if folder in folders:
            raise SparseFitError(f"two configurations share the name {label!r}; give them distinct names "
                                 f"(config 'name' or --name)", field="name")
        folders[folder] = label
        variants.append(Variant(label=label, config=config))
    return variants


# --- episodes ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Methods initialise adapters in prepare() from the global RNGs: fix them for every episode."""
    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def episode_dir(out_root: Path, variant: Variant, seed: int) -> Path:
    return Path(out_root) / folder_name(variant.label) / f"seed-{seed}"


# Where and how fast an episode ran, not what it is: a finished episode stays valid when these differ (a run
# resumed on a GPU, with --compile, or from folders written before these settings existed).
PLACEMENT_SETTINGS = ("name", "device", "compile", "eval_batch_size")


def _comparable(config_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config_dict.items() if k not in PLACEMENT_SETTINGS}


def finished_result(folder: Path, config: Any) -> dict[str, Any] | None:
    """The stored results of a finished episode run with this same config, else None."""
    results_path = folder / RESULTS_FILE
    if not results_path.exists():
        return None
    stored_config = folder / CONFIG_FILE
    if stored_config.exists():
        stored = json.loads(stored_config.read_text(encoding="utf-8"))
        if _comparable(stored) != _comparable(json.loads(json.dumps(config.to_dict(), default=str))):
            raise SparseFitError("this folder holds a finished episode of a different configuration; use another "
                                 "--out or remove the folder", path=str(stored_config))
    check_preset_unchanged(folder, config)
    try:
        return json.loads(results_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise SparseFitError(f"unreadable results ({err}); remove the folder to rerun the episode",
                             path=str(results_path)) from err


def check_preset_unchanged(folder: Path, config: Any) -> None:
    """A finished episode names its preset file by path: refuse to reuse it next to new episodes once the
    file says something else (e.g. a search rerun into the same folder rewrote best_preset.json)."""
    from sparsefit.checkpoint import MANIFEST_FILE, read_manifest
    from sparsefit.methods.selection import preset_digest
    now = preset_digest(config.method_options)
    manifest_path = folder / MANIFEST_FILE
    if now is None or not manifest_path.exists():
        return
    then = read_manifest(folder).get("preset_sha256")
    if then and then != now:
        raise SparseFitError(f"the preset file {config.method_options['preset']} changed since this episode ran; "
                             "use another --out (or --name), or remove the folder to rerun it",
                             path=str(manifest_path), field="preset_sha256")


EpisodeFn = Callable[..., dict]


def check_variants(variants: Sequence[Variant]) -> None:
    """Build every variant's method once before any episode runs, so a bad option in the last variant does
    not surface hours later (and an option a method's constructor rejects becomes a one-line error)."""
    from sparsefit.methods import get_method
    for variant in variants:
        try:
            get_method(variant.config.method, **variant.config.method_options)
        except TypeError as err:
            raise SparseFitError(f"method '{variant.config.method}' does not accept the options "
                                 f"{variant.config.method_options} ({err})", field="method_options") from err


@dataclass
class PlannedEpisode:
    """One (variant, seed) of a run: its config and folder, and its results once finished."""

    label: str
    config: Any
    folder: Path
    result: dict[str, Any] | None = None


def plan_episodes(variants: Sequence[Variant], out_root: Path, seeds: Sequence[int]) -> list[PlannedEpisode]:
    """Every (variant, seed) with the stored results of those already finished (resume)."""
    plan = []
    for variant in variants:
        for seed in seeds:
            config = copy.deepcopy(variant.config)
            config.seed, config.name = seed, f"{folder_name(variant.label)}-seed-{seed}"
            folder = episode_dir(out_root, variant, seed)
            plan.append(PlannedEpisode(variant.label, config, folder, finished_result(folder, config)))
    return plan


def clear_unfinished(folder: Path) -> None:
    """A folder without results.json is a crashed episode: start it again from nothing."""
    from sparsefit.batched import PARTIAL_SUFFIX
    for path in (folder, folder.with_name(folder.name + PARTIAL_SUFFIX)):
        if path.exists():
            shutil.rmtree(path)


def note(message: str) -> None:
    import sys
    from tqdm import tqdm
    tqdm.write(f"note: {message}", file=sys.stderr)  # above a running progress bar, not through it


def run_episodes(variants: Sequence[Variant], out_root: str | Path, seeds: Sequence[int], *,
                 progress: bool = True, episode_fn: EpisodeFn | None = None, batch_episodes: int | None = None,
                 ray_address: str | None = None, notify: Callable[[str], None] = note) -> list[dict[str, Any]]:
    """Run (or reuse) every (variant, seed) episode; returns one results dict per episode, in order.

    batch_episodes: None or 1 = one episode at a time (`episode_fn`, default `runner.run_episode`);
    0 = as many episodes of a variant at once as fit in memory; K = groups of K (sparsefit.batched; methods
    without a batched trainer run one at a time, with a note). ray_address: run the episodes as Ray tasks
    ('local' starts a local Ray; 'auto' or host:port joins a cluster; sparsefit.distributed).
    """
    check_variants(variants)
    plan = plan_episodes(variants, Path(out_root), seeds)
    pending = [item for item in plan if item.result is None]
    for item in pending:
        clear_unfinished(item.folder)
    if pending and ray_address:
        from sparsefit.distributed import run_on_ray
        run_on_ray(pending, ray_address, batch_episodes, progress=progress, notify=notify)
    elif pending:
        _run_locally(plan, pending, batch_episodes, episode_fn, progress, notify)
    return [{"variant": item.label, **item.result} for item in plan]  # type: ignore[dict-item]


def _run_locally(plan: Sequence[PlannedEpisode], pending: Sequence[PlannedEpisode], batch_episodes: int | None,
                 episode_fn: EpisodeFn | None, progress: bool, notify: Callable[[str], None]) -> None:
    from tqdm import tqdm
    from sparsefit.backbones import load_backbone
    if episode_fn is None:
        from sparsefit.runner import run_episode as episode_fn
    bar = tqdm(total=len(plan), initial=len(plan) - len(pending), desc="episodes", unit="episode",
               disable=not progress)
    backbone, backbone_id = None, None
    labels = list(dict.fromkeys(item.label for item in pending))
    for label in labels:
        items = [item for item in pending if item.label == label]
        if backbone_id != items[0].config.model:
            backbone, backbone_id = None, None  # free the previous model first
            first = items[0].config
            backbone = load_backbone(first.model, device=first.device, dtype=first.dtype)
            backbone_id = first.model
        if batch_episodes not in (None, 1):
            run_variant_batched(label, items, backbone, batch_episodes, progress, notify, bar)
        for item in items:
            if item.result is None:  # one at a time (also what a batched variant could not do)
                bar.set_postfix_str(f"{label} seed {item.config.seed}")
                seed_everything(item.config.seed)
                item.result = episode_fn(item.config, item.folder, backbone=backbone, progress=False)
                bar.update()
    bar.close()


def run_variant_batched(label: str, items: Sequence[PlannedEpisode], backbone: Any, batch_episodes: int,
                        progress: bool, notify: Callable[[str], None], bar: Any = None) -> None:
    """Train a variant's episodes in groups (sparsefit.batched); leaves `result` None where it could not."""
    from sparsefit.batched import NotBatchable, batchable_reason, run_batched
    reason = batchable_reason(items[0].config)
    if reason:
        notify(f"{label}: {reason}; its episodes run one at a time")
        return
    if getattr(items[0].config, "compile", False):
        notify(f"{label}: --compile is not applied to episode-batched training (it trains eagerly)")

    def done(index: int, row: dict[str, Any]) -> None:
        items[index].result = row
        if bar is not None:
            bar.update()
    seed_everything(items[0].config.seed)
    try:
        run_batched([i.config for i in items], [i.folder for i in items], backbone, batch_episodes or None,
                    progress=progress, notify=notify, on_done=done)
    except NotBatchable as err:
        notify(f"{label}: {err}; its episodes run one at a time")


# --- the table --------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def results_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant (first-seen order): n episodes, and mean/std of every TABLE_METRICS column."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["variant"], []).append(row)
    table = []
    for label, episodes in groups.items():
        first = episodes[0]
        entry: dict[str, Any] = {"variant": label, "method": first.get("method"), "dataset": first.get("dataset"),
                                 "model": first.get("model"), "episodes": len(episodes),
                                 "seeds": " ".join(str(e.get("seed")) for e in episodes)}
        for key, _ in TABLE_METRICS:
            values = [float(e[key]) for e in episodes if isinstance(e.get(key), (int, float))
                      and not (isinstance(e.get(key), float) and math.isnan(e[key]))]
            entry[f"{key}_mean"], entry[f"{key}_std"] = _mean_std(values)
        table.append(entry)
    return table


def write_table_csv(table: Sequence[dict[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(table[0]) if table else ["variant"]
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for entry in table:
            writer.writerow({k: ("" if v is None else v) for k, v in entry.items()})
    tmp.replace(path)
    return path


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def format_table(table: Sequence[dict[str, Any]], extra: Sequence[str] = ()) -> str:
    """A plain-text table: one line per variant, 'mean ± std' cells."""
    header = [*extra, "variant", "n", *[title for _, title in TABLE_METRICS]]
    lines = [[*(str(e.get(k, "")) for k in extra), e["variant"], str(e["episodes"]),
              *[_cell(e[f"{key}_mean"], e[f"{key}_std"]) for key, _ in TABLE_METRICS]] for e in table]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)])


# --- the component grid -----------------------------------------------------------------------------------
def paper_grid(arch_kind: str) -> list[str]:
    """SparseFit component specs compared in the paper: single components and pairs. Decoder-only models
    have no cross-attention or encoder, so those specs (and enc./dec. variants) are left out."""
    specs = [*SINGLE_COMPONENTS, *PAIRED_COMPONENTS]
    if arch_kind == "seq2seq":
        return specs
    return [s for s in specs if "cross" not in s and "enc." not in s and "dec." not in s]


def rank_table(table: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's selection: highest mean dev accuracy first, ties broken by mean nBERTScore."""
    def key(entry):
        acc, nbert = entry.get("accuracy_mean"), entry.get("nbertscore_mean")
        return (-(acc if acc is not None else -math.inf), -(nbert if nbert is not None else -math.inf))
    ranked = sorted(table, key=key)
    return [{"rank": i, **entry} for i, entry in enumerate(ranked, 1)]


def grid_variants(base_config: Any, specs: Sequence[str]) -> list[Variant]:
    configs = []
    for spec in specs:
        config = copy.deepcopy(base_config)
        config.method, config.name = "sparsefit", f"sparsefit[{spec}]"
        config.method_options = {"components": spec}
        configs.append(config)
    return make_variants(configs)


def run_grid(base_config: Any, out_root: str | Path, seeds: Sequence[int], specs: Sequence[str] | None = None,
             *, progress: bool = True, episode_fn: EpisodeFn | None = None, batch_episodes: int | None = None,
             ray_address: str | None = None) -> list[dict[str, Any]]:
    """Run every spec (default: `paper_grid` for the model's kind) and return the ranked table."""
    if specs is None:
        from sparsefit.backbones import meta_model
        _, arch = meta_model(base_config.model)
        specs = paper_grid(arch.kind)
    rows = run_episodes(grid_variants(base_config, specs), out_root, seeds, progress=progress,
                        episode_fn=episode_fn, batch_episodes=batch_episodes, ray_address=ray_address)
    ranked = rank_table(results_table(rows))
    write_table_csv(ranked, Path(out_root) / "grid.csv")
    return ranked


# --- CLI --------------------------------------------------------------------------------------------------
def _add_common(parser: argparse.ArgumentParser, *, several: bool) -> None:
    from sparsefit.cli import add_run_arguments
    add_run_arguments(parser)
    if several:  # re-declared as repeatable (the parser resolves conflicts): several in one call -> one table
        parser.add_argument("--config", action="append", default=[],
                            help="run config file (repeatable: one table row per config)")
        parser.add_argument("--method", action="append", default=[],
                            help="method (repeatable: one table row per method, for each config)")
    parser.add_argument("--seeds", default="all", help="'all' (FEB's 60), K (the first K) or a comma list")
    parser.add_argument("--out", help="folder for episodes and tables (default models/experiments/<dataset>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--batch-episodes", type=int, default=0, metavar="K",
                        help="train K episodes of a variant at once (sparsefit, ln_tuning, lora); default 0 = as "
                             "many as fit in memory; 1 = one at a time")
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help="run episodes as Ray tasks: alone = start a local Ray; 'auto' or host:port = join a "
                             "running cluster")


def configs_from_args(args: argparse.Namespace) -> list[Any]:
    """Every --config (or the flags alone) crossed with every --method (or the config's own method)."""
    from sparsefit.cli import config_from_args
    def as_list(value):
        return [value] if isinstance(value, str) else list(value or [])
    configs = []
    for config_path in as_list(args.config) or [None]:
        for method in as_list(args.method) or [None]:
            single = argparse.Namespace(**{**vars(args), "config": config_path, "method": method})
            configs.append(config_from_args(single))
    return configs


def _out_root(args: argparse.Namespace, configs: Sequence[Any], kind: str) -> Path:
    if args.out:
        return Path(args.out)
    from sparsefit.backbones import models_dir
    return models_dir() / "experiments" / f"{configs[0].dataset}-{kind}"


def cmd_episodes(args: argparse.Namespace) -> None:
    configs = configs_from_args(args)
    out_root = _out_root(args, configs, "episodes")
    rows = run_episodes(make_variants(configs), out_root, parse_seeds(args.seeds), progress=not args.quiet,
                        batch_episodes=args.batch_episodes, ray_address=args.ray)
    table = results_table(rows)
    path = write_table_csv(table, out_root / "table.csv")
    print(format_table(table))
    print(f"\ntable: {path}  (mean ± sample std over episodes; train s and peak MB are measurements of this "
          f"machine: peak MB = process RSS on CPU, max allocated on CUDA)")


def cmd_grid(args: argparse.Namespace) -> None:
    base = configs_from_args(args)[0]
    specs = [s.strip() for s in args.specs.split(";")] if args.specs else None
    out_root = _out_root(args, [base], "grid")
    ranked = run_grid(base, out_root, parse_seeds(args.seeds), specs, progress=not args.quiet,
                      batch_episodes=args.batch_episodes, ray_address=args.ray)
    print(format_table(ranked, extra=("rank",)))
    print(f"\nranked by mean accuracy, then mean nBERTScore; table: {out_root / 'grid.csv'}")


def cmd_nm_export(args: argparse.Namespace) -> None:
    from sparsefit.nm import export_run
    report = export_run(args.run, args.pattern, args.out, targets=args.targets, evaluate=not args.no_eval,
                        n_eval=args.n_eval, save_model=args.save_model, progress=not args.quiet,
                        device=args.device or "auto", dtype=args.dtype)
    pruning = report["pruning"]
    print(f"{report['pattern']}: {len(pruning['pruned_layers'])} layers pruned to {100 * pruning['sparsity']:.1f}% "
          f"sparsity, {len(pruning['skipped_layers'])} left dense")
    if "pruned" in report:
        dense, sparse = report["dense"] or {}, report["pruned"]
        print(f"accuracy {dense.get('accuracy')} -> {sparse.get('accuracy')}; nBERTScore "
              f"{dense.get('nbertscore')} -> {sparse.get('nbertscore')} (n_eval {sparse.get('n_eval')})")
    latency = report["latency"]
    if not latency["measured"]:
        print(f"latency: {latency['reason']}")
    else:
        for row in latency["shapes"]:
            detail = (f"dense {row['dense_ms']:.3f} ms, 2:4 {row['sparse_ms']:.3f} ms, {row['speedup']:.2f}x"
                      if "sparse_ms" in row else f"not supported: {row['error']}")
            print(f"  {tuple(row['shape'])} x {row['tokens']} tokens: {detail}")
    print(f"report: {report['out']}/nm_report.json")


def register_cli(subparsers: Any) -> None:
    """Add `episodes`, `grid` and `nm-export` to the `python -m sparsefit` command line."""
    p = subparsers.add_parser("episodes", help="many episodes per method/config, resumable, one results table",
                              conflict_handler="resolve")
    _add_common(p, several=True)
    p.set_defaults(func=cmd_episodes)

    p = subparsers.add_parser("grid", help="SparseFit component grid (paper's singles and pairs), ranked")
    _add_common(p, several=False)
    p.add_argument("--specs", help="';'-separated component specs (default: the paper's built-in list)")
    p.set_defaults(func=cmd_grid)

    p = subparsers.add_parser("nm-export", help="prune a trained run to 2:4 or V:2:M, evaluate, time on CUDA")
    p.add_argument("--run", required=True, help="run folder (delta.safetensors + manifest.json + config.json)")
    p.add_argument("--pattern", default="2:4", help="2:4 or V:2:M, e.g. 64:2:8")
    p.add_argument("--targets", default="attn,ffn", help="linear layers to prune: attn, self, cross, ffn")
    p.add_argument("--out", help="output folder (default <run>/nm-<pattern>)")
    p.add_argument("--n-eval", type=int, help="evaluate on fewer examples (dense is then re-evaluated too)")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy re-evaluation")
    p.add_argument("--save-model", action="store_true", help="also save the pruned merged model")
    p.add_argument("--quiet", action="store_true")
    from sparsefit.cli import add_device_arguments
    add_device_arguments(p)
    p.set_defaults(func=cmd_nm_export)
