"""A runaway title in a studio's history file is refused where it is, not fed to the LLM and the condition."""

from __future__ import annotations

import json

import pytest

from pmg_core.errors import HistoryFormatError
from pmg_core.loaders import load_histories
from pmg_core.loaders.records import MAX_TITLE_CHARS


def test_a_long_title_is_refused_naming_its_line_length_and_fix(tmp_path):
    path = tmp_path / "studio.jsonl"
    good = {"user_id": "u1", "items": [{"item_id": "m1", "title": "x" * MAX_TITLE_CHARS}]}
    bad = {"user_id": "u2", "items": [{"item_id": "m2", "title": "Heat"}], "target": {"item_id": "t", "title": "y" * 600}}
    path.write_text(json.dumps(good) + "\n", encoding="utf-8")
    assert len(load_histories(path)) == 1  # the bound itself is allowed
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n", encoding="utf-8")
    with pytest.raises(HistoryFormatError, match=r"line 2.*title is 600 characters long; a title may hold at most 500.*Shorten"):
        load_histories(path)


def test_a_long_movielens_title_is_refused_too(tmp_path):
    (tmp_path / "ml.inter").write_text("user_id:token\titem_id:token\n1\t10\n", encoding="utf-8")
    (tmp_path / "ml.item").write_text("item_id:token\tmovie_title:token_seq\n10\t" + "z" * 501 + "\n", encoding="utf-8")
    with pytest.raises(HistoryFormatError, match=r"line 2: item '10''s title is 501 characters long"):
        load_histories(tmp_path / "ml.inter")
