"""SparseFit web app: try a model (Demo) and rate explanations (Annotate, Admin, Results).

    python app.py [--db models/studies.db] [--host 127.0.0.1] [--port 7860] [--admin-password PW]

The admin password is stored hashed in the database. --admin-password (or the SPARSEFIT_ADMIN_PASSWORD
environment variable) sets or replaces it; without either, the stored one is kept, and a new database gets a
generated password, printed once. If the quickstart predictions exist, the "quickstart" study is
created from them on first start. Torch is not imported at startup: the demo loads its model on first use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

STARTED = time.perf_counter()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="study database (SQLite) path (default: models/studies.db)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 = all)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--admin-password", default=None,
                        help="set (replace) the admin password (default: $SPARSEFIT_ADMIN_PASSWORD, else keep the "
                             "stored one; a new database gets a generated one, printed once)")
    parser.add_argument("--models-dir", default=None,
                        help="where fine-tuned runs are (default: $SPARSEFIT_MODELS_DIR, else models/)")
    parser.add_argument("--quickstart-predictions", default=None,
                        help="predictions file of the demo study (default: models/quickstart/predictions.jsonl)")
    parser.add_argument("--base-url", default="", help="public URL used in annotator links (default: this server)")
    parser.add_argument("--build-quickstart", action="store_true",
                        help="if the quickstart predictions are missing, build them first (default model, a few "
                             "minutes, once) so the demo and the quickstart study are ready when the app opens")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from annotation import admin
    from annotation.errors import AnnotationError
    from annotation.store import Store
    from annotation.ui import build_app, launch_options

    models_dir = Path(args.models_dir) if args.models_dir else admin.default_models_dir()
    args.db = args.db or str(models_dir / "studies.db")
    args.quickstart_predictions = args.quickstart_predictions or str(models_dir / "quickstart" / "predictions.jsonl")
    store = Store(args.db)
    # the admin secret lives hashed in the database: a given password replaces it, else the stored one holds
    generated = admin.ensure_admin_secret(
        store, args.admin_password or os.environ.get("SPARSEFIT_ADMIN_PASSWORD") or None)
    if generated:
        print(f"Admin password (generated once, shown only now; stored hashed in {args.db}; change it in the "
              f"Admin tab): {generated}", flush=True)
    try:
        study_id = admin.ensure_quickstart_study(store, args.quickstart_predictions)
    except AnnotationError as err:
        study_id = None
        print(f"Quickstart study not created: {err}", flush=True)
    if study_id is None and args.build_quickstart:
        os.environ["SPARSEFIT_MODELS_DIR"] = str(models_dir)  # the backend writes where the app looks
        print("Building the quickstart predictions (once; a few minutes on a CPU)...", flush=True)
        try:
            study_id = admin.build_quickstart(store, progress=lambda fraction, text: print(
                f"  [{fraction:4.0%}] {text}", flush=True))
        except AnnotationError as err:
            print(f"Quickstart not built: {err}", flush=True)
    if study_id is None:
        print(f"No quickstart predictions at {args.quickstart_predictions}: build them in the Admin tab "
              "(or start with --build-quickstart).", flush=True)
    demo = build_app(args.db, None, models_dir=models_dir,
                     quickstart_predictions=args.quickstart_predictions, base_url=args.base_url)
    demo.queue(default_concurrency_limit=8)
    _, local_url, _ = demo.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=True,
                                  quiet=True, **launch_options())
    base = args.base_url or local_url
    if study_id:
        link = admin.unused_annotator_link(store, study_id, base)  # never one somebody already started
        print(f"Study {study_id!r} is ready (more links: Admin tab → Annotator links); an unused annotator "
              f"link to try it: {link}", flush=True)
    print(f"SparseFit app running on {local_url} (database {args.db}); started in "
          f"{time.perf_counter() - STARTED:.1f}s; torch imported: {'torch' in sys.modules}", flush=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        demo.close()


if __name__ == "__main__":
    main()
