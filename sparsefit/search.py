"""Subset search: which parameters (and which learning rate) to fine-tune, chosen on validation episodes.

`python -m sparsefit search --dataset esnli --path DIR --train-split dev --model default --budget 5%`

Candidates: SparseFit component specs of the paper's grid (`experiments.paper_grid`: single components and
pairs) plus pairs of self-attention projections with the layer norms, deduplicated by the parameters they
select, kept when they fit the budget (counted on a meta-device model, no weights); plus `fish` (Fisher
masks) at the whole budget. Each is crossed with the learning-rate grid.

Validation episodes come from the training split only: for each validation seed, `sample_episode` draws
the shots and a disjoint validation sample from the *training* pool. Evaluation examples are never read.
If you report on the same split you search on (e-SNLI dev here), other seeds are not enough: two seeds'
samples of one pool overlap. Pass `--exclude-eval-of` the reported seeds (and the reported runs' settings
where they differ from the defaults: `--eval-split`, `--n-eval`, `--report-train-split`, `--report-n-train`):
their evaluation examples are rebuilt exactly as `run` draws them and removed from the search pool. The
default validation seeds are the last FEB seeds, the reported ones usually the first.

Successive halving: rung r trains every surviving candidate for `steps_r` steps on `episodes_r` fresh
validation episodes (no rung reuses another's). Every `check_every` steps a checkpoint is scored in one
teacher-forced pass over the validation sample: the greedy label accuracy (exact: the argmax at every
position of the gold "<label> because" span) and the target loss. A candidate's score at a rung is its best
checkpoint by mean label accuracy, then mean loss; that checkpoint's steps go into the preset. The top `keep`
share (at least one) goes on to the next rung; the last rung also generates the answers at its end (real
accuracy and nBERTScore, reported beside the ranking).

Files in `--out`: search.json (the setup: model fingerprint, dataset, data hash, budget, rungs, ...),
trials.jsonl (one finished trial per line, appended as it finishes: a search resumes where it stopped and
never mixes setups: a folder made for another setup is refused), search.csv (ranked table) and
best_preset.json (use with `--method <method> --method-option preset=<out>/best_preset.json`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from sparsefit.errors import SparseFitError

SETUP_FILE, TRIALS_FILE, TABLE_FILE, BEST_FILE = "search.json", "trials.jsonl", "search.csv", "best_preset.json"
ATTENTION_PROJECTIONS = ("self.q", "self.k", "self.v", "self.o")
# validation seeds: the last FEB seeds, so the first ones (7004, 3639, 6290, ...) stay free for reporting
DEFAULT_VALIDATION_SEEDS = (4791, 588, 5320, 1181, 9599, 176)


@dataclass(frozen=True)
class Rung:
    steps: int
    episodes: int


@dataclass
class SearchSettings:
    dataset: str
    data_path: str | None = None
    train_split: str = "train"
    model: str = "default"
    budget: float = 0.05  # fraction of all parameters
    lrs: tuple[float, ...] = (3e-4, 1e-3)
    rungs: tuple[Rung, ...] = (Rung(10, 1), Rung(30, 2), Rung(50, 2))
    keep: float = 1 / 5  # 14 candidates -> 3 -> 1: sized so a search that keeps fish to the end fits 30 min
    check_every: int = 20  # score a checkpoint every N steps (and at the end): the search also picks the steps
    all_specs: bool = False  # False: a spec is left out when the same spec plus the norms (",ln") is a candidate
    n_train: int | None = None
    n_val: int = 48  # 24 examples give a ±10-point SE per episode; each check costs ~0.2 s per example
    validation_seeds: tuple[int, ...] = DEFAULT_VALIDATION_SEEDS
    components: tuple[str, ...] | None = None  # None: the built-in candidate list
    fish: bool = True
    # Reporting episodes whose evaluation examples the search must not see (when the search's training split is
    # also the split reported on, e.g. e-SNLI dev): their eval samples are removed from the search pool.
    exclude_eval_seeds: tuple[int, ...] = ()
    eval_split: str | None = None  # the reporting runs' eval split (default: train_split)
    n_eval: int | None = None  # the reporting runs' eval size (default: FEB's)
    # the reporting runs' shots: they are drawn before the eval sample, so they move it (defaults: the search's
    # train split, FEB's shot count; not the search's --n-train)
    report_train_split: str | None = None
    report_n_train: int | None = None
    batch_size: int = 4
    max_new_tokens: int = 32
    threads: int | None = None  # machine settings: not part of the setup fingerprint
    device: str = "auto"


@dataclass(frozen=True)
class Candidate:
    method: str  # sparsefit | fish
    lr: float
    components: str | None = None
    budget: float | None = None
    trainable_percent: float = 0.0

    @property
    def key(self) -> str:
        what = self.components if self.method == "sparsefit" else f"{100 * self.budget:g}%"
        return f"{self.method}[{what}]@lr={self.lr:g}"

    def method_options(self) -> dict[str, Any]:
        return {"components": self.components} if self.method == "sparsefit" else {"budget": self.budget}


# --- candidates --------------------------------------------------------------------------------------------
def candidate_specs(arch_kind: str, all_specs: bool = True) -> list[str]:
    """The paper's grid plus pairs of self-attention projections with the norms. Without `all_specs`, a spec
    whose ",ln" variant is also listed is dropped: the norms add ~0.02% of the parameters, and halving the list
    is what lets the default search fit in 30 minutes on 2 CPU cores."""
    from sparsefit.experiments import paper_grid
    pairs = [f"{a},{b},ln" for i, a in enumerate(ATTENTION_PROJECTIONS) for b in ATTENTION_PROJECTIONS[i + 1:]]
    specs = list(dict.fromkeys([*paper_grid(arch_kind), *pairs]))
    if all_specs:
        return specs
    return [spec for spec in specs if "ln" in spec.split(",") or f"{spec},ln" not in specs]


def structural_candidates(model_id: str, budget: float, specs: Sequence[str] | None,
                          all_specs: bool = True) -> list[tuple[str, float]]:
    """(spec, trainable share) of every spec within the budget, one per distinct parameter set.

    Built-in specs that match nothing on this model are skipped; a user's spec must be valid.
    """
    from sparsefit.backbones import meta_model
    from sparsefit.methods.base import count_parameters
    from sparsefit.methods.selection import select_parameters
    model, arch = meta_model(model_id)
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    total = count_parameters(model)[1]
    strict = specs is not None
    seen: set[frozenset[str]] = set()
    fitting, smallest = [], None
    for spec in (specs if specs is not None else candidate_specs(arch.kind, all_specs)):
        try:
            names = frozenset(select_parameters(model, spec, arch))
        except SparseFitError:
            if strict:
                raise
            continue
        if names in seen:
            continue
        seen.add(names)
        share = sum(sizes[n] for n in names) / total
        if smallest is None or share < smallest[1]:
            smallest = (spec, share)
        if share <= budget:
            fitting.append((spec, share))
    if not fitting:
        hint = f"; the smallest, {smallest[0]!r}, trains {100 * smallest[1]:.3g}%" if smallest else ""
        raise SparseFitError(f"no candidate subset fits the budget of {100 * budget:.3g}% of {total:,} "
                             f"parameters{hint}", field="--budget")
    return fitting


def check_fish_fits(model_id: str, budget: float) -> None:
    """Fail before anything trains when the Fisher candidate's budget exceeds the weights it may choose (the
    frozen embedding is most of a small decoder), instead of after every structural candidate's first rung."""
    from sparsefit.backbones import meta_model
    from sparsefit.methods import get_method
    model, arch = meta_model(model_id)
    try:
        get_method("fish", budget=budget).prepare(model, arch)
    except SparseFitError as err:
        raise SparseFitError(f"{err.message}; lower --budget or pass --no-fish", field="--budget") from None


