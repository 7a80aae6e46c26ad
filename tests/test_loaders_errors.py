"""Every kind of bad history input raises a specific PMGError naming the place, the problem and the fix."""

from __future__ import annotations

import json
import logging

import pytest

from pmg_core.errors import HistoryFormatError, MissingImageError, PMGError
from pmg_core.loaders import list_users, load_histories, load_user

GOOD_ITEM = {"item_id": "m1", "title": "Star Wars"}


def _jsonl(tmp_path, *lines: str, name: str = "h.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _csv(tmp_path, text: str, name: str = "h.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _record(**fields) -> str:
    return json.dumps({"user_id": "u1", "items": [GOOD_ITEM], **fields})


# --- JSON ---------------------------------------------------------------------------------------


def test_malformed_json_line_names_file_line_and_shape(tmp_path):
    path = _jsonl(tmp_path, _record(), '{"user_id": "u2", "items": [', _record())
    with pytest.raises(HistoryFormatError) as info:
        load_histories(path)
    message = str(info.value)
    assert f"{path}, line 2" in message and "malformed JSON" in message and '"user_id"' in message


def test_json_line_that_is_not_an_object(tmp_path):
    with pytest.raises(HistoryFormatError, match=r"line 1: expected a JSON object .* found a list"):
        load_histories(_jsonl(tmp_path, "[1, 2]"))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"items": [GOOD_ITEM]}, "no 'user_id'"),
        ({"user_id": "u1"}, "no 'items' list"),
        ({"user_id": "u1", "items": [{"item_id": "m1"}]}, r"items\[0\] has no 'title'"),
        ({"user_id": "u1", "items": [{"title": "X"}]}, r"items\[0\] has no 'item_id'"),
        ({"user_id": "u1", "items": {"m1": "X"}}, "'items' must be a list"),
        ({"user_id": "u1", "items": ["Star Wars"]}, r"items\[0\] must be an object"),
        ({"user_id": ["u1"], "items": [GOOD_ITEM]}, "user_id must be a string or an integer"),
        ({"user_id": "", "items": [GOOD_ITEM]}, "user_id is empty"),
        ({"user_id": "u1", "items": [{**GOOD_ITEM, "title": "  "}]}, "title is empty"),
        ({"user_id": "u1", "items": [{**GOOD_ITEM, "title": 7}]}, "title must be a string"),
        ({"user_id": "u1", "items": [{**GOOD_ITEM, "categories": "Drama"}]}, "categories must be a list of strings"),
        ({"user_id": "u1", "items": [{**GOOD_ITEM, "keywords": [1, 2]}]}, "keywords must be a list of strings"),
        ({"user_id": "u1", "items": [{**GOOD_ITEM, "rating": "5"}]}, "rating must be a number"),
        ({"user_id": "u1", "items": [{**GOOD_ITEM, "rating": True}]}, "rating must be a number"),
        ({"user_id": "u1", "items": [{**GOOD_ITEM, "timestamp": "yesterday"}]}, "neither a number"),
        ({"user_id": "u1", "items": [GOOD_ITEM], "scene": "poster"}, "unknown scene 'poster'"),
        ({"user_id": "u1", "items": [GOOD_ITEM], "target": "m2"}, "target must be an object"),
        ({"user_id": "u1", "turns": [{"speaker": "a"}]}, r"turn 0 must be"),
        ({"user_id": "u1", "turns": ["no colon here"]}, "is not 'speaker: text'"),
        ({"user_id": "u1", "items": [{**GOOD_ITEM, "image": "a.png", "image_path": "b.png"}]}, "keep only 'image_path'"),
    ],
)
def test_missing_fields_and_wrong_types(tmp_path, record, expected):
    path = _jsonl(tmp_path, json.dumps(record))
    with pytest.raises(HistoryFormatError, match=expected) as info:
        load_histories(path)
    assert f"{path}, line 1" in str(info.value)


def test_nan_rating_is_refused(tmp_path):
    # Python's json accepts NaN; a NaN rating would poison the sort.
    path = _jsonl(tmp_path, '{"user_id": "u1", "items": [{"item_id": "1", "title": "X", "rating": NaN}]}')
    with pytest.raises(HistoryFormatError, match="finite"):
        load_histories(path)


