"""``pmg serve`` (run the embedded ComfyUI) and ``pmg queue`` (one prompt per user).

``pmg_core.cli`` calls :func:`register`; ``python -m pmg_core.comfy_client.cli serve|queue ...``
is the same as ``pmg serve|queue ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from functools import partial
from pathlib import Path

from ..errors import PMGError
from ..progress import stderr_bar, tqdm_progress
from .server import REPO_ROOT

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``serve`` and ``queue`` to an ``argparse`` sub-parser set."""
    serve = subparsers.add_parser("serve", help="run a local ComfyUI with this pack and the offline default models")
    serve.add_argument("--port", type=int, default=8188, help="port on 127.0.0.1 (default 8188; 0 = any free port)")
    serve.add_argument("--base", type=Path, default=REPO_ROOT / "comfy_base",
                       help="folder for models, custom_nodes, input, output, user (default: comfy_base/ in the repo)")
    serve.add_argument("--comfy-dir", type=Path, default=None, help="ComfyUI source folder (default .cache/comfyui)")
    serve.add_argument("--no-default-models", action="store_true",
                       help="do not install the tiny checkpoint, the default LLM, the scorer's tiny CLIP "
                            "and the example histories")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for start-up")
    serve.set_defaults(run=run_serve)

    queue = subparsers.add_parser("queue", help="queue an API workflow once per user on a ComfyUI server")
    queue.add_argument("workflow", type=Path, help="API-format workflow JSON (File > Export (API) in ComfyUI)")
    source = queue.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", type=Path,
                        help="a local history file with the users: uploaded into the server's input/pmg-<content hash>/ "
                             "together with the images it names by relative path")
    source.add_argument("--server-history", metavar="NAME",
                        help="a history file already in the server's input folder, e.g. pmg_stickers/history.jsonl")
    queue.add_argument("--users", default="all", help="comma-separated user ids, or 'all' (default)")
    queue.add_argument("--url", default="http://127.0.0.1:8188", help="the ComfyUI server")
    queue.add_argument("--out", type=Path, required=True, help="results JSONL (appended; finished users are skipped)")
    queue.add_argument("--concurrency", type=int, default=2, help="prompts of this run in ComfyUI's queue at once")
    queue.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                       help="override a node input in every prompt (VALUE is JSON if it parses, else a string)")
    queue.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for one user")
    queue.set_defaults(run=run_queue)


def run_serve(args: argparse.Namespace) -> int:
    """pmg serve: prepare the base folder, start ComfyUI, print its URL, run until killed."""
    from .server import EmbeddedComfyUI, free_port, install_default_models

    server = EmbeddedComfyUI(comfy_dir=args.comfy_dir, base_dir=args.base, port=args.port or free_port())
    server.prepare()
    if not args.no_default_models:
        install_default_models(server.base_dir, comfy_dir=args.comfy_dir)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: stopping ComfyUI", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start(timeout=args.timeout)
        print(server.url, flush=True)
        while not stop.is_set():
            if not server.is_running():
                log.error("ComfyUI exited on its own; the end of its log:\n%s", server.log_tail())
                return 1
            stop.wait(1.0)
    finally:
        server.stop()
    return 0


def run_queue(args: argparse.Namespace) -> int:
    """pmg queue: one prompt per user through the batch client; exit 1 if any user failed."""
    from .batch import parse_overrides, queue_users
    from .client import ComfyClient

    try:
        workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PMGError(f"Cannot read the workflow {args.workflow}: {exc}. Pass an API-format JSON file.") from exc
    users = None if args.users.strip().lower() == "all" else [u.strip() for u in args.users.split(",") if u.strip()]
    with stderr_bar("pmg queue", "user") as bar:
        summary = queue_users(
            ComfyClient(args.url), workflow, args.history, users, args.out,
            concurrency=args.concurrency, substitutions=parse_overrides(args.overrides),
            progress=tqdm_progress(bar), timeout=args.timeout, on_event=partial(_show_event, bar),
            server_history=args.server_history,
        )
    print(json.dumps(summary.to_dict()))  # one line: scripts read the last line of stdout
    return 1 if summary.failed else 0


def _show_event(bar, user: str, event: dict) -> None:
    """What runs now (from ComfyUI's /ws), as the bar's postfix."""
    data = event.get("data") or {}
    if event["type"] == "progress":
        bar.set_postfix_str(f"{user}: node {data.get('node')} {data.get('value')}/{data.get('max')}")
    elif event["type"] == "executing" and data.get("node") is not None:
        bar.set_postfix_str(f"{user}: node {data['node']}")


def main(argv: list[str] | None = None) -> int:
    """``python -m pmg_core.comfy_client.cli serve|queue ...``: runs ``pmg`` with these arguments."""
    from ..cli import main as pmg_main

    return pmg_main(argv)


if __name__ == "__main__":
    sys.exit(main())