def build_candidates(settings: SearchSettings) -> list[Candidate]:
    structural = structural_candidates(settings.model, settings.budget, settings.components, settings.all_specs)
    if settings.fish:
        check_fish_fits(settings.model, settings.budget)
    out = []
    for lr in settings.lrs:
        out += [Candidate("sparsefit", lr, components=spec, trainable_percent=100 * share)
                for spec, share in structural]
        if settings.fish:
            out.append(Candidate("fish", lr, budget=settings.budget, trainable_percent=100 * settings.budget))
    return out


# --- setup and trials (resumable) -----------------------------------------------------------------------
def setup_of(settings: SearchSettings, fingerprint: str, data_hash: str) -> dict[str, Any]:
    setup = {k: v for k, v in asdict(settings).items() if k not in ("threads", "device", "data_path")}
    for key in ("report_train_split", "report_n_train"):  # unset: as before they existed (folders stay resumable)
        if setup[key] is None:
            del setup[key]
    setup["rungs"] = [[r["steps"], r["episodes"]] for r in setup["rungs"]]
    setup = json.loads(json.dumps({**setup, "model_fingerprint": fingerprint, "data_hash": data_hash}))
    setup["setup_id"] = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:16]
    return setup


def check_or_write_setup(out: Path, setup: dict[str, Any]) -> None:
    """A folder belongs to one setup: a different model, dataset, data, budget or rung plan is refused."""
    path = out / SETUP_FILE
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise SparseFitError(f"unreadable search setup ({err.msg})", path=str(path)) from None
        if stored.get("setup_id") != setup["setup_id"]:
            differing = [k for k in setup if k != "setup_id" and stored.get(k) != setup[k]] or ["setup_id"]
            key = differing[0]
            raise SparseFitError(f"this search folder belongs to another setup ({key}: {stored.get(key)!r} there, "
                                 f"{setup[key]!r} now); use another --out", path=str(path), field=key)
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(setup, indent=2) + "\n", encoding="utf-8")


