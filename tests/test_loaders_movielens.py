"""Real data: MovieLens-100K as shipped inside the installed recbole package (read by path).

The expected values are computed here from the raw atomic files, independently
of the loader, so the tests check the reference split on real interactions.
"""

from __future__ import annotations

import pytest

from pmg_core.errors import UnknownUserError
from pmg_core.loaders import SplitRule, detect_format, list_users, load_histories, load_user
from pmg_core.loaders.movielens import natural_title


def _raw_interactions(movielens_path, user_id: str) -> list[tuple[str, float, float]]:
    """(item_id, rating, timestamp) of one user, straight from ml-100k.inter."""
    rows = []
    with open(movielens_path / "ml-100k.inter", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            user, item, rating, timestamp = line.rstrip("\n").split("\t")
            if user == user_id:
                rows.append((item, float(rating), float(timestamp)))
    return rows


def _raw_items(movielens_path) -> dict[str, tuple[str, str, str]]:
    with open(movielens_path / "ml-100k.item", encoding="utf-8") as handle:
        header = next(handle).rstrip("\n").split("\t")
        assert header == ["item_id:token", "movie_title:token_seq", "release_year:token", "class:token_seq"]
        return {cells[0]: (cells[1], cells[2], cells[3]) for cells in (line.rstrip("\n").split("\t") for line in handle)}


def test_all_943_users_are_listed_in_numeric_order(movielens_path):
    users = list_users(movielens_path)
    assert len(users) == 943
    assert users[:3] == ["1", "2", "3"] and users[-1] == "943"
    assert detect_format(movielens_path / "ml-100k.inter") == "movielens"


def test_user_1_follows_the_reference_split(movielens_path):
    raw = _raw_interactions(movielens_path, "1")
    assert len(raw) == 272  # user 1's interactions in ml-100k
    user = load_user(movielens_path, "1")
    assert user.scene == "movie" and len(user.items) == 3 and user.target is not None
    chosen = [*user.items, user.target]
    # All ratings >= 4, ordered by (-rating, -timestamp) through history and target.
    assert all(item.rating >= 4 for item in chosen)
    keys = [(item.rating, item.timestamp) for item in chosen]
    assert keys == sorted(keys, reverse=True)
    # No interaction that was left out ranks strictly before the target.
    chosen_ids = {item.item_id for item in chosen}
    target_key = (user.target.rating, user.target.timestamp)
    assert all((r, t) <= target_key for item, r, t in raw if item not in chosen_ids and r >= 4)
    # The items are real interactions of user 1 with their rating and timestamp.
    by_id = {item: (r, t) for item, r, t in raw}
    assert all(by_id[item.item_id] == (item.rating, item.timestamp) for item in chosen)


def test_titles_and_genres_are_parsed_from_the_item_file(movielens_path):
    raw_items = _raw_items(movielens_path)
    user = load_user(movielens_path, "1", split=SplitRule(min_rating=None, max_history=None, target="none"))
    assert len(user.items) == 272
    for item in user.items:
        title, year, genres = raw_items[item.item_id]
        assert item.title == natural_title(title)
        assert item.categories == tuple(g for g in genres.split(" ") if g and g != "unknown")
        assert item.description == f"Released in {year}."
    toy_story = next(item for item in user.items if item.item_id == "1")
    assert toy_story.title == "Toy Story"
    assert toy_story.categories == ("Animation", "Children's", "Comedy")


def test_trailing_articles_move_to_the_front():
    assert natural_title("Shawshank Redemption, The") == "The Shawshank Redemption"
    assert natural_title("Fish Called Wanda, A") == "A Fish Called Wanda"
    assert natural_title("Horseman on the Roof, The (Hussard sur le toit, Le)") == (
        "The Horseman on the Roof (Hussard sur le toit, Le)"
    )
    assert natural_title("Avventura, L'") == "L'Avventura"
    assert natural_title("Toy Story") == "Toy Story"


def test_all_users_load_and_the_one_without_enough_high_ratings_is_skipped(movielens_path, caplog):
    histories = load_histories(movielens_path)
    # User 685 rated at most one movie >= 4, which leaves no history beside the target.
    assert sum(r >= 4 for _, r, _ in _raw_interactions(movielens_path, "685")) <= 1
    assert len(histories) == 942 and "685" not in histories
    assert "skipped 1 of 943" in caplog.text and "685" in caplog.text
    for history in histories.values():
        assert 1 <= len(history.items) <= 3 and history.target is not None
        assert all(item.rating >= 4 for item in history.items)


def test_split_options_on_real_data(movielens_path):
    chrono = load_user(movielens_path, "1", split=SplitRule.sliding_window(size=5))
    assert len(chrono.items) == 5
    times = [item.timestamp for item in (*chrono.items, chrono.target)]
    assert times == sorted(times)
    assert chrono.target.timestamp == max(t for _, _, t in _raw_interactions(movielens_path, "1"))
    capped = load_user(movielens_path, "1", split=SplitRule(max_history=None), max_items=10)
    assert len(capped.items) == 10 and all(item.rating == 5 for item in capped.items)


def test_any_atomic_file_names_the_data_set(movielens_path):
    by_item = load_user(movielens_path / "ml-100k.item", "1")
    by_user = load_user(movielens_path / "ml-100k.user", 1)
    assert by_item == by_user == load_user(movielens_path, "1")


def test_unknown_movielens_user(movielens_path):
    with pytest.raises(UnknownUserError, match=r"'9999' is not in .* 943 user\(s\), e.g. '1', '2'"):
        load_user(movielens_path, 9999)