def test_duplicate_user_lines_are_refused(tmp_path):
    path = _jsonl(tmp_path, _record(), _record())
    with pytest.raises(HistoryFormatError, match="already appeared on line 1"):
        load_histories(path)


def test_unknown_fields_are_loaded_but_warned_about(tmp_path, caplog):
    path = _jsonl(tmp_path, json.dumps({"user_id": "u1", "items": [{**GOOD_ITEM, "catgories": ["Drama"]}]}))
    with caplog.at_level(logging.WARNING):
        assert load_user(path, "u1").items[0].categories == ()
    assert "catgories" in caplog.text


def test_deeply_nested_json_is_a_format_error(tmp_path):
    path = _jsonl(tmp_path, "[" * 100_000)
    with pytest.raises(HistoryFormatError):
        load_histories(path)


# --- bytes and emptiness ------------------------------------------------------------------------


def test_non_utf8_file_names_the_line_and_the_fix(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("user_id,item_id,title\nu,1,Amélie\n".encode("latin-1"))
    with pytest.raises(HistoryFormatError) as info:
        load_histories(path)
    message = str(info.value)
    assert "line 2" in message and "not UTF-8" in message and "iconv" in message


@pytest.mark.parametrize("name", ["h.jsonl", "h.csv", "h.txt", "h.json", "h"])
@pytest.mark.parametrize("content", [b"", b"  \n\n\t\n"])
def test_empty_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(HistoryFormatError, match="empty"):
        load_histories(path)


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffuser_id,item_id,title\nu,1,X\n".encode("utf-8"))
    assert load_user(path, "u").items[0].title == "X"


def test_unknown_format_name_and_unrecognisable_content(tmp_path):
    path = _jsonl(tmp_path, _record())
    with pytest.raises(HistoryFormatError, match="Unknown history format 'xml'"):
        load_histories(path, fmt="xml")
    odd = tmp_path / "notes.dat"
    odd.write_text("just some words\nwithout structure\n", encoding="utf-8")
    with pytest.raises(HistoryFormatError, match="Cannot tell the format"):
        load_histories(odd)


def test_folder_without_history(tmp_path):
    with pytest.raises(HistoryFormatError, match="history.jsonl"):
        load_histories(tmp_path)


# --- CSV ----------------------------------------------------------------------------------------


def test_csv_missing_required_column(tmp_path):
    path = _csv(tmp_path, "user_id,item_id,name\nu,1,X\n")
    with pytest.raises(HistoryFormatError, match=r"line 1: the header lacks the column\(s\) title"):
        load_histories(path)


def test_csv_rating_not_a_number_names_the_line(tmp_path):
    path = _csv(tmp_path, "user_id,item_id,title,rating\nu,1,X,5\nu,2,Y,five\n")
    with pytest.raises(HistoryFormatError, match=r"line 3: rating 'five' is not a number"):
        load_histories(path)


def test_csv_row_with_wrong_field_count(tmp_path):
    path = _csv(tmp_path, "user_id,item_id,title\nu,1,Toy Story, the sequel\n")
    with pytest.raises(HistoryFormatError, match=r"line 2: 4 fields, the header has 3; quote fields"):
        load_histories(path)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("u,1,X,target\nu,2,Y,target\n", "already has a target on line 2"),
        ("u,1,X,favourite\n", "role 'favourite' is neither"),
        ("u,,X,history\n", "item_id is empty"),
    ],
)
def test_csv_role_and_id_problems(tmp_path, rows, expected):
    path = _csv(tmp_path, "user_id,item_id,title,role\n" + rows)
    with pytest.raises(HistoryFormatError, match=expected):
        load_histories(path)


def test_csv_duplicate_column_and_header_only(tmp_path):
    with pytest.raises(HistoryFormatError, match="appear twice"):
        load_histories(_csv(tmp_path, "user_id,item_id,title,title\nu,1,X,Y\n"))
    with pytest.raises(HistoryFormatError, match="no rows"):
        load_histories(_csv(tmp_path, "user_id,item_id,title\n", name="empty.csv"))


def test_csv_unknown_column_warns(tmp_path, caplog):
    path = _csv(tmp_path, "user_id,item_id,title,year\nu,1,X,1999\n")
    with caplog.at_level(logging.WARNING):
        assert list_users(path) == ["u"]
    assert "year" in caplog.text


