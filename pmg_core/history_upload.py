"""Accepting an uploaded history file, zip archive or folder into a ComfyUI-style input folder.

Pure library (no ComfyUI, no web framework): the pack's upload route
(``nodes/history_upload_route.py``) streams the request into these functions.

* a single history file is written under a new name in its destination folder,
  checked there with the loaders (so image paths resolve exactly as the PMG User
  History Loader will resolve them) and removed again if the check fails;
* an archive or a folder is unpacked into a hidden staging folder (every member
  name checked: no ``..``, no absolute or drive paths, no links, a bound on count
  and size), each history file at its top is checked, and only then is the
  staging folder renamed into place. A refused upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import uuid
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .errors import HistoryFormatError, InvalidSettingError, PMGError, UnsafePathError
from .loaders import detect_format, load_histories
from .safe_paths import resolve_inside, sha256_file

logger = logging.getLogger(__name__)

HISTORY_SUFFIXES = (".jsonl", ".csv", ".json", ".txt", ".inter")
# RecBole keeps item titles and user data beside the .inter file.
COMPANION_SUFFIXES = (".item", ".user")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
ARCHIVE_SUFFIXES = (".zip",)
STAGING_PREFIX = ".pmg-upload-"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on what one upload may unpack (zip bombs, runaway folders)."""

    max_files: int = 20_000
    max_bytes: int = 512 * 1024 * 1024


@dataclass(frozen=True)
class HistoryCheck:
    """A history file that loaded: its name relative to the input folder, format and users."""

    name: str
    format: str
    users: int
    first_user: str


@dataclass
class UploadResult:
    """What an accepted upload stored: the history files (first one to select) and the other members."""

    histories: list[HistoryCheck]
    stored: int
    skipped: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.histories[0].name

    def as_json(self) -> dict:
        return {
            "name": self.name,
            "files": [h.name for h in self.histories],
            "users": self.histories[0].users,
            "first_user": self.histories[0].first_user,
            "format": self.histories[0].format,
            "stored": self.stored,
            "skipped": self.skipped,
        }


def is_history_name(name: str) -> bool:
    return name.lower().endswith(HISTORY_SUFFIXES)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def check_history_file(path: Path, image_root: Path, name: str) -> HistoryCheck:
    """Load every user of ``path`` as the loader node would; raise the loader's PMGError if any is wrong."""
    fmt = detect_format(path)
    histories = load_histories(path, image_root=image_root)
    first = next(iter(histories))
    return HistoryCheck(name=name, format=fmt, users=len(histories), first_user=first)


def member_path(name: str) -> PurePosixPath:
    """An archive or folder member's relative path, or UnsafePathError for escapes and odd names."""
    text = name.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if "\x00" in text or text.startswith("/") or (parts and ":" in parts[0]) or ".." in parts or not parts:
        raise UnsafePathError(
            f"The archive member {name!r} points outside the archive (an absolute path, a drive, '..' or an "
            "empty name); nothing was stored. Re-create the archive from the folder itself (e.g. zip -r)."
        )
    return PurePosixPath(*parts)


def _wanted(path: PurePosixPath) -> bool:
    """History files, their RecBole companions and images; junk (macOS metadata, dotfiles) is left out."""
    if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
        return False
    return path.name.lower().endswith(HISTORY_SUFFIXES + COMPANION_SUFFIXES + IMAGE_SUFFIXES)


def unique_path(folder: Path, name: str) -> Path:
    """``folder/name``, or ``name (1)``, ``name (2)``... like ComfyUI's upload route, if taken."""
    candidate = folder / name
    stem, suffix = os.path.splitext(name)
    i = 1
    while candidate.exists() or candidate.is_symlink():
        candidate = folder / f"{stem} ({i}){suffix}"
        i += 1
    return candidate


def copy_bounded(source: BinaryIO, target: Path, budget: list[int], what: str) -> int:
    """Copy ``source`` into the new file ``target``, charging ``budget[0]`` bytes; refuse past it."""
    written = 0
    with open(target, "xb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise InvalidSettingError(
                    f"{what} unpacks to more than the upload limit; nothing was stored. "
                    "Upload the history file with fewer or smaller images, or copy the folder into ComfyUI's "
                    "input folder by hand."
                )
            out.write(chunk)
    return written


