"""Command-line entry points of the analysis: `analyze`, `export`, `import-ratings`.

`python -m annotation` dispatches here through `register_cli(subparsers)`; this module also runs alone:
    python -m annotation.analysis_cli analyze --db study.db --study s1 [--json]
Each subcommand sets `run(args)` (raises AnnotationError; annotation/cli.py prints it and exits 2) and
`func(args) -> int` (the same, printing the error itself and returning the exit status), used by `main` here.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from typing import Callable

from annotation.errors import AnnotationError

MIN_BOOTSTRAP = 100  # fewer resamples make a percentile interval mostly noise (--bootstrap 1: zero width)
TABLE_FORMATS = ("text", "markdown", "latex", "json")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add the analyze, export and import-ratings subcommands to an argparse subparsers object."""
    analyze = subparsers.add_parser("analyze", help="print a study's scores, agreement, QC and correlations")
    _add_study_args(analyze)
    analyze.add_argument("--json", action="store_true", help="print the report as JSON (no NaN)")
    analyze.add_argument("--table", choices=TABLE_FORMATS, default=None,
                         help="print only the FEB-Table-3-shaped table (dataset x model x method: model and gold "
                              "explanation scores, CIs, items, model-vs-gold p) as text, markdown, latex or json")
    _add_qc_args(analyze)
    analyze.set_defaults(func=_guarded(cmd_analyze), run=cmd_analyze)

    export = subparsers.add_parser("export", help="write the tidy ratings table (one row per item x annotator x "
                                                  "question) with automatic metrics and the protocol")
    _add_study_args(export)
    export.add_argument("--format", required=True, choices=["csv", "jsonl", "parquet"])
    export.add_argument("--out", required=True, help="output file; the protocol goes to <out>.protocol.json")
    _add_qc_args(export)
    export.set_defaults(func=_guarded(cmd_export), run=cmd_export)

    imp = subparsers.add_parser("import-ratings", help="import ratings from a CSV (MTurk/Prolific); all or nothing")
    _add_study_args(imp)
    imp.add_argument("--file", required=True, help="CSV, JSONL or Parquet (by extension; an export of this tool "
                                                   "works) with item, annotator, [question], rating, [shortcomings], "
                                                   "[comment], [seconds], [gate_answer] ... columns")
    imp.set_defaults(func=_guarded(cmd_import), run=cmd_import)


def _add_study_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="study database (SQLite)")
    parser.add_argument("--study", required=True, help="study id")


def _add_qc_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-seconds", type=float, default=0.0,
                        help="drop item ratings done faster than this (0 = off, default)")
    parser.add_argument("--min-gold-acceptance", type=float, default=0.0,
                        help="drop annotators who rate fewer than this share of gold explanations yes/weak yes "
                             "(0-1; 0 = off, default)")
    parser.add_argument("--no-gate-filter", action="store_true",
                        help="keep ratings whose gate answer was wrong")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")


def _settings(args: argparse.Namespace):
    from annotation.analysis import QCSettings

    if not 0.0 <= args.min_gold_acceptance <= 1.0:
        raise AnnotationError("--min-gold-acceptance is a share between 0 and 1", field="min-gold-acceptance")
    if args.min_seconds < 0:
        raise AnnotationError("--min-seconds must be >= 0", field="min-seconds")
    if args.bootstrap < MIN_BOOTSTRAP:
        raise AnnotationError(f"--bootstrap {args.bootstrap} is too few resamples for a 95% interval or a p-value "
                              f"(use at least {MIN_BOOTSTRAP}; the default is 1000)", field="bootstrap")
    return QCSettings(min_seconds=args.min_seconds, min_gold_acceptance=args.min_gold_acceptance,
                      gate_filter=not args.no_gate_filter, n_boot=args.bootstrap, seed=args.seed)


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn user-facing errors into one line on stderr and exit status 2, never a traceback."""
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except AnnotationError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except sqlite3.DatabaseError as err:  # e.g. a file that stops being a database while read
            print(f"error: {getattr(args, 'db', '')}: database error ({err})", file=sys.stderr)
            return 2
    return run


def cmd_analyze(args: argparse.Namespace) -> int:
    from annotation.analysis import format_report, run_analysis

    settings = _settings(args)
    show = sys.stderr.isatty() and not args.json
    progress = (lambda fraction, desc: print(f"  {desc}...", file=sys.stderr)) if show else None
    report = run_analysis(args.db, args.study, settings, progress=progress).report
    if args.table:
        from annotation.analysis import format_feb_table

        print(format_feb_table(report, args.table))
    elif args.json:
        print(json.dumps(report, indent=2, allow_nan=False, ensure_ascii=False))
    else:
        print(format_report(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from annotation.export import export_study, sidecar_path

    out = export_study(args.db, args.study, args.format, args.out, _settings(args))
    print(f"wrote {out} (protocol: {sidecar_path(out)})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from annotation.importer import import_ratings

    summary = import_ratings(args.db, args.study, args.file)
    print(f"imported {summary.ratings_inserted} ratings from {summary.rows} rows ({summary.annotators_created} new "
          f"annotators, {summary.assignments_created} new assignments), origin {summary.origin}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotation.analysis_cli",
                                     description="Analyse, export and import study ratings.")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
