"""resolve_inside confines user-named paths to one folder; sha256_file fingerprints files."""

from __future__ import annotations

import hashlib
import os

import pytest

from pmg_core.errors import MissingFileError, UnsafePathError
from pmg_core.safe_paths import resolve_inside, sha256_file


@pytest.fixture()
def root(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("secret")
    return allowed


def test_relative_path_inside_is_resolved(root):
    assert resolve_inside(root, "sub/a.png") == (root / "sub" / "a.png").resolve()
    assert resolve_inside(str(root), "sub/./../sub/a.png") == (root / "sub" / "a.png").resolve()


def test_file_need_not_exist_yet(root):
    assert resolve_inside(root, "new/out.png") == root.resolve() / "new" / "out.png"


def test_absolute_path_inside_root_is_allowed(root):
    inside = (root / "sub" / "a.png").resolve()
    assert resolve_inside(root, inside) == inside


def test_absolute_path_outside_is_refused_and_names_the_folder(root):
    with pytest.raises(UnsafePathError) as info:
        resolve_inside(root, root.parent / "secret.txt")
    assert str(root.resolve()) in str(info.value)


@pytest.mark.parametrize("escape", ["../secret.txt", "sub/../../secret.txt", "..", "/etc/passwd"])
def test_dotdot_and_absolute_escapes_are_refused(root, escape):
    with pytest.raises(UnsafePathError, match="outside the allowed folder"):
        resolve_inside(root, escape)


def test_symlink_pointing_outside_is_refused(root):
    os.symlink(root.parent / "secret.txt", root / "link.txt")
    os.symlink(root.parent, root / "dirlink")
    with pytest.raises(UnsafePathError):
        resolve_inside(root, "link.txt")
    with pytest.raises(UnsafePathError):
        resolve_inside(root, "dirlink/secret.txt")


def test_symlink_staying_inside_is_allowed(root):
    os.symlink(root / "sub" / "a.png", root / "alias.png")
    assert resolve_inside(root, "alias.png") == (root / "sub" / "a.png").resolve()


def test_symlinked_root_itself_is_fine(root, tmp_path):
    os.symlink(root, tmp_path / "root_link")
    assert resolve_inside(tmp_path / "root_link", "sub/a.png") == (root / "sub" / "a.png").resolve()


def test_nul_byte_is_refused(root):
    with pytest.raises(UnsafePathError, match="NUL"):
        resolve_inside(root, "a\x00.png")


def test_sha256_matches_hashlib_across_chunk_boundaries(tmp_path):
    data = os.urandom(3 * 1000 + 17)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(path) == expected
    assert sha256_file(path, chunk_size=1000) == expected
    path.write_bytes(data + b"x")
    assert sha256_file(path) != expected


def test_sha256_of_missing_file_names_the_path(tmp_path):
    with pytest.raises(MissingFileError, match="nothing.bin"):
        sha256_file(tmp_path / "nothing.bin")