# ---------------------------------------------------------------- single files


def accept_history_file(source: BinaryIO, filename: str, input_dir: Path, subfolder: str = "") -> UploadResult:
    """Store one uploaded history file under ``input_dir/subfolder`` if it loads; else raise and store nothing."""
    name = member_path(filename).name
    if not is_history_name(name):
        raise HistoryFormatError(
            f"{name!r} is not a history file; upload a {', '.join(HISTORY_SUFFIXES)} file, or a .zip or folder "
            "holding one with the images it names."
        )
    folder = _destination_folder(input_dir, subfolder)
    target = unique_path(folder, name)
    relative = target.relative_to(input_dir.resolve()).as_posix()
    try:
        copy_bounded(source, target, [UploadLimits().max_bytes], repr(name))
    except FileExistsError:
        raise  # another upload took the name meanwhile: its file is not ours to remove
    except BaseException:
        target.unlink(missing_ok=True)  # too large, a full disk...: no partial file stays
        raise
    try:
        duplicate = _identical_sibling(target, name)
        # Checked where it lies, so relative image paths resolve as the loader node will see them.
        check = check_history_file(target, input_dir, relative)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if duplicate is not None:
        # The same content under the same name is already there (ComfyUI's upload route does the same).
        target.unlink()
        relative = duplicate.relative_to(input_dir.resolve()).as_posix()
        check = HistoryCheck(relative, check.format, check.users, check.first_user)
    logger.info("PMG: accepted history file %s (%s, %d users)", relative, check.format, check.users)
    return UploadResult([check], stored=0 if duplicate else 1)


def _destination_folder(input_dir: Path, subfolder: str) -> Path:
    subfolder = (subfolder or "").strip()
    if not subfolder:
        return input_dir.resolve()
    relative = member_path(subfolder)
    if len(relative.parts) != 1:
        raise UnsafePathError(
            f"The subfolder {subfolder!r} is nested; the loader lists history files in the input folder and one "
            "subfolder level, so give a single folder name (e.g. 'pmg')."
        )
    folder = resolve_inside(input_dir, relative.as_posix())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _identical_sibling(target: Path, name: str) -> Path | None:
    original = target.with_name(name)
    if original == target or not original.is_file() or original.stat().st_size != target.stat().st_size:
        return None
    return original if sha256_file(original) == sha256_file(target) else None


# ---------------------------------------------------------------- archives and folders


@contextlib.contextmanager
def staging_folder(input_dir: Path) -> Iterator[Path]:
    """A hidden folder in ``input_dir`` (same file system, so the final rename is atomic), always removed."""
    staging = input_dir.resolve() / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def extract_zip(archive: Path, staging: Path, limits: UploadLimits = UploadLimits()) -> list[str]:
    """Unpack ``archive`` into ``staging``, path-safely and within ``limits``; returns the skipped names."""
    try:
        bundle = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as error:
        raise HistoryFormatError(f"The upload is not a readable .zip archive ({error}); re-create it and retry.") from error
    with bundle:
        members = [info for info in bundle.infolist() if not info.is_dir()]
        if len(members) > limits.max_files:
            raise InvalidSettingError(
                f"The archive holds {len(members)} files, more than the {limits.max_files} an upload may unpack; "
                "nothing was stored. Split it, or copy it into ComfyUI's input folder by hand."
            )
        declared = sum(info.file_size for info in members)
        if declared > limits.max_bytes:
            raise InvalidSettingError(
                f"The archive unpacks to {declared / 2**20:.0f} MiB, more than the {limits.max_bytes / 2**20:.0f} MiB an "
                "upload may; nothing was stored. Upload fewer or smaller images, or copy it in by hand."
            )
        # Every name is checked before anything is written: one bad member refuses the whole archive.
        paths = [(info, member_path(info.filename)) for info in members]
        for info, _ in paths:
            if stat.S_ISLNK(info.external_attr >> 16):
                raise UnsafePathError(
                    f"The archive member {info.filename!r} is a symbolic link; nothing was stored. "
                    "Archive the files themselves (zip without -y)."
                )
        budget = [limits.max_bytes]  # the real bytes count too: a header may lie about sizes
        skipped = []
        for info, path in paths:
            if not _wanted(path):
                skipped.append(info.filename)
                continue
            with bundle.open(info) as source:
                _write_member(staging, path, source, budget)
    return skipped


