"""`python -m sparsefit <command>`: data, params, train, predict, evaluate, run, quickstart (+ experiments).

A run is described by a config file (JSON or TOML, see `sparsefit.config.RunConfig`); the common settings
also have flags, which override the file. Errors print one line (`error: ...`) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from sparsefit.errors import SparseFitError


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _parse_option(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise SparseFitError(f"method option {text!r} must look like key=value", field="--method-option")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by train/run/episodes; each overrides the same setting of --config."""
    parser.add_argument("--config", help="run config file (JSON or TOML) with RunConfig fields")
    parser.add_argument("--dataset", help="esnli, comve, ecqa, sbic, sample-nli or a user task name")
    parser.add_argument("--path", dest="data_path", help="dataset folder or file")
    parser.add_argument("--train-split")
    parser.add_argument("--eval-split")
    parser.add_argument("--model", help="default (Gemma-3-270M), tiny-t5, tiny-causal, hub id or folder")
    parser.add_argument("--method", help="sparsefit, full, lora, adalora, ia3, ln_tuning, icl, dsee, mask, fish")
    parser.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                        help="method option, e.g. components=self.k,ln or r=16 (repeatable)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--n-train", type=int, help="training shots (default: the dataset's FEB setting)")
    parser.add_argument("--n-eval", type=int, help="evaluation examples (default: FEB's, e.g. 348)")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--name")
    add_device_arguments(parser, compile=True)
    parser.add_argument("--eval-batch-size", type=int, help="generation batch (default 32 on CPU, 128 on CUDA)")


def add_device_arguments(parser: argparse.ArgumentParser, *, compile: bool = False) -> None:
    """--device / --dtype (and --compile for commands that train); checked by sparsefit.device."""
    parser.add_argument("--device", help="auto (default: CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", help="float32 (default) or bfloat16 (weights and compute)")
    if compile:
        parser.add_argument("--compile", action="store_true", default=None,
                            help="torch.compile the training forward (falls back to eager with a message)")