def read_trials(out: Path, setup_id: str) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Finished trials by (candidate, seed, steps). A last line cut short by a crash is dropped (it reruns)."""
    path = out / TRIALS_FILE
    done: dict[tuple[str, int, int], dict[str, Any]] = {}
    if not path.exists():
        return done
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            trial = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                path.write_text("".join(f"{kept}\n" for kept in lines[:-1]), encoding="utf-8")
                continue
            raise SparseFitError("unreadable trial line; remove it to rerun that trial", path=str(path),
                                 line=number) from None
        if trial.get("setup_id") != setup_id:
            raise SparseFitError("trial of another search setup in this folder; use another --out",
                                 path=str(path), line=number, field="setup_id")
        done[(trial["candidate"], trial["seed"], trial["steps"])] = trial
    return done


def append_trial(out: Path, trial: dict[str, Any]) -> None:
    with (out / TRIALS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(trial) + "\n")
        handle.flush()


def search_pool(settings: SearchSettings) -> list:
    """The training split, minus the evaluation examples of `exclude_eval_seeds` episodes (drawn as `run` does)."""
    from sparsefit.data import load_examples
    from sparsefit.episodes import sample_episode
    pool = load_examples(settings.dataset, settings.data_path, settings.train_split)
    if not settings.exclude_eval_seeds:
        return pool
    def split(name: str) -> list:
        return pool if name == settings.train_split else load_examples(settings.dataset, settings.data_path, name)

    report_train = split(settings.report_train_split or settings.train_split)
    eval_pool = split(settings.eval_split or settings.train_split)
    hidden: set[str] = set()
    for seed in settings.exclude_eval_seeds:
        episode = sample_episode(settings.dataset, report_train, eval_pool, seed, settings.report_n_train,
                                 settings.n_eval)
        hidden |= {e.id for e in episode.eval}
    return [e for e in pool if e.id not in hidden]


# --- one trial ------------------------------------------------------------------------------------------
def checkpoint_steps(steps: int, every: int) -> list[int]:
    """Steps at which a trial is scored: every `every` steps and at the end."""
    return sorted({*range(every, steps + 1, every), steps})


_SIZE_FLAGS = {"n_train": "--n-train", "n_eval": "--n-val"}  # the sampler's names -> this command's flags


def check_episode_sizes(settings: SearchSettings, pool: list) -> None:
    """Fail before the model loads when the pool cannot give the validation episodes their sizes, naming the
    search's flag (the sampler calls the validation sample n_eval)."""
    from sparsefit.episodes import sample_episode
    try:
        sample_episode(settings.dataset, pool, pool, settings.validation_seeds[0], settings.n_train, settings.n_val)
    except SparseFitError as err:
        flag = _SIZE_FLAGS.get(err.field or "", err.field)
        message = err.message
        for name, option in _SIZE_FLAGS.items():
            message = message.replace(name, option)
        source = "the training split" + (" minus --exclude-eval-of" if settings.exclude_eval_seeds else "")
        raise SparseFitError(f"{message} in the search pool ({len(pool)} examples: {source})", field=flag) from err


