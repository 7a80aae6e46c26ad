"""The checkout's ``./pmg``: the installed ``pmg`` plus what needs the clone (``serve``, ``demo``).

Without ``--checkpoint``, ``generate`` uses the tiny random pipeline from
:mod:`pmg_tools.tiny_models` (mechanics only: its images are noise).
"""

from __future__ import annotations

import sys

from pmg_core.cli import LIBRARY_COMMANDS
from pmg_core.cli import __doc__ as pmg_doc
from pmg_core.cli_common import build_parser, run

from . import demo, server


def _tiny_pipeline(seed: int):
    from .tiny_models.diffusion import tiny_sd_pipeline

    return tiny_sd_pipeline(seed=seed)


def main(argv: list[str] | None = None) -> int:
    """Run ``./pmg ARGV``."""
    parser = build_parser((*LIBRARY_COMMANDS, server.register, demo.register), description=pmg_doc.splitlines()[0])
    parser.set_defaults(fallback_pipeline=_tiny_pipeline)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
