"""Uploading history files: the library's checks, and POST /pmg/history/upload on the real server.

A good file is stored and listed by the PMG User History Loader; a bad one is refused with
the loader's own message and nothing stays in the input folder; archives and folders are
unpacked path-safely (no ``..``, absolute names or links) within a size bound.
"""

from __future__ import annotations

import io
import json
import shutil
import stat
import zipfile
from pathlib import Path

import pytest
import requests

from pmg_core.errors import HistoryFormatError, InvalidSettingError, PMGError, UnsafePathError
from pmg_core.history_upload import (
    UploadLimits,
    accept_history_file,
    accept_staged,
    extract_zip,
    member_path,
    staging_folder,
)
from pmg_core.loaders import load_histories

DATA = Path(__file__).parent / "data" / "histories"
BAD_JSONL = b'{"user_id": "u1", "items": [{"item_id": "a", "title": "Alien"}]}\n["not", "an", "object"]\n'
ROUTE = "/pmg/history/upload"


def zip_bytes(members: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            bundle.writestr(info, "/etc/passwd")
    return buffer.getvalue()


def histories_folder() -> dict[str, bytes]:
    """tests/data/histories as archive members under one top folder (movies.jsonl names posters/*.png)."""
    return {f"ml_upload/{p.relative_to(DATA).as_posix()}": p.read_bytes() for p in sorted(DATA.rglob("*")) if p.is_file()}


def loader_message(content: bytes, name: str, tmp_path: Path) -> str:
    """What the loader itself says about ``content`` (the file's path replaced by <file>)."""
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(PMGError) as caught:
        load_histories(path, image_root=tmp_path)
    return str(caught.value).replace(str(path), "<file>")


def everything(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# ------------------------------------------------------------------ library


def test_member_names_that_leave_the_archive_are_refused():
    for name in ("../evil.jsonl", "/etc/passwd", "a/../../b.png", "C:/x.jsonl", "a\\..\\..\\b", "x\x00.png", ""):
        with pytest.raises(UnsafePathError, match="outside the archive"):
            member_path(name)
    assert member_path("./stickers//images/a.png").as_posix() == "stickers/images/a.png"


def test_a_bad_history_file_is_refused_and_nothing_stays(tmp_path):
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    expected = loader_message(BAD_JSONL, "bad.jsonl", tmp_path)
    with pytest.raises(HistoryFormatError) as caught:
        accept_history_file(io.BytesIO(BAD_JSONL), "bad.jsonl", input_dir)
    assert str(caught.value).replace(str(input_dir / "bad.jsonl"), "<file>") == expected
    assert everything(input_dir) == set()


def test_a_good_file_gets_a_new_name_unless_it_is_the_same_content(tmp_path):
    input_dir = tmp_path / "input"
    (input_dir / "pmg").mkdir(parents=True)
    content = (DATA / "chat.txt").read_bytes()
    first = accept_history_file(io.BytesIO(content), "chat.txt", input_dir, "pmg")
    again = accept_history_file(io.BytesIO(content), "chat.txt", input_dir, "pmg")
    other = accept_history_file(io.BytesIO(content.replace(b"mei", b"ann")), "chat.txt", input_dir, "pmg")
    assert (first.name, again.name, other.name) == ("pmg/chat.txt", "pmg/chat.txt", "pmg/chat (1).txt")
    assert first.histories[0].users == 1 and first.histories[0].format == "chat"
    with pytest.raises(UnsafePathError, match="single folder name"):
        accept_history_file(io.BytesIO(content), "chat.txt", input_dir, "a/b")


def test_a_single_file_over_the_limit_leaves_nothing(tmp_path, monkeypatch):
    import pmg_core.history_upload as upload

    monkeypatch.setattr(upload, "UploadLimits", lambda: UploadLimits(max_bytes=100))
    with pytest.raises(InvalidSettingError, match="more than the upload limit"):
        accept_history_file(io.BytesIO(b"x" * 5000), "big.jsonl", tmp_path)
    assert everything(tmp_path) == set()


def test_zip_size_and_count_bounds(tmp_path):
    archive = tmp_path / "big.zip"
    archive.write_bytes(zip_bytes({"big/history.jsonl": b"x" * 5000, "big/images/a.png": b"y" * 5000}))
    with staging_folder(tmp_path) as staging, pytest.raises(InvalidSettingError, match="MiB, more than"):
        extract_zip(archive, staging, UploadLimits(max_bytes=8000))
    with staging_folder(tmp_path) as staging, pytest.raises(InvalidSettingError, match="holds 2 files"):
        extract_zip(archive, staging, UploadLimits(max_files=1))
    assert everything(tmp_path) == {"big.zip"}  # the staging folders are gone


def accept_zip(content: bytes, name: str, input_dir: Path):
    """The upload route's steps for one archive (nodes/history_upload_route.py), without the server."""
    archive = input_dir.parent / name
    archive.write_bytes(content)
    with staging_folder(input_dir) as staging:
        skipped = extract_zip(archive, staging)
        return accept_staged(staging, input_dir, name.removesuffix(".zip"), skipped)


def test_the_packs_own_sticker_export_zipped_is_accepted_with_its_attribution(tmp_path):
    """`pmg example-data`'s sticker folder, zipped as a user would: ATTRIBUTION.txt is kept, never a refusal."""
    from pmg_core.example_data import install_example_histories

    written = install_example_histories(tmp_path / "made")
    folder = written["stickers"].parent
    archive = zip_bytes({f"my_stickers/{p.relative_to(folder).as_posix()}": p.read_bytes()
                         for p in sorted(folder.rglob("*")) if p.is_file()})
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    result = accept_zip(archive, "my_stickers.zip", input_dir)
    assert [check.name for check in result.histories] == ["my_stickers/history.jsonl"]
    assert result.histories[0].users == 8
    stored = input_dir / "my_stickers"
    assert (stored / "ATTRIBUTION.txt").read_text(encoding="utf-8") == (folder / "ATTRIBUTION.txt").read_text(encoding="utf-8")
    assert everything(stored) == everything(folder)


def test_a_text_file_that_is_no_history_is_refused_when_it_is_the_only_one(tmp_path):
    """The note rule does not hide a bad chat: alone, a .txt that is not 'speaker: text' is still refused."""
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    archive = zip_bytes({"notes/ATTRIBUTION.txt": b"Twemoji graphics are CC-BY 4.0\n"})
    with pytest.raises(HistoryFormatError, match="notes/ATTRIBUTION.txt: .*Nothing was stored"):
        accept_zip(archive, "notes.zip", input_dir)
    assert everything(input_dir) == set()


# ------------------------------------------------------------------ through the server

def post(server, files: list, data: dict | None = None) -> requests.Response:
    return requests.post(server.url + ROUTE, files=files, data=data or {}, timeout=120)


def listed(server) -> list[str]:
    info = requests.get(server.url + "/object_info/PMGUserHistoryLoader", timeout=30).json()
    spec = info["PMGUserHistoryLoader"]["input"]["required"]["history_file"]
    return spec[1]["options"] if spec[0] == "COMBO" else spec[0]


@pytest.fixture()
def input_dir(comfy_server) -> Path:
    folder = comfy_server.base_dir / "input"
    before = everything(folder)
    yield folder
    # Leave the session's server as other tests expect it: remove what this test added.
    for name in sorted(everything(folder) - before, key=len):
        shutil.rmtree(folder / name, ignore_errors=True)
        (folder / name).unlink(missing_ok=True)


@pytest.mark.comfy_server
def test_server_accepts_a_good_file_and_the_loader_lists_it(comfy_server, input_dir):
    content = (DATA / "chats.json").read_bytes()
    answer = post(comfy_server, [("file", ("upload_chats.json", content))], {"subfolder": "pmg_up"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["name"] == "pmg_up/upload_chats.json" and body["users"] == 2 and body["format"] == "chat"
    assert (input_dir / "pmg_up" / "upload_chats.json").read_bytes() == content
    assert "pmg_up/upload_chats.json" in listed(comfy_server)


@pytest.mark.comfy_server
def test_server_refuses_a_bad_file_with_the_loaders_message(comfy_server, input_dir, tmp_path):
    before = everything(input_dir)
    answer = post(comfy_server, [("file", ("bad_upload.jsonl", BAD_JSONL))])
    assert answer.status_code == 400
    message = answer.json()["error"]
    assert message.replace(str(input_dir.resolve() / "bad_upload.jsonl"), "<file>") == loader_message(
        BAD_JSONL, "bad_upload.jsonl", tmp_path)
    assert everything(input_dir) == before
    assert "bad_upload.jsonl" not in listed(comfy_server)
    # not a history file at all
    answer = post(comfy_server, [("file", ("notes.md", b"# hi"))])
    assert answer.status_code == 400 and "is not a history file" in answer.json()["error"]
    # a history file whose images are not there: the loader's missing-image message
    answer = post(comfy_server, [("file", ("posters_missing.jsonl", (DATA / "movies.jsonl").read_bytes()))])
    assert answer.status_code == 400 and "does not exist or is not a readable file" in answer.json()["error"]
    assert everything(input_dir) == before


@pytest.mark.comfy_server
def test_server_unpacks_a_zip_with_its_images(comfy_server, input_dir):
    members = histories_folder()
    answer = post(comfy_server, [("file", ("ml_upload.zip", zip_bytes({**members, "__MACOSX/._x": b"junk"})))])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["files"] == [f"ml_upload/{n}" for n in ("chat.txt", "chats.json", "movies.csv", "movies.jsonl")]
    # Only histories, RecBole companions and images are stored; scripts and macOS metadata are not.
    assert body["skipped"] == ["ml_upload/posters/make_posters.py", "__MACOSX/._x"]
    assert body["stored"] == len(members) - 1
    assert (input_dir / "ml_upload" / "posters" / "orbit_of_ashes.png").is_file()
    assert set(body["files"]) <= set(listed(comfy_server))
    assert not [p for p in input_dir.iterdir() if p.name.startswith(".pmg-upload-")]


@pytest.mark.comfy_server
def test_server_refuses_zip_traversal_links_and_imageless_histories(comfy_server, input_dir):
    before = everything(input_dir)
    good = histories_folder()
    cases = {
        "traversal": (zip_bytes({**good, "../../escaped.jsonl": b"{}"}), "points outside the archive"),
        "absolute": (zip_bytes({**good, "/tmp/pmg_abs.png": b"x"}), "points outside the archive"),
        "link": (zip_bytes(good, links=("ml_upload/posters/link.png",)), "symbolic link"),
        "no history": (zip_bytes({"pics/a.png": b"x"}), "no history file"),
        "missing poster": (zip_bytes({k: v for k, v in good.items() if "orbit" not in k}), "orbit_of_ashes.png"),
        "not a zip": (b"PK\x03\x04 broken", "not a readable .zip"),
    }
    for case, (data, expected) in cases.items():
        answer = post(comfy_server, [("file", (f"{case}.zip", data))])
        assert answer.status_code == 400, (case, answer.text)
        assert expected in answer.json()["error"], (case, answer.json())
        assert everything(input_dir) == before, case
    assert not Path("/tmp/pmg_abs.png").exists()
    # The missing-image message names where the file would have been, not the hidden staging folder.
    answer = post(comfy_server, [("file", ("x.zip", cases["missing poster"][0]))])
    assert ".pmg-upload-" not in answer.json()["error"] and "ml_upload/movies" in answer.json()["error"]


@pytest.mark.comfy_server
def test_server_stores_a_folder_sent_file_by_file(comfy_server, input_dir):
    parts = []
    for name, data in histories_folder().items():
        parts += [("path", (None, name.replace("ml_upload/", "my folder/"))), ("file", (Path(name).name, data))]
    answer = post(comfy_server, parts)
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "my folder/chat.txt"
    again = post(comfy_server, parts)  # the same folder again gets its own name
    assert again.json()["name"] == "my folder (1)/chat.txt"
    assert {"my folder/movies.jsonl", "my folder (1)/movies.jsonl"} <= set(listed(comfy_server))
    escaping = [("path", (None, "../outside/history.jsonl")), ("file", ("history.jsonl", b"{}"))]
    answer = post(comfy_server, escaping)
    assert answer.status_code == 400 and "points outside the archive" in answer.json()["error"]
    assert json.loads(answer.text)["error"].endswith("(e.g. zip -r).")