def run_trial(backbone, pool, settings: SearchSettings, candidate: Candidate, seed: int, steps: int, *,
              generate: bool, data_choices: dict | None = None) -> dict:
    """Train the candidate on one validation episode's shots; score checkpoints on its validation sample.

    Each checkpoint gets a teacher-forced score (one forward pass: greedy label accuracy and target loss), so
    the search can pick the number of steps too. `generate`: also generate the validation answers at the end
    (real accuracy and nBERTScore; the last rung does this). `data_choices`: shared by the trials of one rung,
    so candidates that differ only in lr reuse one Fisher pass per episode (the mask does not depend on lr).
    """
    from sparsefit.config import RunConfig, TrainConfig
    from sparsefit.episodes import sample_episode
    from sparsefit.experiments import seed_everything
    from sparsefit.prompts import format_input, format_target
    from sparsefit.runner import method_train, predict_examples, prepare_episode, score
    from sparsefit.train import validation_score
    started = time.perf_counter()
    episode = sample_episode(settings.dataset, pool, pool, seed, settings.n_train, settings.n_val)
    config = RunConfig(dataset=settings.dataset, model=settings.model, method=candidate.method,
                       method_options=candidate.method_options(), seed=seed,
                       train=TrainConfig(lr=candidate.lr, steps=steps, batch_size=settings.batch_size, seed=seed,
                                         threads=settings.threads),
                       max_new_tokens=settings.max_new_tokens, device=settings.device)
    seed_everything(seed)
    # copy, place, prepare (+ the Fisher pass for fish, once per episode and budget)
    prepared = prepare_episode(config, episode, backbone, data_choices=data_choices)
    method, model = prepared.method, prepared.model
    val_inputs, val_targets = [format_input(e) for e in episode.eval], [format_target(e) for e in episode.eval]
    wanted, checkpoints = set(checkpoint_steps(steps, settings.check_every)), []

    def score_checkpoint(step: int) -> None:
        if step in wanted:
            result = validation_score(backbone, model, val_inputs, val_targets, config.train)
            checkpoints.append({"steps": step, "label_accuracy": result.label_accuracy, "val_loss": result.loss})

    result = method_train(backbone, method, model, episode.train, prepared.train_config, progress=False,
                          on_step=score_checkpoint)
    accuracy = nbertscore = None
    if generate:
        _, generations = predict_examples(backbone, model, episode.eval, config, progress=False)
        _, summary = score(episode.eval, generations, config, prepared.device)
        accuracy, nbertscore = summary.get("accuracy"), summary.get("nbertscore")
    return {"candidate": candidate.key, "seed": seed, "steps": steps, "method": candidate.method,
            "components": candidate.components, "budget": candidate.budget, "lr": candidate.lr,
            "trainable_percent": prepared.trainable_percent, "checkpoints": checkpoints,
            "accuracy": accuracy, "nbertscore": nbertscore,
            "last_loss": sum(result.losses[-5:]) / len(result.losses[-5:]),
            "n_val": len(episode.eval), "seconds": time.perf_counter() - started}


# --- successive halving ----------------------------------------------------------------------------------
def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
    return statistics.fmean(present) if present else None


def _rank_key(row: dict[str, Any]) -> tuple:
    """Later rung first, then validation label accuracy (higher), then validation loss (lower)."""
    acc, loss = row.get("val_accuracy"), row.get("val_loss")
    return (-row.get("rung", 0), -(acc if acc is not None else -1.0), loss if loss is not None else math.inf)


