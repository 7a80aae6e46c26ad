"""Loader mechanics on small files we author: formats, detection, splits, truncation, images."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pmg_core.errors import EmptyHistoryError, InvalidSettingError, UnknownUserError
from pmg_core.history import ChatTurn, Item, UserHistory
from pmg_core.loaders import (
    SplitRule,
    detect_format,
    list_users,
    load_histories,
    load_user,
    sliding_windows,
    write_csv,
    write_jsonl,
)


def _item(item_id: str, rating: float | None = None, timestamp: float | None = None) -> Item:
    return Item(item_id=item_id, title=f"Movie {item_id}", rating=rating, timestamp=timestamp)


# --- the example files -------------------------------------------------------------------------


def test_example_jsonl_loads_with_its_own_target_and_resolved_images(histories_dir):
    histories = load_histories(histories_dir / "movies.jsonl")
    assert list(histories) == ["ada", "bo", "cy"]
    ada = histories["ada"]
    assert ada.scene == "movie" and histories["cy"].scene == "generic"
    assert [item.title for item in ada.items] == [
        "Orbit of Ashes",
        "The Clockwork Lighthouse",
        "Midnight Tram",
        "Paper Moon Café",
    ]
    assert ada.target is not None and ada.target.title == "Starlings of Vega"
    assert ada.items[0].categories == ("Sci-Fi", "Thriller")
    assert ada.items[0].rating == 5.0 and ada.items[0].timestamp == 1700000000.0
    # Relative image paths start at the history file's folder and are checked at load.
    assert ada.images == [
        (histories_dir / "posters" / name).resolve()
        for name in ("orbit_of_ashes.png", "clockwork_lighthouse.png", "midnight_tram.png")
    ]
    assert all(path.is_file() for path in ada.images)


def test_example_csv_holds_the_same_histories_as_the_jsonl(histories_dir):
    assert load_histories(histories_dir / "movies.csv") == load_histories(histories_dir / "movies.jsonl")


def test_detect_format_by_extension_folder_and_content(histories_dir, movielens_path, tmp_path):
    assert detect_format(histories_dir / "movies.jsonl") == "jsonl"
    assert detect_format(histories_dir / "movies.csv") == "csv"
    assert detect_format(histories_dir / "chat.txt") == "chat"
    assert detect_format(histories_dir / "chats.json") == "chat"
    assert detect_format(movielens_path) == "movielens"
    assert detect_format(movielens_path / "ml-100k.item") == "movielens"
    # No extension: the first line decides.
    for name, text, expected in [
        ("a", '{"user_id": "u", "items": []}\n', "jsonl"),
        ("b", "user_id,item_id,title\nu,1,X\n", "csv"),
        ("c", "# header\nalice: hi\n", "chat"),
        ("d", '[\n {"user_id": "u", "turns": ["a: b"]}\n]', "chat"),
    ]:
        (tmp_path / name).write_text(text, encoding="utf-8")
        assert detect_format(tmp_path / name) == expected, name


def test_list_users_keeps_file_order(histories_dir):
    assert list_users(histories_dir / "movies.csv") == ["ada", "bo", "cy"]
    assert list_users(histories_dir / "chats.json") == ["mei", "jun"]


def test_scene_argument_overrides_the_file(histories_dir):
    histories = load_histories(histories_dir / "movies.jsonl", scene="clothing")
    assert {h.scene for h in histories.values()} == {"clothing"}
    with pytest.raises(InvalidSettingError, match="movie, clothing, sticker, generic"):
        load_histories(histories_dir / "movies.jsonl", scene="poster")


# --- chat --------------------------------------------------------------------------------------


def test_plain_text_transcript_headers_turns_and_continuations(histories_dir):
    mei = load_user(histories_dir / "chat.txt", "mei")
    assert mei.scene == "sticker" and mei.items == ()
    assert mei.conversation[0] == ChatTurn("mei", "I finally passed my driving test!!")
    assert mei.conversation[1].speaker == "jun" and "🎉" in mei.conversation[1].text
    assert mei.conversation[2].text.endswith("shaking the whole time\nbut the examiner said my parking was perfect")
    assert len(mei.conversation) == 5
    assert mei.target == Item(item_id="target", title="a cat celebrating", keywords=("happy", "jumping with joy"))


def test_transcript_without_user_header_is_named_after_the_file(tmp_path):
    path = tmp_path / "sam.txt"
    path.write_text("sam: hello\nkim: hi: how are you?\n", encoding="utf-8")
    history = load_user(path, "sam")
    assert history.conversation == (ChatTurn("sam", "hello"), ChatTurn("kim", "hi: how are you?"))


def test_json_chat_records_accept_turn_dicts_and_strings_and_items(histories_dir):
    histories = load_histories(histories_dir / "chats.json")
    assert histories["mei"].scene == "sticker"  # a chat's default scene
    assert histories["mei"].target.keywords == ("happy", "jumping with joy")
    jun = histories["jun"]
    assert jun.conversation[1] == ChatTurn("mei", "coffee first, then the world")
    assert [item.title for item in jun.items] == ["sleeping face", "hot beverage"]


def test_chat_jsonl_is_read_as_records(tmp_path):
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps({"user_id": "x", "turns": [{"speaker": "x", "text": "yo"}]}) + "\n", encoding="utf-8")
    history = load_user(path, "x", fmt="chat")
    assert history.conversation == (ChatTurn("x", "yo"),) and history.scene == "sticker"


# --- splits ------------------------------------------------------------------------------------


def test_reference_split_filters_sorts_and_takes_the_next_item():
    items = [
        _item("a", 5, 100),
        _item("b", 3, 500),  # filtered out: rating < 4
        _item("c", 4, 900),
        _item("d", 5, 300),
        _item("e", 4, 200),
        _item("f", 5, 50),
    ]
    history, target = SplitRule().split(items)
    # (-rating, -timestamp): d(5,300), a(5,100), f(5,50), c(4,900), e(4,200)
    assert [i.item_id for i in history] == ["d", "a", "f"]
    assert target.item_id == "c"


def test_reference_split_with_few_items_keeps_one_for_the_target():
    history, target = SplitRule().split([_item("a", 5, 1), _item("b", 4, 2)])
    assert [i.item_id for i in history] == ["a"] and target.item_id == "b"
    history, target = SplitRule().split([_item("a", 5, 1)])
    assert history == () and target.item_id == "a"
    assert SplitRule().split([_item("a", 1, 1)]) == ((), None)


def test_split_options_min_rating_none_max_history_none_and_no_target():
    items = [_item(str(i), rating=i % 5 + 1, timestamp=i) for i in range(8)]
    history, target = SplitRule(min_rating=None, max_history=None).split(items)
    assert len(history) == 7 and target is not None
    history, target = SplitRule(min_rating=None, target="none").split(items)
    assert len(history) == 3 and target is None
    history, target = SplitRule(min_rating=None, max_history=None, target="none").split(items)
    assert len(history) == 8 and target is None


def test_unrated_items_pass_the_filter_and_rank_after_rated_ones():
    items = [_item("u", None, 999), _item("r", 4, 1), _item("low", 2, 5)]
    history, target = SplitRule(max_history=None).split(items)
    assert [i.item_id for i in history] == ["r"] and target.item_id == "u"


def test_chronological_split_takes_the_latest_item_as_target():
    items = [_item("c", 5, 30), _item("a", 5, 10), _item("e", 5, 50), _item("b", 5, 20), _item("d", 5, 40)]
    history, target = SplitRule(order="chronological", max_history=3).split(items)
    assert [i.item_id for i in history] == ["b", "c", "d"] and target.item_id == "e"


def test_sliding_window_rule_and_all_windows():
    history = UserHistory("u", tuple(_item(str(i), 5, float(i)) for i in range(8)))
    latest = SplitRule.sliding_window(size=5).apply(history)
    assert [i.item_id for i in latest.items] == ["2", "3", "4", "5", "6"] and latest.target.item_id == "7"
    windows = sliding_windows(history, size=5)
    assert [([i.item_id for i in w.items], w.target.item_id) for w in windows] == [
        (["0", "1", "2", "3", "4"], "5"),
        (["1", "2", "3", "4", "5"], "6"),
        (["2", "3", "4", "5", "6"], "7"),
    ]
    short = UserHistory("s", (_item("x", 5, 2.0),), target=_item("y", 5, 1.0))
    (only,) = sliding_windows(short, size=5)
    assert [i.item_id for i in only.items] == ["y"] and only.target.item_id == "x"
    assert sliding_windows(UserHistory("t", (_item("z"),)), size=5) == []


def test_split_applies_to_a_file_with_its_own_target(histories_dir):
    # ada: 5,5,4,2 rated items plus an unrated target; the target joins the pool.
    ada = load_user(histories_dir / "movies.jsonl", "ada", split=SplitRule(max_history=2))
    assert [i.title for i in ada.items] == ["The Clockwork Lighthouse", "Orbit of Ashes"]
    assert ada.target.title == "Midnight Tram"


@pytest.mark.parametrize(
    "kwargs",
    [{"min_rating": "4"}, {"order": "random"}, {"max_history": 0}, {"target": "last"}, {"min_rating": float("nan")}],
)
def test_bad_split_settings_are_refused(kwargs):
    with pytest.raises(InvalidSettingError):
        SplitRule(**kwargs)


# --- max_items ---------------------------------------------------------------------------------


def test_max_items_keeps_the_most_relevant_and_logs_it(histories_dir, caplog):
    path = histories_dir / "movies.jsonl"
    with caplog.at_level(logging.INFO, logger="pmg_core.loaders"):
        ada = load_user(path, "ada", max_items=2)
    # Without a split the file order is oldest first: the most recent items stay.
    assert [i.title for i in ada.items] == ["Midnight Tram", "Paper Moon Café"]
    assert "kept the 2 most relevant of 4" in caplog.text
    ranked = load_user(path, "ada", max_items=1, split=SplitRule(max_history=None))
    # Rating order (-rating, -timestamp): the later of the two 5-star items is the most relevant.
    assert [i.title for i in ranked.items] == ["The Clockwork Lighthouse"]
    with pytest.raises(InvalidSettingError):
        load_user(path, "ada", max_items=0)


# --- users that are missing or empty -----------------------------------------------------------


def test_unknown_user_names_known_ids(histories_dir):
    with pytest.raises(UnknownUserError) as info:
        load_user(histories_dir / "movies.jsonl", "zed")
    message = str(info.value)
    assert "'zed'" in message and "'ada'" in message and "'bo'" in message and "3 user(s)" in message


def test_empty_history_after_filtering(histories_dir, caplog):
    path = histories_dir / "movies.jsonl"
    strict = SplitRule(min_rating=5, max_history=None)
    with pytest.raises(EmptyHistoryError, match="Relax the split"):
        load_user(path, "cy", split=strict)  # cy's ratings are 3 and 4
    with caplog.at_level(logging.WARNING):
        histories = load_histories(path, split=strict)
    assert set(histories) == {"ada", "bo"} and "skipped 1 of 3 users" in caplog.text and "cy" in caplog.text
    with pytest.raises(EmptyHistoryError, match="No user"):
        load_histories(path, split=SplitRule(min_rating=6))


def test_user_without_items_and_without_target_is_empty(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"user_id": "u", "items": []}\n', encoding="utf-8")
    with pytest.raises(EmptyHistoryError, match="no history items"):
        load_user(path, "u")


# --- writers -----------------------------------------------------------------------------------


def test_write_jsonl_makes_image_paths_relative_and_reads_back(tmp_path, histories_dir):
    histories = load_histories(histories_dir / "movies.jsonl")
    out = tmp_path / "copy" / "h.jsonl"
    (tmp_path / "copy" / "posters").mkdir(parents=True)
    moved = {}
    for uid, history in histories.items():
        items = []
        for item in history.items:
            if item.image_path is not None:
                local = tmp_path / "copy" / "posters" / item.image_path.name
                local.write_bytes(item.image_path.read_bytes())
                item = Item(**{**item.__dict__, "image_path": local.resolve()})
            items.append(item)
        moved[uid] = UserHistory(uid, tuple(items), history.scene, history.target)
    write_jsonl(out, moved.values())
    assert '"image_path": "posters/orbit_of_ashes.png"' in out.read_text(encoding="utf-8")
    assert load_histories(out) == moved


def test_write_csv_refuses_what_it_cannot_represent(tmp_path):
    from pmg_core.errors import HistoryFormatError

    chat = UserHistory("u", (), conversation=(ChatTurn("a", "b"),))
    with pytest.raises(HistoryFormatError, match="JSONL"):
        write_csv(tmp_path / "x.csv", [chat])
    piped = UserHistory("u", (Item("1", "t", categories=("a|b",)),))
    with pytest.raises(HistoryFormatError, match="cannot be written"):
        write_csv(tmp_path / "x.csv", [piped])
    assert not (tmp_path / "x.csv").exists()


def test_image_root_confines_image_paths(histories_dir, tmp_path):
    from pmg_core.errors import UnsafePathError

    # Inside the allowed folder: fine.
    assert load_histories(histories_dir / "movies.jsonl", image_root=histories_dir)
    # The same file, but images must lie in an unrelated folder: refused, naming it.
    with pytest.raises(UnsafePathError, match=str(tmp_path.resolve())):
        load_histories(histories_dir / "movies.jsonl", image_root=tmp_path)


def test_history_path_string_and_missing_path(tmp_path, histories_dir):
    from pmg_core.errors import MissingFileError

    assert "ada" in load_histories(str(histories_dir / "movies.jsonl"))
    with pytest.raises(MissingFileError, match="does not exist"):
        load_histories(tmp_path / "nope.jsonl")
    with pytest.raises(MissingFileError):
        list_users(Path("/definitely/not/here.csv"))


@pytest.mark.parametrize("bad", [0, -1, True, "3", 2.5])
def test_truncate_refuses_a_bad_max_items_even_when_nothing_would_be_dropped(bad):
    """max_items is checked before it is compared: a short history must not hide a bad setting."""
    from pmg_core.errors import InvalidSettingError
    from pmg_core.history import Item, UserHistory
    from pmg_core.loaders.split import truncate

    history = UserHistory("u1", (Item("a", "A"),))
    with pytest.raises(InvalidSettingError, match="max_items"):
        truncate(history, bad, newest_last=True)
