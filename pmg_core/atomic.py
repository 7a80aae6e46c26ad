"""Write files and folders so that readers never see half of them (temp path + rename).

Every writer in the project goes through :func:`atomic_path`: the content is written
to a private temporary path beside the target, renamed over it on success, and
removed on any failure (an exception, a Ctrl-C), so no ``.tmp`` is ever left behind.
Files written by other libraries (``safetensors.save_file``, ``PIL.Image.save``,
``save_pretrained``) use the context manager directly; bytes and text use the helpers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "copy_atomic", "write_bytes_atomic", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it becomes ``path``.

    The caller writes a file, or a folder, at the yielded path. A file replaces any
    old one. A folder replaces nothing: if ``path`` already exists when the rename
    happens (another process finished first), that one is kept and ours discarded.
    The temporary is removed whatever happens.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not created here (mkstemp would make it 0600): the writer creates it with the usual mode.
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        if temporary.is_dir():
            try:
                temporary.rename(path)
            except OSError:
                if not path.exists():  # not a concurrent winner: a real failure
                    raise
        else:
            os.replace(temporary, path)
    finally:
        if temporary.is_dir() and not temporary.is_symlink():
            shutil.rmtree(temporary, ignore_errors=True)
        else:
            temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (parent folders are created)."""
    write_bytes_atomic(path, text.encode("utf-8"))


def copy_atomic(source: Path | str, path: Path | str, link: bool = False) -> None:
    """Copy ``source`` to ``path`` atomically; ``link`` hard-links instead where the file system allows."""
    with atomic_path(path) as temporary:
        if link:
            try:
                os.link(source, temporary)
                return
            except OSError:
                pass
        shutil.copyfile(source, temporary)