def best_checkpoint(trials: list[dict[str, Any]]) -> tuple[int, float | None, float | None]:
    """(steps, mean label accuracy, mean loss) of the checkpoint with the best mean over the episodes."""
    by_steps: dict[int, list[dict[str, Any]]] = {}
    for trial in trials:
        for point in trial["checkpoints"]:
            by_steps.setdefault(point["steps"], []).append(point)
    means = {step: (_mean([p["label_accuracy"] for p in points]), _mean([p["val_loss"] for p in points]))
             for step, points in by_steps.items() if len(points) == len(trials)}
    if not means:
        return trials[0]["steps"], None, None
    step = max(means, key=lambda k: (means[k][0] if means[k][0] is not None else -1.0,
                                     -(means[k][1] if means[k][1] is not None else math.inf), -k))
    return step, *means[step]


def summarize_rung(candidate: Candidate, trials: list[dict[str, Any]], rung_index: int, rung: Rung) -> dict:
    steps, val_accuracy, val_loss = best_checkpoint(trials)
    return {"candidate": candidate.key, "method": candidate.method, "components": candidate.components or "",
            "budget": candidate.budget, "lr": candidate.lr,
            "trainable_percent": _mean([t["trainable_percent"] for t in trials]),
            "rung": rung_index + 1, "steps": rung.steps, "episodes": len(trials), "best_steps": steps,
            "val_accuracy": val_accuracy, "val_loss": val_loss,
            "accuracy": _mean([t["accuracy"] for t in trials]),
            "nbertscore": _mean([t["nbertscore"] for t in trials]),
            "seconds": sum(t["seconds"] for t in trials)}


def rung_seeds(settings: SearchSettings) -> list[tuple[int, ...]]:
    """Each rung gets its own, fresh validation episodes: rung 1 the first seeds, rung 2 the next ones, ..."""
    out, offset = [], 0
    for rung in settings.rungs:
        out.append(tuple(settings.validation_seeds[offset:offset + rung.episodes]))
        offset += rung.episodes
    return out


def run_search(settings: SearchSettings, out: str | Path, *, progress: bool = True, backbone=None) -> list[dict]:
    """Run (or resume) the search; returns the ranked table (best first) and writes the files."""
    from tqdm import tqdm
    from sparsefit.backbones import load_backbone
    from sparsefit.data import data_hash
    out = Path(out)
    if not 0 < settings.keep <= 1:
        raise SparseFitError(f"--keep must be in (0, 1], got {settings.keep}", field="--keep")
    if settings.check_every < 1:
        raise SparseFitError(f"--check-every must be a positive number of steps, got {settings.check_every}",
                             field="--check-every")
    needed = sum(r.episodes for r in settings.rungs)
    if len(settings.validation_seeds) < needed:
        raise SparseFitError(f"the rungs need {needed} validation seeds (each rung draws fresh episodes), "
                             f"got {len(settings.validation_seeds)}", field="--validation-seeds")
    candidates = build_candidates(settings)  # checks budget and components before loading anything big
    pool = search_pool(settings)
    check_episode_sizes(settings, pool)
    backbone = backbone or load_backbone(settings.model, device=settings.device)
    setup = setup_of(settings, backbone.fingerprint, data_hash(pool))
    check_or_write_setup(out, setup)
    done = read_trials(out, setup["setup_id"])
    alive, rows = list(candidates), {}
    planned = sum(r.episodes * math.ceil(len(candidates) * settings.keep ** i) for i, r in enumerate(settings.rungs))
    bar = tqdm(total=planned, desc="search", unit="trial", disable=not progress)
    last = len(settings.rungs) - 1
    for index, (rung, seeds) in enumerate(zip(settings.rungs, rung_seeds(settings))):
        data_choices: dict = {}  # Fisher masks of this rung's episodes (each rung draws new ones)
        for candidate in alive:
            trials = []
            for seed in seeds:
                trial = done.get((candidate.key, seed, rung.steps))
                if trial is None:
                    bar.set_postfix_str(f"{candidate.key} {rung.steps} steps seed {seed}")
                    trial = {**run_trial(backbone, pool, settings, candidate, seed, rung.steps,
                                         generate=index == last, data_choices=data_choices),
                             "setup_id": setup["setup_id"]}
                    append_trial(out, trial)
                    done[(candidate.key, seed, rung.steps)] = trial
                trials.append(trial)
                bar.update()
            row = summarize_rung(candidate, trials, index, rung)
            row["seconds"] += rows[candidate.key]["seconds"] if candidate.key in rows else 0.0  # every rung's cost
            rows[candidate.key] = row
        alive.sort(key=lambda c: _rank_key(rows[c.key]))
        alive = alive[: max(1, math.ceil(len(alive) * settings.keep))]
    bar.close()
    ranked = sorted(rows.values(), key=_rank_key)
    ranked = [{"rank": i, **row} for i, row in enumerate(ranked, 1)]
    write_outputs(out, ranked)
    return ranked


