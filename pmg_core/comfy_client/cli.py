"""``pmg queue``: one prompt per user on a ComfyUI server (or several, through Ray), through the batch client.

One ``--url`` without ``--ray-address``: :func:`.batch.queue_users`, no Ray. Several
``--url`` (or any ``--ray-address``): :func:`.distributed.queue_users_on_servers`, one Ray
actor per server. Either way each prompt id is journaled beside ``--out``
(``<out>.journal.jsonl``) before it is queued, so a killed run resumes without running a user twice.

``pmg_core.cli`` calls :func:`register`; ``python -m pmg_core.comfy_client.cli queue ...``
is the same as ``pmg queue ...``. (``pmg serve``, which starts a ComfyUI, is checkout
tooling: ``pmg_tools.server``.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from functools import partial
from pathlib import Path

from ..cli_common import build_parser, run, write_line
from ..errors import PMGError
from ..progress import stderr_bar, tqdm_progress

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    """Add ``queue`` to an ``argparse`` sub-parser set."""
    queue = subparsers.add_parser("queue", help="queue an API workflow once per user on a ComfyUI server")
    queue.add_argument("workflow", type=Path, help="API-format workflow JSON (File > Export (API) in ComfyUI)")
    source = queue.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", type=Path,
                        help="a local history file with the users: uploaded into the server's input/pmg-<content hash>/ "
                             "together with the images it names by relative path")
    source.add_argument("--server-history", metavar="NAME",
                        help="a history file already in the server's input folder, e.g. pmg_stickers/history.jsonl")
    queue.add_argument("--users", default="all", help="comma-separated user ids, or 'all' (default)")
    queue.add_argument("--url", dest="urls", action="append", default=None, metavar="URL",
                       help="a ComfyUI server (default http://127.0.0.1:8188); repeat it to spread the users over "
                            "several servers through Ray (pip install ray)")
    queue.add_argument("--ray-address", default=None, metavar="ADDRESS",
                       help="run through Ray: 'local' (the default with several --url: a small Ray started in "
                            "this process), 'auto' (the cluster this machine joined with `ray start`) or "
                            "ray://HEAD:10001")
    queue.add_argument("--out", type=Path, required=True,
                       help="results JSONL (appended; finished users are skipped); each prompt id is journaled "
                            "beforehand in <out name>.journal.jsonl beside it, so a killed run resumes without "
                            "running a user twice")
    queue.add_argument("--concurrency", type=int, default=2,
                       help="prompts of this run in each server's ComfyUI queue at once")
    queue.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                       help="override a node input in every prompt (VALUE is JSON if it parses, else a string)")
    queue.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for one user")
    queue.add_argument("--prefetch", metavar="SERVER_CACHE_DIR", type=Path,
                       help="first extract every user's keywords in LLM batches into this folder, the server's "
                            "<ComfyUI user dir>/pmg_cache (needs --history and the server's files on this machine)")
    queue.add_argument("--llm", type=Path,
                       help="with --prefetch: the workflow's LLM file or folder (default: SmolLM2-135M-Instruct)")
    queue.add_argument("--batch-size", type=int, default=16, help="with --prefetch: users per LLM batch")
    queue.add_argument("--model-cache-dir", type=Path, help="with --prefetch: where a .gguf LLM is converted")
    queue.set_defaults(run=run_queue)


def run_queue(args: argparse.Namespace) -> int:
    """pmg queue: one prompt per user through the batch client; exit 1 if any user failed."""
    from .batch import BatchRequest, parse_overrides, run_batch
    from .client import ComfyClient
    from .journal import PromptJournal

    try:
        workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PMGError(f"Cannot read the workflow {args.workflow}: {exc}. Pass an API-format JSON file.") from exc
    users = None if args.users.strip().lower() == "all" else [u.strip() for u in args.users.split(",") if u.strip()]
    urls = args.urls or ["http://127.0.0.1:8188"]
    distributed = len(urls) > 1 or args.ray_address is not None
    if args.prefetch is not None:
        if distributed:
            raise PMGError("--prefetch fills one server's keyword cache; with several servers run `pmg keywords "
                           "--cache-dir` into each server's pmg_cache, or queue without --prefetch.")
        _prefetch(args, workflow, users)
    with stderr_bar("pmg queue", "user") as bar:
        request = BatchRequest(
            workflow, args.out, history_file=args.history, server_history=args.server_history, users=users,
            concurrency=args.concurrency, substitutions=parse_overrides(args.overrides), timeout=args.timeout,
            progress=tqdm_progress(bar), journal=PromptJournal.beside(args.out),
        )
        if distributed:
            from .distributed import run_batch_on_servers

            summary = run_batch_on_servers(urls, request, ray_address=args.ray_address)
        else:
            summary = run_batch(ComfyClient(urls[0]), request, on_event=partial(_show_event, bar))
    write_line(json.dumps(summary.to_dict()))  # one line: scripts read the last line of stdout
    return 1 if summary.failed else 0


def _prefetch(args: argparse.Namespace, workflow: dict, users: list[str] | None) -> None:
    """``--prefetch``: warm the server's keyword cache in LLM batches before queueing."""
    from ..assets import smollm2_gguf
    from ..llm import open_llm
    from ..prefetch import prefetch_for_workflow
    from .batch import parse_overrides

    if args.history is None:
        raise PMGError("--prefetch reads the users' histories locally: pass --history FILE, not --server-history.")
    llm = open_llm(args.llm or smollm2_gguf(), cache_dir=args.model_cache_dir)
    with stderr_bar("pmg keywords", "user") as bar:
        summary = prefetch_for_workflow(workflow, args.history, users, args.prefetch, llm,
                                        batch_size=args.batch_size, overrides=parse_overrides(args.overrides),
                                        progress=tqdm_progress(bar))
    log.info("Keyword prefetch: %s", summary.to_dict())


def _show_event(bar, user: str, event: dict) -> None:
    """What runs now (from ComfyUI's /ws), as the bar's postfix."""
    data = event.get("data") or {}
    if event["type"] == "progress":
        bar.set_postfix_str(f"{user}: node {data.get('node')} {data.get('value')}/{data.get('max')}")
    elif event["type"] == "executing" and data.get("node") is not None:
        bar.set_postfix_str(f"{user}: node {data['node']}")


def main(argv: list[str] | None = None) -> int:
    """``python -m pmg_core.comfy_client.cli queue ...``: ``pmg queue ...``."""
    return run(build_parser([register]), argv)


if __name__ == "__main__":
    sys.exit(main())
