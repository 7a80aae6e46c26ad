"""Paths a user names, confined to the folder they may be read from; file fingerprints.

A ComfyUI server may be reachable by other people, and a history file names image
files: neither a node input nor a line of a history file may make the library read
outside the folder it was given (``..`` escapes, absolute paths, symlinks pointing
elsewhere). :func:`resolve_inside` is the one check every such path goes through.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .errors import MissingFileError, UnsafePathError

_CHUNK = 1 << 20  # 1 MiB: hashing multi-GB checkpoints never holds them in memory


def resolve_inside(root: Path | str, relative: str | Path) -> Path:
    """``root / relative`` with symlinks resolved, guaranteed to lie inside ``root``.

    ``relative`` may be absolute only if it points inside ``root``. The check is
    made on the fully resolved path, so a symlink inside ``root`` that points
    outside it is refused too. The file need not exist yet.

    Raises :class:`UnsafePathError` naming the allowed folder.
    """
    text = os.fspath(relative)
    if "\x00" in text:
        raise UnsafePathError(
            f"The path {text!r} contains a NUL byte; give a plain file name inside {root}."
        )
    allowed = Path(root).expanduser().resolve()
    candidate = Path(text)
    joined = candidate if candidate.is_absolute() else allowed / candidate
    try:
        resolved = joined.resolve()
    except (OSError, RuntimeError) as error:  # symlink loops, over-long names
        raise UnsafePathError(
            f"The path {text!r} cannot be resolved ({error}); give a plain file name inside {allowed}."
        ) from error
    if resolved != allowed and allowed not in resolved.parents:
        raise UnsafePathError(
            f"The path {text!r} points outside the allowed folder {allowed} "
            f"(it resolves to {resolved}); only files inside {allowed} may be used. "
            "Move or copy the file into that folder and name it relative to it."
        )
    return resolved


def sha256_file(path: Path | str, chunk_size: int = _CHUNK) -> str:
    """The SHA-256 hex digest of a file's bytes, read in chunks (for cache keys and fingerprints)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                digest.update(chunk)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        raise MissingFileError(
            f"Cannot read {path} to fingerprint it ({error.strerror or error}); "
            "check that the file exists and is readable."
        ) from error
    return digest.hexdigest()
