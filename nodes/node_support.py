"""What every PMG node does the same way: check its inputs, fingerprint its files, hand results to ComfyUI.

One policy for each, so the nodes cannot disagree:

* **Validation** (``validate_inputs``): :func:`validation_result` runs the node's checks, which
  fail by raising. A ``PMGError``'s message is shown as it is (it names the problem and the
  fix); any other exception is a bug, shown as a message too, with its traceback in the log.
  ``validate_inputs`` itself never raises: ComfyUI would then report a bare "Exception when
  validating node" against the graph's output instead of a message on this node.
* **Fingerprints** (``fingerprint_inputs``): :func:`fingerprint_files` hashes the content of
  every file a node reads (SHA-256, :func:`file_digest`), so a file replaced under the same
  name re-runs the node. A file that cannot be resolved gives :data:`MISSING`: its
  ``validate_inputs`` reports it.
* **Payloads**: :func:`checked_payload` refuses a value on a PMG socket that is not what the
  socket carries (an API script can send a string there); :func:`preference_bundle` is that
  check for ``PMG_PREFERENCE``, :func:`checked_soft_prompt` for ``PMG_SOFT_PROMPT`` and
  :func:`checked_history` for ``PMG_HISTORY``, used by every node that takes one, at
  validation and again in ``execute``.
* **Results and errors** (``execute``): a node raises the library's ``PMGError`` unchanged;
  ComfyUI shows its message on the node and logs the traceback. Nothing else is caught in
  ``execute``: Cancel (``InterruptProcessingException``) and out-of-memory have ComfyUI's
  own handling. Long library calls get :func:`.comfy_runtime.progress_callback` (the node's
  progress bar, and Cancel between steps). What a node shows besides its outputs is built
  by :func:`node_ui` (text on the node, a JSON record for clients reading ``/history``) and
  pictures become IMAGE batches through :func:`comfy_image`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import torch

from ..pmg_core.errors import EmbeddingValueError, PMGError
from ..pmg_core.history import UserHistory
from ..pmg_core.metrics.images import pil_to_tensor, to_comfy
from ..pmg_core.safe_paths import sha256_file
from .types import PreferenceBundle, SoftPrompt

logger = logging.getLogger(__name__)

Payload = TypeVar("Payload")

MISSING = "missing"
"""The fingerprint of inputs whose files cannot be found (``validate_inputs`` names the problem)."""

SETTLED_NS = 3_000_000_000
"""A digest is reused only for a file whose status times were older than this when it was hashed:
a file written in the same coarse clock tick as the hash (1-10 ms on Linux, 2 s on FAT) could
change again without changing its times (git's "racy clean" rule)."""
_DIGESTS_KEPT = 1024
_digests: OrderedDict[tuple, str] = OrderedDict()
_digests_lock = threading.Lock()


def validation_result(*checks: Callable[[], object]) -> bool | str:
    """``True`` when every check passes; else the message ComfyUI shows under the node.

    A check passes when it returns (its value is ignored: a resolver's path, say) and fails
    by raising. A ``PMGError``'s message is shown as it is; any other exception is a bug in
    the check, shown with its type and logged with the traceback, so one broken check
    cannot fail the whole queue.
    """
    try:
        for check in checks:
            check()
    except PMGError as error:
        return str(error)
    except Exception as error:  # noqa: BLE001 - validation answers with a message, never an exception
        logger.exception("PMG: an input check failed unexpectedly")
        return (
            f"PMG could not check this node's inputs ({type(error).__name__}: {error}); the ComfyUI log has the "
            "traceback. Please report it; re-queueing will not help until the cause is fixed."
        )
    return True


def file_digest(path: Path | str) -> str:
    """The SHA-256 of a file's content, hashed again only when the file may have changed.

    The digest is kept per (path, device, inode, size, mtime, ctime): a rewrite changes
    ctime even when a tool restores mtime (``touch -r``, ``cp -p``), and a file changed
    within :data:`SETTLED_NS` of being hashed is never remembered, so a big adapter
    costs one read while a file rewritten in place is still noticed.
    ``MissingFileError`` when it cannot be read.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return sha256_file(path)  # raises MissingFileError naming the file
    key = (os.fspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    with _digests_lock:
        if key in _digests:
            _digests.move_to_end(key)
            return _digests[key]
    hashed_at = time.time_ns()
    digest = sha256_file(path)
    if hashed_at - max(stat.st_mtime_ns, stat.st_ctime_ns) > SETTLED_NS:
        with _digests_lock:
            _digests[key] = digest
            while len(_digests) > _DIGESTS_KEPT:
                _digests.popitem(last=False)
    return digest


def fingerprint_files(files: Callable[[], Iterable[Path | str]]) -> str:
    """A node's ``fingerprint_inputs``: the content digests of the files ``files()`` names, in order.

    :data:`MISSING` when a file cannot be resolved or read (a ``PMGError``); the node's
    ``validate_inputs`` reports why. Other exceptions reach ComfyUI, which logs them and
    runs the node again (the safe side).
    """
    try:
        return ":".join(file_digest(path) for path in files())
    except PMGError:
        return MISSING


def checked_payload(value, kind: type[Payload], input_name: str, source: str) -> Payload:
    """``value`` when it is a ``kind``; else an ``EmbeddingValueError`` naming the input and its source.

    ComfyUI checks the type of a connection, not of a value typed into an API prompt.
    """
    if isinstance(value, kind):
        return value
    shown = repr(value) if len(repr(value)) <= 60 else f"{repr(value)[:57]}..."
    raise EmbeddingValueError(
        f"The {input_name} input got a {type(value).__name__} ({shown}), not what {source} outputs; connect "
        f"{source}'s {input_name} output to it (an API prompt links it as [\"<node id>\", <output index>])."
    )


def preference_bundle(value) -> PreferenceBundle | None:
    """A node's ``preference`` input: the ``PreferenceBundle``, or ``None`` when it is not connected.

    ``None`` is also what ComfyUI's validation passes for a linked input (its value is only
    known when the graph runs); anything else must be PMG Preference Extractor's value.
    """
    if value is None:
        return None
    return checked_payload(value, PreferenceBundle, "preference", "PMG Preference Extractor")


def checked_history(value) -> UserHistory | None:
    """A node's ``history`` input: the ``UserHistory``, or ``None`` when it is linked (at validation)."""
    if value is None:
        return None
    return checked_payload(value, UserHistory, "history", "PMG User History Loader")


def checked_soft_prompt(value) -> SoftPrompt | None:
    """A node's optional ``soft_prompt`` input: the ``SoftPrompt``, or ``None`` when it is not connected (or linked)."""
    if value is None:
        return None
    return checked_payload(value, SoftPrompt, "soft_prompt", "PMG Soft Prompt Encoder")


def node_ui(text: str | None = None, **records: dict) -> dict:
    """A node's UI output: ``text`` shown on the node, and each ``pmg_*`` record for ``/history`` readers."""
    shown = {"text": [text]} if text is not None else {}
    return {**shown, **{key: [record] for key, record in records.items()}}


def comfy_image(picture) -> torch.Tensor:
    """A PIL picture (a plot, a loss curve) as a one-image ComfyUI IMAGE batch ``[1, H, W, 3]``."""
    return to_comfy(pil_to_tensor(picture))