def extract_folder(files: Iterable[tuple[str, BinaryIO]], staging: Path, limits: UploadLimits = UploadLimits()) -> list[str]:
    """Write a folder's ``(relative path, content)`` pairs into ``staging`` like :func:`extract_zip`."""
    budget = [limits.max_bytes]
    skipped, count = [], 0
    for name, source in files:
        path = member_path(name)
        count += 1
        if count > limits.max_files:
            raise InvalidSettingError(
                f"The folder holds more than the {limits.max_files} files an upload may store; nothing was stored."
            )
        if not _wanted(path):
            skipped.append(name)
            continue
        _write_member(staging, path, source, budget)
    return skipped


def _write_member(staging: Path, path: PurePosixPath, source: BinaryIO, budget: list[int]) -> None:
    target = resolve_inside(staging, path.as_posix())  # belt and braces after member_path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        copy_bounded(source, target, budget, "The upload")
    except FileExistsError as error:
        raise HistoryFormatError(f"The upload names {path} twice; nothing was stored. Remove the duplicate.") from error


def accept_staged(staging: Path, input_dir: Path, fallback_name: str, skipped: list[str]) -> UploadResult:
    """Check the history files at the top of the unpacked upload, then move it to ``input_dir/<folder>``.

    The folder is the archive's single top-level folder if it has one (``stickers.zip`` holding
    ``stickers/...``), else ``fallback_name`` (the archive's name without ``.zip``). A ``.txt`` that
    does not read as a chat beside a good history file (the sticker export's ``ATTRIBUTION.txt``)
    is kept as a note, never a reason to refuse.
    """
    entries = [p for p in staging.iterdir()]
    top = entries[0] if len(entries) == 1 and entries[0].is_dir() else staging
    folder_name = top.name if top is not staging else member_path(fallback_name).name
    histories = sorted(p for p in top.iterdir() if p.is_file() and is_history_name(p.name))
    if not histories:
        raise HistoryFormatError(
            f"The upload holds no history file ({', '.join(HISTORY_SUFFIXES)}) at its top level; nothing was "
            "stored. Put the history file next to the images folder it names (e.g. stickers/history.jsonl with "
            "stickers/images/...), then upload again."
        )
    destination = unique_path(input_dir.resolve(), folder_name)
    checks = []
    notes: list[tuple[Path, PMGError]] = []
    for path in histories:
        relative = f"{destination.name}/{path.name}"
        try:
            # Images must lie inside the upload itself: the checked root is the upload's folder.
            checks.append(check_history_file(path, top, relative))
        except PMGError as error:
            if path.suffix.lower() == ".txt":
                notes.append((path, error))  # maybe a note (ATTRIBUTION.txt, README.txt): judged below
                continue
            raise _named_at_destination(error, relative, top, destination) from error
    if not checks:
        path, error = notes[0]
        raise _named_at_destination(error, f"{destination.name}/{path.name}", top, destination) from error
    for path, _error in notes:
        # A text file beside a good history is a note, kept with the images it may credit.
        logger.info("PMG: %s/%s is not a history file; kept as a plain text file", destination.name, path.name)
    stored = sum(1 for p in top.rglob("*") if p.is_file())
    destination.mkdir()  # claims the name; rename(2) then replaces the empty folder atomically
    os.rename(top, destination)
    logger.info("PMG: accepted history upload %s (%d files, %d history files)", destination.name, stored, len(checks))
    return UploadResult(checks, stored=stored, skipped=skipped)


def _named_at_destination(error: PMGError, relative: str, top: Path, destination: Path) -> PMGError:
    """The loader's error, naming the place the file would have had rather than the hidden staging folder."""
    message = str(error).replace(str(top.resolve()), str(destination)).replace(str(top), str(destination))
    return type(error)(f"{relative}: {message} Nothing was stored.")