def best_preset(row: dict[str, Any]) -> dict[str, Any]:
    preset = {"method": row["method"], "lr": row["lr"], "steps": row["best_steps"]}
    if row["method"] == "sparsefit":
        preset["components"] = row["components"]
    else:
        preset["budget"] = row["budget"]
    return preset


def write_outputs(out: Path, ranked: list[dict[str, Any]]) -> None:
    from sparsefit.experiments import write_table_csv
    write_table_csv(ranked, out / TABLE_FILE)
    (out / BEST_FILE).write_text(json.dumps(best_preset(ranked[0]), indent=2) + "\n", encoding="utf-8")


def format_ranked(ranked: Sequence[dict[str, Any]]) -> str:
    def num(value, digits=1):
        return "" if value is None else f"{value:.{digits}f}"
    header = ["rank", "method", "components / budget", "lr", "trainable %", "rung", "episodes", "best steps",
              "val label acc", "val loss", "gen accuracy", "nBERTScore", "seconds"]
    lines = [[str(r["rank"]), r["method"], r["components"] or f"{100 * r['budget']:g}%", f"{r['lr']:g}",
              num(r["trainable_percent"], 3), str(r["rung"]), str(r["episodes"]), f"{r['best_steps']}/{r['steps']}",
              num(r["val_accuracy"]), num(r["val_loss"], 3), num(r["accuracy"]), num(r["nbertscore"]),
              num(r["seconds"], 0)] for r in ranked]
    widths = [max(len(c) for c in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([render(header), render(["-" * w for w in widths]), *map(render, lines)])


# --- CLI -------------------------------------------------------------------------------------------------
def parse_rungs(text: str) -> tuple[Rung, ...]:
    """'10:1,30:2' -> two rungs: 10 steps on 1 episode, then 30 steps on 2 (other) episodes."""
    try:
        rungs = tuple(Rung(*(int(x) for x in part.split(":"))) for part in text.split(",") if part.strip())
    except (TypeError, ValueError):
        rungs = ()
    if not rungs or any(r.steps < 1 or r.episodes < 1 for r in rungs):
        raise SparseFitError(f"--rungs must look like '10:1,30:2' (steps:episodes per rung), got {text!r}",
                             field="--rungs")
    return rungs


def _floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise SparseFitError(f"{flag} must be a comma list of positive numbers, got {text!r}", field=flag)
    return values


def _ints(text: str | None, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in (text or "").split(",") if x.strip())
    except ValueError:
        raise SparseFitError(f"{flag} must be a comma list of seeds, got {text!r}", field=flag) from None


def settings_from_args(args: argparse.Namespace) -> SearchSettings:
    from sparsefit.methods.selection import parse_budget
    seeds = _ints(args.validation_seeds, "--validation-seeds") or DEFAULT_VALIDATION_SEEDS
    if len(set(seeds)) != len(seeds):  # a repeated seed would count one episode twice in a rung's mean
        raise SparseFitError(f"--validation-seeds repeats a seed: {args.validation_seeds!r}", field="--validation-seeds")
    return SearchSettings(
        dataset=args.dataset, data_path=args.data_path, train_split=args.train_split, model=args.model,
        budget=parse_budget(args.budget, "--budget"), lrs=_floats(args.lrs, "--lrs"), rungs=parse_rungs(args.rungs),
        keep=args.keep, check_every=args.check_every, all_specs=args.all_specs, n_train=args.n_train, n_val=args.n_val, validation_seeds=seeds,
        components=tuple(s.strip() for s in args.components.split(";") if s.strip()) if args.components else None,
        fish=not args.no_fish, exclude_eval_seeds=_ints(args.exclude_eval_of, "--exclude-eval-of"),
        eval_split=args.eval_split, n_eval=args.n_eval, report_train_split=args.report_train_split,
        report_n_train=args.report_n_train, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, threads=args.threads,
        device=args.device)


def cmd_search(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    if settings.train_split != "train" and not settings.exclude_eval_seeds:
        import sys
        print(f"note: searching on the '{settings.train_split}' split; if you report on it too, pass "
              "--exclude-eval-of <the reported seeds> so no validation example is one you report on",
              file=sys.stderr)
    if args.out:
        out = Path(args.out)
    else:
        from sparsefit.paths import models_dir
        out = models_dir() / "search" / f"{settings.dataset}-{Path(settings.model).name}"
    ranked = run_search(settings, out, progress=not args.quiet)
    print(format_ranked(ranked))
    print(f"\nranked by rung reached, then validation label accuracy (teacher-forced, exact for greedy answers) at "
          f"the best checkpoint, then validation loss; 'gen accuracy' and nBERTScore: generated answers at the last "
          f"rung's end; seconds: all of a candidate's trials, every rung (validation episodes from the '{settings.train_split}' split only)\ntable: {out / TABLE_FILE}\nbest: {out / BEST_FILE}  "
          f"(--method {ranked[0]['method']} --method-option preset={out / BEST_FILE})")


def register_cli(subparsers: Any) -> None:
    p = subparsers.add_parser("search", help="find the parameter subset and lr to fine-tune (successive halving)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--path", dest="data_path", help="dataset folder or file")
    p.add_argument("--train-split", default="train", help="validation episodes are drawn from this split only")
    p.add_argument("--model", default="default")
    p.add_argument("--budget", default="5%", help="largest trainable share, e.g. 5%% or 0.05 (default 5%%)")
    p.add_argument("--lrs", default="3e-4,1e-3", help="learning rates to try (comma list)")
    p.add_argument("--rungs", default="10:1,30:2,50:2",
                   help="steps:episodes per successive-halving rung (each rung on fresh validation episodes)")
    p.add_argument("--keep", type=float, default=1 / 5, help="share of candidates kept after each rung (default 1/5)")
    p.add_argument("--check-every", type=int, default=20,
                   help="score a teacher-forced checkpoint every N steps; the best one sets the preset's steps")
    p.add_argument("--components", help="';'-separated component specs to try instead of the built-in list")
    p.add_argument("--all-specs", action="store_true",
                   help="also try each spec without the norms when its ',ln' variant is a candidate")
    p.add_argument("--no-fish", action="store_true", help="leave out Fisher-mask candidates")
    p.add_argument("--n-train", type=int, help="shots per validation episode (default: the dataset's FEB setting)")
    p.add_argument("--n-val", type=int, default=48, help="validation examples per episode (default 48)")
    p.add_argument("--validation-seeds", help="comma list (default: the last FEB seeds)")
    p.add_argument("--exclude-eval-of", metavar="SEEDS",
                   help="seeds of the episodes you will report: their evaluation examples are removed from the "
                        "search pool (needed when you search and report on the same split)")
    p.add_argument("--eval-split", help="the reported runs' eval split, for --exclude-eval-of (default: train split)")
    p.add_argument("--n-eval", type=int, help="the reported runs' eval size, for --exclude-eval-of (default: FEB's)")
    p.add_argument("--report-train-split", help="the reported runs' train split, for --exclude-eval-of (their shots "
                                                "are drawn first and move the eval sample; default: --train-split)")
    p.add_argument("--report-n-train", type=int,
                   help="the reported runs' shots, for --exclude-eval-of (default: FEB's, not --n-train)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--out", help="search folder (default models/search/<dataset>-<model>)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_search)
