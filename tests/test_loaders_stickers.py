"""Real data: the sticker scene built from the Twemoji PNGs and emoji-data names in the installed packages."""

from __future__ import annotations

from collections import Counter

import pytest
from PIL import Image

from pmg_core.assets import twemoji_png_dir
from pmg_core.errors import HistoryFormatError, InvalidSettingError
from pmg_core.loaders import build_sticker_histories, detect_format, export_sticker_dataset, load_histories
from pmg_core.loaders.stickers import EMOTIONS, emoji_catalogue


def test_catalogue_holds_real_emoji_with_real_pngs():
    catalogue = emoji_catalogue()
    assert len(catalogue) > 1000
    by_name = {emoji.name: emoji for emoji in catalogue}
    cat = by_name["cat face"]
    assert cat.char == "🐱" and cat.theme == ("Animals & Nature", "animal-mammal")
    assert cat.png == twemoji_png_dir() / "1f431.png"
    with Image.open(cat.png) as image:
        assert image.size == (72, 72)
    assert not any(emoji.category in ("Flags", "Component") for emoji in catalogue)


def test_users_have_coherent_taste_and_a_target_from_their_favourite_theme():
    histories = build_sticker_histories(n_users=20, items_per_user=5, seed=0)
    assert len(histories) == 20 and len({h.user_id for h in histories}) == 20
    emotions = {emotion for emotion, _ in EMOTIONS}
    for history in histories:
        assert history.scene == "sticker" and len(history.items) == 5
        themes = Counter(item.categories for item in history.items)
        assert 1 <= len(themes) <= 2
        favourite, count = themes.most_common(1)[0]
        assert count >= 3  # the favourite theme dominates the history
        target = history.target
        assert target.categories == favourite
        assert target.item_id not in {item.item_id for item in history.items}
        assert target.keywords[0] in emotions and len(target.keywords) == 2
        assert all(item.image_path.is_file() for item in (*history.items, target))
        times = [item.timestamp for item in history.items]
        assert times == sorted(times)
    # Personalisation is meaningful: users differ in taste.
    assert len({Counter(i.categories for i in h.items).most_common(1)[0][0] for h in histories}) >= 8


def test_same_seed_same_users_other_seed_other_users():
    first = build_sticker_histories(n_users=5, seed=3)
    assert first == build_sticker_histories(n_users=5, seed=3)
    assert first != build_sticker_histories(n_users=5, seed=4)


def test_export_is_self_contained_and_loads_back(sticker_set):
    assert sorted(path.name for path in sticker_set.iterdir()) == ["ATTRIBUTION.txt", "history.jsonl", "images"]
    text = (sticker_set / "history.jsonl").read_text(encoding="utf-8")
    assert '"image_path": "images/' in text and str(twemoji_png_dir()) not in text
    attribution = (sticker_set / "ATTRIBUTION.txt").read_text(encoding="utf-8")
    assert "CC-BY 4.0" in attribution and "Twitter, Inc. and other contributors" in attribution
    assert detect_format(sticker_set) == "jsonl"
    loaded = load_histories(sticker_set)
    built = build_sticker_histories(n_users=6, seed=0)
    assert list(loaded) == [h.user_id for h in built]
    for original, copy in zip(built, loaded.values(), strict=True):
        assert [i.title for i in copy.items] == [i.title for i in original.items]
        assert copy.target.keywords == original.target.keywords
        for item in (*copy.items, copy.target):
            assert item.image_path.parent == (sticker_set / "images").resolve()
            assert item.image_path.read_bytes() == (twemoji_png_dir() / item.image_path.name).read_bytes()
    assert load_histories(sticker_set, fmt="sticker") == loaded


def test_export_folder_can_be_moved(sticker_set, tmp_path):
    import shutil

    moved = shutil.copytree(sticker_set, tmp_path / "ComfyUI" / "input" / "pmg_stickers")
    loaded = load_histories(moved)
    assert all(str(moved.resolve()) in str(h.items[0].image_path) for h in loaded.values())


def test_sticker_format_requires_images(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"user_id": "u", "items": [{"item_id": "1", "title": "cat"}]}\n', encoding="utf-8")
    with pytest.raises(HistoryFormatError, match="needs its image"):
        load_histories(tmp_path, fmt="sticker")
    assert load_histories(tmp_path)["u"].scene == "generic"


@pytest.mark.parametrize("kwargs", [{"n_users": 0}, {"items_per_user": 0}, {"items_per_user": 500}, {"n_users": 2.5}])
def test_bad_sticker_settings(kwargs):
    with pytest.raises(InvalidSettingError):
        build_sticker_histories(**kwargs)


def test_export_into_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(InvalidSettingError, match="not a folder"):
        export_sticker_dataset(target, n_users=1)