def config_from_args(args: argparse.Namespace):
    from sparsefit.config import RunConfig, load_run_config
    config = load_run_config(args.config) if getattr(args, "config", None) else RunConfig()
    for key in ("dataset", "data_path", "train_split", "eval_split", "model", "method", "seed", "n_train",
                "n_eval", "name", "device", "dtype", "compile", "eval_batch_size"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(config, key, value)
    for key in ("lr", "steps", "batch_size", "threads"):
        value = getattr(args, key, None)
        if value is not None:
            setattr(config.train, key, value)
    if getattr(args, "method_option", None):
        config.method_options = {**config.method_options, **dict(_parse_option(o) for o in args.method_option)}
    from sparsefit.backbones import resolve_placement
    resolve_placement(config.device, config.dtype)  # one line, exit 2, before any folder is made
    return config


def default_out_dir(config) -> Path:
    from sparsefit.paths import models_dir
    name = config.name or f"{config.dataset}-{config.method}-{Path(config.model).name}-{config.seed}"
    return models_dir() / "runs" / name


# --- commands -------------------------------------------------------------------------------------------

def cmd_data(args: argparse.Namespace) -> None:
    from sparsefit.data import dataset_stats, load_examples_with_report
    from sparsefit.prompts import render_example
    examples, report = load_examples_with_report(args.dataset, args.path, args.split)
    if args.data_command == "stats":
        stats = {**dataset_stats(examples), "source": report.path, "left_out": report.skipped}
        if args.json:
            _print_json(stats)
        else:
            print(f"{args.dataset}/{args.split}: {stats['examples']} examples ({report.path})")
            for label, count in stats["labels"].items():
                print(f"  {label:<20} {count}")
            if report.skipped:
                print("  left out: " + ", ".join(f"{n} {why}" for why, n in report.skipped.items()))
        return
    if not 0 <= args.index < len(examples):
        raise SparseFitError(f"index {args.index} out of range: the split has {len(examples)} examples",
                             field="--index")
    shown = render_example(examples[args.index])
    if args.json:
        _print_json(shown)
    else:
        print(f"id:     {shown['id']}\ninput:  {shown['input']}\ntarget: {shown['target']}")


def cmd_params(args: argparse.Namespace) -> None:
    from sparsefit.backbones import meta_model
    from sparsefit.methods import count_parameters, get_method
    model, arch = meta_model(args.model)
    total = count_parameters(model)[1]
    options = dict(_parse_option(o) for o in args.method_option)
    method = get_method(args.method, **options)
    model = method.prepare(model, arch)
    trainable = method.trainable_count(model)
    result = {"model": args.model, "method": args.method, "selection": method.selection(), "total": total,
              "trainable": trainable, "percent": round(100.0 * trainable / total, 4)}
    if args.json:
        _print_json(result)
    else:
        print(f"{args.method} on {args.model}: {trainable:,} of {total:,} parameters trainable "
              f"({result['percent']:.2f}%)")


def cmd_run(args: argparse.Namespace) -> None:
    from sparsefit.runner import run_episode
    config = config_from_args(args)
    out = Path(args.out) if args.out else default_out_dir(config)
    results = run_episode(config, out, evaluate=args.command == "run")
    if args.command == "train":
        print(f"trained {config.method}: {results['trainable_percent']:.2f}% of parameters, "
              f"loss {results['first_loss']:.3f} -> {results['last_loss']:.3f}; saved to {out}")
        return
    _print_summary(results, out)


def _print_summary(results: dict, out: Path) -> None:
    def fmt(value):
        return "n/a" if value is None else f"{value:.1f}"
    print(f"{results['method']} on {results['dataset']} (seed {results['seed']}, {results['n_train']} train, "
          f"{results['n_eval']} eval): accuracy {fmt(results['accuracy'])}, nBERTScore {fmt(results['nbertscore'])}, "
          f"BERTScore all/correct {fmt(results['bertscore_all'])}/{fmt(results['bertscore_correct'])}, "
          f"BLEU {fmt(results.get('bleu'))}, METEOR {fmt(results.get('meteor'))}; "
          f"trainable {results['trainable_percent']:.2f}%")
    for note in results.get("notes", []):
        print(f"note: {note}")
    print(f"files: {out}/predictions.jsonl, {out}/results.json")


def cmd_predict(args: argparse.Namespace) -> None:
    from sparsefit.runner import predict_to_file
    out = predict_to_file(args.run, args.dataset, args.path, args.split, args.out, n=args.n, seed=args.seed,
                          score_outputs=not args.no_score, device=args.device or "auto", dtype=args.dtype,
                          eval_batch_size=args.eval_batch_size)
    print(f"predictions written to {out}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from sparsefit.runner import evaluate_file
    summary = evaluate_file(args.predictions, args.out, scorer_model=args.scorer_model,
                            scorer_layers=args.scorer_layers, device=args.device or "auto")
    if args.json:
        _print_json(summary)
    else:
        for key in ("n", "accuracy", "nbertscore", "bertscore_all", "bertscore_correct", "bleu", "meteor"):
            value = summary.get(key)
            print(f"{key:<18} {'n/a' if value is None else (f'{value:.2f}' if isinstance(value, float) else value)}")
        for metric, scorer in summary.get("scorers", {}).items():
            print(f"scorer {metric}: {scorer}")
        for note in summary.get("notes", []):
            print(f"note: {note}")


def cmd_quickstart(args: argparse.Namespace) -> None:
    from sparsefit.inference import build_quickstart
    path = build_quickstart(out_dir=args.out, device=args.device or "auto", dtype=args.dtype or "float32",
                            compile=bool(args.compile))
    results = json.loads((path.parent / "results.json").read_text())
    _print_summary(results, path.parent)
    print("next: python app.py  (demo + a ready annotation study built from these predictions)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sparsefit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect a dataset").add_subparsers(dest="data_command", required=True)
    for name, helptext in (("stats", "example and label counts"), ("show", "rendered input and target")):
        p = data.add_parser(name, help=helptext)
        p.add_argument("--dataset", required=True)
        p.add_argument("--path", help="dataset folder or file (not needed for sample-nli)")
        p.add_argument("--split", default="dev")
        p.add_argument("--json", action="store_true")
        if name == "show":
            p.add_argument("--index", type=int, default=0)
        p.set_defaults(func=cmd_data)

    p = sub.add_parser("params", help="count total/trainable parameters (config only, meta device)")
    p.add_argument("--model", required=True, help="folder with config.json, hub id, tiny-t5, default")
    p.add_argument("--method", default="sparsefit")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    for name, helptext in (("train", "fine-tune on an episode's shots and save the delta"),
                           ("run", "one episode: train, predict, evaluate, write predictions + results")):
        p = sub.add_parser(name, help=helptext)
        add_run_arguments(p)
        p.add_argument("--out", help="run folder (default models/runs/<name>)")
        p.set_defaults(func=cmd_run)

    p = sub.add_parser("predict", help="generate label + explanation for a dataset split")
    p.add_argument("--run", required=True, help="run folder (delta + manifest), or a model id for the base model")
    p.add_argument("--dataset", required=True)
    p.add_argument("--path")
    p.add_argument("--split", default="dev")
    p.add_argument("--n", type=int, help="only the first N examples")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", required=True, help="predictions JSONL to write")
    p.add_argument("--no-score", action="store_true", help="skip BERTScore/BLEU/METEOR")
    add_device_arguments(p)
    p.add_argument("--eval-batch-size", type=int, help="generation batch (default 32 on CPU, 128 on CUDA)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="score a predictions file (any model's) and print the metrics")
    p.add_argument("--predictions", required=True)
    p.add_argument("--out", help="write the scored predictions here (default: alongside, *.scored.jsonl)")
    p.add_argument("--scorer-model", default=None, help="BERTScore model (default all-MiniLM-L6-v2 offline)")
    p.add_argument("--scorer-layers", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", help="where BERTScore runs: auto (default: CUDA when available), cpu, cuda[:N]")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("quickstart", help="the embedded default end to end (Gemma-3-270M, sample task)")
    p.add_argument("--out", help="folder (default models/quickstart)")
    add_device_arguments(p, compile=True)
    p.set_defaults(func=cmd_quickstart)

    from sparsefit.experiments import register_cli
    register_cli(sub)  # episodes, grid, nm-export
    from sparsefit.search import register_cli as register_search
    register_search(sub)  # search
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except SparseFitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
