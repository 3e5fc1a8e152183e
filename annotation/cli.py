"""Command line for studies: `python -m annotation study create|list`, `annotators add`, plus the analysis
commands (`analyze`, `export`, `import-ratings`) registered by annotation/analysis_cli.py when present.

Errors print one line naming the file, line and field, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from annotation import admin
from annotation.errors import AnnotationError
from annotation.store import Store, StudySettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m annotation", description="SparseFit human-evaluation studies")
    commands = parser.add_subparsers(dest="command", required=True)

    study = commands.add_parser("study", help="create or list studies").add_subparsers(dest="action", required=True)
    create = study.add_parser("create", help="create a study from a predictions file")
    create.add_argument("--db", required=True, help="study database (SQLite), created if missing")
    create.add_argument("--predictions", required=True, help="predictions JSONL file")
    create.add_argument("--preset", default="feb", help="built-in preset name (feb, evil) or a preset JSON file")
    create.add_argument("--per-label", type=int, default=None,
                        help="items per gold label (0 = all; preset default 2)")
    correct = create.add_mutually_exclusive_group()
    correct.add_argument("--only-correct", dest="only_correct", action="store_true", default=None,
                         help="only correctly predicted records (the protocol's default)")
    correct.add_argument("--all", dest="only_correct", action="store_false", help="include wrong predictions")
    create.add_argument("--annotators-per-item", type=int, default=None, help="target annotators per item (default 3)")
    create.add_argument("--items-per-page", type=int, default=None, help="items per annotator (default 10)")
    create.add_argument("--abandon-minutes", type=int, default=30, help="minutes before an open item returns to the pool")
    create.add_argument("--seed", type=int, default=0, help="selection seed")
    create.add_argument("--name", default=None, help="study name (default: the predictions file name)")
    create.add_argument("--max-signups", type=int, default=None,
                        help="cap on open (Prolific) sign-ups (default: twice the annotators the study needs; "
                             "0 = no cap)")
    create.add_argument("--max-field-chars", type=int, default=None,
                        help="longest text accepted in a predictions field (default 20000)")
    create.set_defaults(run=_study_create)
    cap = study.add_parser("set-max-signups", help="change a study's cap on open (Prolific) sign-ups")
    cap.add_argument("--db", required=True)
    cap.add_argument("--study", required=True, help="study id (see `study list`)")
    cap.add_argument("max_signups", type=int, help="the new cap (0 = no cap); who already signed up keeps access")
    cap.set_defaults(run=_study_set_max_signups)
    listing = study.add_parser("list", help="list the studies in a database")
    listing.add_argument("--db", required=True)
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(run=_study_list)

    annotators = commands.add_parser("annotators", help="issue annotator links").add_subparsers(
        dest="action", required=True)
    add = annotators.add_parser("add", help="add annotators and print their links")
    add.add_argument("--db", required=True)
    add.add_argument("--study", required=True, help="study id (see `study list`)")
    add.add_argument("--count", type=int, required=True)
    add.add_argument("--base-url", default="http://127.0.0.1:7860", help="the app's public URL")
    add.set_defaults(run=_annotators_add)
    progress = annotators.add_parser("progress", help="progress per annotator")
    progress.add_argument("--db", required=True)
    progress.add_argument("--study", required=True)
    progress.set_defaults(run=_annotators_progress)

    from annotation.analysis_cli import register_cli
    register_cli(commands)  # analyze, export, import-ratings
    return parser


def _study_create(args: argparse.Namespace) -> None:
    store = Store(args.db)
    admin.check_new_study_name(store, args.name)  # a taken --name is an error, not a silent "-1a2b" suffix
    study_id = store.create_study(args.predictions, StudySettings(
        preset=args.preset, items_per_page=args.items_per_page, annotators_per_item=args.annotators_per_item,
        only_correct=args.only_correct, per_label=args.per_label, seed=args.seed, name=args.name,
        abandon_minutes=args.abandon_minutes, max_signups=args.max_signups, max_field_chars=args.max_field_chars))
    study = store.study(study_id)
    print(f"created study {study_id}: {store.study_progress(study_id)['items']} items, preset "
          f"{study['preset']}, {study['annotators_per_item']} annotators per item, "
          f"{study['items_per_page']} items per annotator")
    if study["max_signups"]:
        print(f"open (Prolific) sign-ups capped at {study['max_signups']} (change: study set-max-signups)")
    short = study["selection"].get("labels_short_of_per_label")
    if short:
        print(f"note: fewer eligible records than --per-label for {short}")


def _study_set_max_signups(args: argparse.Namespace) -> None:
    store = Store(args.db)
    store.set_max_signups(args.study, args.max_signups)
    print(f"study {args.study}: " + (f"open sign-ups capped at {args.max_signups}" if args.max_signups
                                     else "no cap on open sign-ups"))


def _study_list(args: argparse.Namespace) -> None:
    studies = Store(args.db).studies()
    if args.json:
        print(json.dumps(studies, indent=2))
        return
    if not studies:
        print(f"no studies in {args.db}")
        return
    print(f"{'id':<24} {'status':<8} {'preset':<8} {'items':>5} {'annotators':>10} {'annotations':>13}  created")
    for s in studies:
        done = f"{s['annotations_submitted']}/{s['items'] * s['annotators_per_item']}"  # submitted / needed
        print(f"{s['id']:<24} {s['status']:<8} {s['preset']:<8} {s['items']:>5} {s['annotators']:>10} {done:>13}  "
              f"{s['created_at']}")


def _annotators_add(args: argparse.Namespace) -> None:
    store = Store(args.db)
    made = store.add_annotators(args.study, args.count)
    for annotator in made:
        print(admin.annotator_link(args.base_url, annotator.token))
    key = store.study(args.study)["entry_key"]
    print(f"Prolific study URL (keep it private; it lets anyone in): "
          f"{admin.prolific_link(args.base_url, args.study, key)}", file=sys.stderr)


def _annotators_progress(args: argparse.Namespace) -> None:
    store = Store(args.db)
    print(json.dumps({"study": store.study_progress(args.study), "annotators": store.annotator_progress(args.study)},
                     indent=2))


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except AnnotationError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