# --- images -------------------------------------------------------------------------------------


def test_missing_image_is_found_at_load(tmp_path):
    path = _jsonl(tmp_path, json.dumps({"user_id": "u", "items": [{**GOOD_ITEM, "image_path": "posters/none.png"}]}))
    with pytest.raises(MissingImageError) as info:
        load_histories(path)
    message = str(info.value)
    assert f"{path}, line 1" in message and "posters/none.png" in message and str(tmp_path.resolve()) in message


def test_missing_image_in_csv(tmp_path):
    path = _csv(tmp_path, "user_id,item_id,title,image\nu,1,X,gone.png\n")
    with pytest.raises(MissingImageError, match="line 2"):
        load_histories(path)


def test_image_that_is_a_folder_is_missing(tmp_path):
    (tmp_path / "dir.png").mkdir()
    path = _csv(tmp_path, "user_id,item_id,title,image\nu,1,X,dir.png\n")
    with pytest.raises(MissingImageError):
        load_histories(path)


# --- chat transcripts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice: hi\nthis line has no speaker\n", r"line 2: 'this line has no speaker' is not 'speaker: text'"),
        ("   indented first line\n", "line 1: an indented line continues"),
        ("alice:\n", "line 1: 'alice' says nothing"),
        ("# only a comment\n", "no 'speaker: text' lines"),
        ("# scene: poster\nalice: hi\n", "unknown scene 'poster'"),
    ],
)
def test_bad_transcripts(tmp_path, text, expected):
    path = tmp_path / "chat.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(HistoryFormatError, match=expected):
        load_histories(path)


def test_json_chat_problems(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("[]", encoding="utf-8")
    with pytest.raises(HistoryFormatError, match="empty list"):
        load_histories(path)
    path.write_text('{"user_id": "a",\n "turns": [}', encoding="utf-8")
    with pytest.raises(HistoryFormatError, match=r"line 2, column \d+: malformed JSON"):
        load_histories(path)
    path.write_text('[{"user_id": "a", "turns": ["a: x"]}, {"user_id": "a", "turns": ["a: y"]}]', encoding="utf-8")
    with pytest.raises(HistoryFormatError, match="record 1: user 'a' already appeared as record 0"):
        load_histories(path)


# --- MovieLens atomic files ---------------------------------------------------------------------


def _atomic(tmp_path, inter: str,
            item: str | None = "item_id:token\tmovie_title:token_seq\tclass:token_seq\n1\tToy Story\tAnimation Comedy\n"):
    (tmp_path / "ds.inter").write_text(inter, encoding="utf-8")
    if item is not None:
        (tmp_path / "ds.item").write_text(item, encoding="utf-8")
    return tmp_path / "ds.inter"


HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


@pytest.mark.parametrize(
    ("inter", "expected"),
    [
        (HEADER + "1\t1\tfive\t10\n", r"line 2: rating 'five' is not a number"),
        (HEADER + "1\t1\t5\n", r"line 2: 3 tab-separated fields, the header names 4"),
        (HEADER + "1\t99\t5\t10\n", r"line 2: item '99' is not in ds.item"),
        ("uid:token\titem_id:token\n1\t1\n", r"line 1: .* lacks user_id"),
        (HEADER, "no interactions"),
    ],
)
def test_bad_atomic_files(tmp_path, inter, expected):
    with pytest.raises(HistoryFormatError, match=expected):
        load_histories(_atomic(tmp_path, inter), split=None)


def test_atomic_without_item_file(tmp_path):
    path = _atomic(tmp_path, HEADER + "1\t1\t5\t10\n", item=None)
    with pytest.raises(HistoryFormatError, match=r"needs .*ds.item"):
        load_histories(path)


def test_atomic_item_file_without_title_column(tmp_path):
    path = _atomic(tmp_path, HEADER + "1\t1\t5\t10\n", item="item_id:token\tyear:token\n1\t1995\n")
    with pytest.raises(HistoryFormatError, match="no title column"):
        load_histories(path)


def test_all_errors_share_the_base_class():
    assert issubclass(HistoryFormatError, PMGError) and issubclass(MissingImageError, PMGError)
