"""Fixtures for user histories: the example files, real MovieLens, an exported sticker set."""

from __future__ import annotations

from pathlib import Path

import pytest

HISTORIES_DIR = Path(__file__).parent / "data" / "histories"


@pytest.fixture(scope="session")
def histories_dir() -> Path:
    """tests/data/histories: invented movie-like JSONL/CSV, chats, tiny posters."""
    return HISTORIES_DIR


@pytest.fixture(scope="session")
def movielens_path() -> Path:
    """The real MovieLens-100K shipped inside the installed recbole package (read by path)."""
    from pmg_core.assets import movielens_dir

    return movielens_dir()


@pytest.fixture(scope="session")
def sticker_set(tmp_path_factory) -> Path:
    """A sticker set exported from the real Twemoji PNGs: 6 users, seed 0."""
    from pmg_core.loaders import export_sticker_dataset

    return export_sticker_dataset(tmp_path_factory.mktemp("stickers"), n_users=6, seed=0)
