"""pmg_core.atomic: the one way files and folders are written (temp path + rename)."""

from __future__ import annotations

import pytest

from pmg_core.atomic import atomic_path, copy_atomic, write_bytes_atomic, write_text_atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_text_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b.txt"
    write_text_atomic(target, "one")
    write_text_atomic(target, "twö")
    assert target.read_text(encoding="utf-8") == "twö"
    assert _leftovers(target.parent) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "x.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_folder_is_renamed_into_place_and_an_existing_one_wins(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as temporary:
        temporary.mkdir()
        (temporary / "config.json").write_text("first")
    with atomic_path(target) as temporary:  # a slower concurrent writer
        temporary.mkdir()
        (temporary / "config.json").write_text("second")
    assert (target / "config.json").read_text() == "first"
    assert _leftovers(tmp_path) == []


def test_failed_folder_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "model") as temporary:
        temporary.mkdir()
        (temporary / "weights").write_bytes(b"x")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("link", [False, True])
def test_copy_atomic(tmp_path, link):
    source = tmp_path / "source.bin"
    source.write_bytes(b"payload")
    copy_atomic(source, tmp_path / "out" / "copy.bin", link=link)
    assert (tmp_path / "out" / "copy.bin").read_bytes() == b"payload"
    assert _leftovers(tmp_path / "out") == []
