"""``POST /pmg/history/upload``: the PMG User History Loader's upload button and drop target.

The browser extension (``web/js/pmg_history_upload.js``) posts a multipart form:

* ``file``: one history file (``.jsonl .csv .json .txt .inter``) or a ``.zip`` of a
  history file with the images it names; or several ``file`` parts, each preceded
  by a ``path`` field with its path inside a dropped or picked folder;
* ``subfolder`` (optional, single files only): a folder of ``input/`` to store it in.

The file is checked with the same loaders as the node before anything stays in the
input folder (``pmg_core.history_upload``). Answers ``200`` with the stored name
(``{"name": "stickers/history.jsonl", "users": 8, ...}``), or ``400`` with
``{"error": <the loader's message>}`` and nothing stored. ComfyUI's own
``/upload/image`` stores whatever it gets, so it cannot be the route that checks.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from contextlib import ExitStack
from pathlib import Path

from aiohttp import web

from ..pmg_core.errors import InvalidSettingError, PMGError
from ..pmg_core.history_upload import (
    accept_history_file,
    accept_staged,
    extract_folder,
    extract_zip,
    is_archive_name,
    staging_folder,
)
from . import comfy_paths

logger = logging.getLogger(__name__)

ROUTE = "/pmg/history/upload"
_registered = False


def register() -> None:
    """Add the route to ComfyUI's server (once; a no-op when no server runs, as in unit tests)."""
    global _registered
    if _registered:
        return
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return
    instance.routes.post(ROUTE)(upload_history)
    _registered = True


def _max_request_bytes() -> int:
    try:
        from comfy.cli_args import args

        return round(args.max_upload_size * 1024 * 1024)
    except (ImportError, AttributeError):
        return 100 * 1024 * 1024


async def upload_history(request: web.Request) -> web.Response:
    with tempfile.TemporaryDirectory(prefix="pmg-upload-") as spool:
        try:
            form = await _spool_form(request, Path(spool))
            result = await asyncio.to_thread(_accept, form)
        except PMGError as error:
            logger.warning("PMG: history upload refused: %s", error)
            return web.json_response({"error": str(error)}, status=400)
        except OSError as error:  # a full disk, a read-only input folder, a name taken meanwhile
            logger.exception("PMG: history upload failed")
            return web.json_response({"error": (
                f"The server could not store the upload ({error}); nothing was kept. Check that ComfyUI's input "
                "folder is writable and has free space, then upload again.")}, status=500)
    return web.json_response(result.as_json())


async def _spool_form(request: web.Request, spool: Path) -> dict:
    """Read the multipart form into ``spool`` (files) and a dict (fields), within ComfyUI's upload size."""
    if not request.content_type.startswith("multipart/"):
        raise InvalidSettingError("Send the history file as multipart/form-data with a 'file' field.")
    budget = _max_request_bytes()
    form: dict = {"files": [], "subfolder": ""}
    pending_path = None
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if part.name == "file":
            spooled = spool / f"part-{len(form['files'])}"
            with open(spooled, "wb") as out:
                while chunk := await part.read_chunk(1 << 20):
                    budget -= len(chunk)
                    if budget < 0:
                        raise InvalidSettingError(
                            "The upload is larger than ComfyUI's upload limit (--max-upload-size); nothing was "
                            "stored. Copy large data sets into the input folder by hand."
                        )
                    out.write(chunk)
            form["files"].append((pending_path or part.filename or "", spooled))
            pending_path = None
        elif part.name == "path":
            pending_path = await part.text()
        elif part.name == "subfolder":
            form["subfolder"] = await part.text()
    if not form["files"]:
        raise InvalidSettingError("The upload holds no 'file' field; pick a history file to upload.")
    return form


def _accept(form: dict):
    input_dir = comfy_paths.input_dir()
    files = form["files"]
    folder_upload = len(files) > 1 or "/" in files[0][0].replace("\\", "/")
    if not folder_upload and not is_archive_name(files[0][0]):
        name, spooled = files[0]
        with open(spooled, "rb") as source:
            return accept_history_file(source, name, input_dir, form["subfolder"])
    with staging_folder(input_dir) as staging:
        if folder_upload:
            with ExitStack() as stack:
                members = [(name, stack.enter_context(open(spooled, "rb"))) for name, spooled in files]
                skipped = extract_folder(members, staging)
            fallback = files[0][0].replace("\\", "/").split("/")[0]
        else:
            name, spooled = files[0]
            skipped = extract_zip(spooled, staging)
            fallback = name[: -len(".zip")] if name.lower().endswith(".zip") else name
        return accept_staged(staging, input_dir, fallback, skipped)
