"""The pmg command: PMG from the command line, JSON on stdout.

Every subcommand prints one JSON document to stdout, logs and progress bars to
stderr, and exits 1 with a one-line ``error: ...`` on bad input. This module only
assembles: each subcommand module registers its own (``register(subparsers)``).
``serve`` and ``demo`` run ComfyUI from a clone of the repository (``./pmg``, the
``pmg_tools`` package); the installed package names them and says so.
"""

from __future__ import annotations

import argparse
import sys

from . import commands, example_data
from .cli_common import Registrar, build_parser, run
from .comfy_client import cli as comfy_cli
from .errors import InvalidSettingError
from .evaluation import cli as evaluation_cli
from .sticker_model import cli as sticker_model_cli
from .training import cli as training_cli

LIBRARY_COMMANDS: tuple[Registrar, ...] = (
    commands.register, comfy_cli.register, training_cli.register, sticker_model_cli.register, evaluation_cli.register,
    example_data.register,
)
CHECKOUT_COMMANDS = {
    "serve": "run a local ComfyUI with this pack and the offline default models (from a clone)",
    "demo": "run the example workflows for a few users and write a results folder (from a clone)",
}


def register_checkout_placeholders(subparsers) -> None:
    """``serve`` and ``demo`` as one-line errors: they need the repository's checkout tooling."""
    for name, help_text in CHECKOUT_COMMANDS.items():
        # No option prefix: whatever follows (--port 8188, --help) is taken, and answered with the error.
        placeholder = subparsers.add_parser(name, help=help_text, add_help=False, prefix_chars="\0")
        placeholder.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
        placeholder.set_defaults(run=_needs_checkout)


def _needs_checkout(args: argparse.Namespace) -> int:
    raise InvalidSettingError(
        f"pmg {args.command} needs a clone of the repository (its ComfyUI launcher, workflows and tiny models "
        f"are not in the installed package): run ./pmg {args.command} from the clone."
    )


def main(argv: list[str] | None = None) -> int:
    """Run ``pmg ARGV`` with the installed package's subcommands."""
    parser = build_parser((*LIBRARY_COMMANDS, register_checkout_placeholders), description=__doc__.splitlines()[0])
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
