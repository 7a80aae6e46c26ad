"""README's "Where things live" names each room once, and every room it names exists."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _map_rows() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `") or line.startswith("| the other")]


def _named_paths() -> list[str]:
    return [path for row in _map_rows() for path in re.findall(r"`([^`]+)`", row.split("|")[1])]


def test_every_named_room_exists():
    missing = [path for path in _named_paths() if not list(REPO.glob(path.rstrip("/")))]
    assert not missing, f"README's module map names rooms that do not exist: {missing}"


def test_each_room_is_named_once():
    paths = _named_paths()
    assert len(paths) > 10
    assert len(paths) == len(set(paths)), f"named twice: {sorted({p for p in paths if paths.count(p) > 1})}"


def test_every_library_package_has_a_row():
    packages = {p.name for p in (REPO / "pmg_core").iterdir() if (p / "__init__.py").is_file()}
    named = {path.split("/")[1] for path in _named_paths() if path.startswith("pmg_core/") and path.endswith("/")}
    assert packages == named, f"without a row: {sorted(packages - named)}; a row but no package: {sorted(named - packages)}"
