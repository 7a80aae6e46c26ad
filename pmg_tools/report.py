"""A tool's report on stdout: what a shell pipes on or a parent process parses. Logging goes to stderr."""

from __future__ import annotations

import sys


def emit(text: str) -> None:
    """Write ``text`` and a newline to stdout, flushed (a parent may read it before this process ends)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
