"""SparseFit web app: try a model (Demo) and rate explanations (Annotate, Admin, Results).

    python app.py [--db models/studies.db] [--host 127.0.0.1] [--port 7860] [--admin-password PW] [--no-demo]

The admin password is stored hashed in the database. --admin-password (or the SPARSEFIT_ADMIN_PASSWORD
environment variable) sets or replaces it; without either, the stored one is kept, and a new database gets a
generated password, printed once. If the quickstart predictions exist, the "quickstart" study is created from
them on first start. The server never imports torch: the demo's model lives in a worker process started on
first use, and `--build-quickstart` builds in another one while the app already serves (the page shows the
build's progress). Annotator calls also have a JSON API (annotation/server.py).
"""

from __future__ import annotations

import argparse
import os
import signal
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
                        help="if the quickstart predictions are missing, build them in the background (default "
                             "model, a few minutes, once); the app serves meanwhile and shows the progress")
    parser.add_argument("--no-demo", action="store_true",
                        help="leave out the Demo tab and its endpoints (a pure annotation server)")
    parser.add_argument("--device", default="auto", help="where the Demo's model and the quickstart build run: auto (CUDA when "
                        "available), cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="float32", help="the Demo model's precision: float32 or bfloat16")
    parser.add_argument("--max-upload", default=None,
                        help="largest file the Admin tab accepts, e.g. 200mb (default: annotation.server.MAX_UPLOAD)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from annotation import admin
    from annotation.errors import AnnotationError
    from annotation.store import Store
    from annotation.server import serve
    from annotation.ui import build_app, launch_options
    from annotation.workers import QuickstartBuild

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
    build = None
    if study_id is None and args.build_quickstart:
        build = QuickstartBuild(models_dir, on_done=lambda path: print(
            f"Quickstart study {admin.ensure_quickstart_study(store, path)!r} is ready.", flush=True),
            placement={"device": args.device, "dtype": args.dtype})
    elif study_id is None:
        print(f"No quickstart predictions at {args.quickstart_predictions}: build them in the Admin tab "
              "(or start with --build-quickstart).", flush=True)
    demo = build_app(args.db, None, models_dir=models_dir,
                     quickstart_predictions=args.quickstart_predictions, base_url=args.base_url,
                     with_demo=not args.no_demo, banner=build.banner if build else None,
                     demo_placement={"device": args.device, "dtype": args.dtype})
    demo.queue(default_concurrency_limit=8)
    upload = {"max_file_size": args.max_upload} if args.max_upload else {}  # else serve()'s default
    local_url = serve(demo, args.db, host=args.host, port=args.port, **upload,
                      **launch_options())
    if build:
        print("Building the quickstart predictions in the background (once; a few minutes on a CPU); "
              "the page shows the progress.", flush=True)
        build.start()
    base = args.base_url or local_url
    if study_id:
        link = admin.unused_annotator_link(store, study_id, base)  # never one somebody already started
        print(f"Study {study_id!r} is ready (more links: Admin tab → Annotator links); an unused annotator "
              f"link to try it: {link}", flush=True)
    print(f"SparseFit app running on {local_url} (database {args.db}); started in "
          f"{time.perf_counter() - STARTED:.1f}s; torch imported: {'torch' in sys.modules}", flush=True)
    # SIGTERM ends like Ctrl-C, so exit handlers stop the worker processes (demo model, quickstart build)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        demo.block_thread()
    except (KeyboardInterrupt, SystemExit):
        demo.close()


if __name__ == "__main__":
    main()
