"""Behaviours -> text per scene, target texts and negative prompts."""

from __future__ import annotations

import pytest

from pmg_core.errors import EmptyHistoryError, InvalidSettingError
from pmg_core.history import ChatTurn, Item, UserHistory
from pmg_core.render import (
    SceneTemplates,
    fill,
    negative_prompt,
    render_history,
    render_target_text,
)

TOY = Item("1", "Toy Story", ("Animation", "Comedy"), keywords=("toys", "friendship", "rivalry", "cowboy", "space", "boy"))
HEAT = Item("2", "Heat", ("Crime",))
NOGENRE = Item("3", "Mystery Film", keywords=("fog",))


def test_movie_layout_is_the_reference_one():
    history = UserHistory("u", (TOY, HEAT, NOGENRE), scene="movie")
    assert render_history(history) == (
        "1. Toy Story(Animation, Comedy): toys, friendship, rivalry, cowboy, space. "
        "2. Heat(Crime). "
        "3. Mystery Film: fog."
    )


def test_clothing_is_the_titles():
    items = (Item("a", "Red wool coat", ("coat",)), Item("b", "Linen shirt, white"))
    assert render_history(UserHistory("u", items, scene="clothing")) == "Red wool coat; Linen shirt, white"


def test_sticker_names_and_chat():
    stickers = (Item("1f600", "grinning face"), Item("1f62d", "loudly crying face"))
    assert render_history(UserHistory("u", stickers, scene="sticker")) == "grinning face, loudly crying face"
    chat = (ChatTurn("alice", "I passed my exam!"), ChatTurn("bob", "Congrats\n  you did it"))
    only_chat = UserHistory("u", (), scene="sticker", conversation=chat)
    assert render_history(only_chat) == "alice: I passed my exam! bob: Congrats you did it"
    both = UserHistory("u", stickers, scene="sticker", conversation=chat)
    text = render_history(both)
    assert text.startswith("Conversation: alice: I passed my exam!")
    assert text.endswith("Stickers used: grinning face, loudly crying face")


def test_generic_uses_categories_and_keywords():
    text = render_history(UserHistory("u", (Item("x", "Teapot", ("kitchen",), keywords=("ceramic",)),)))
    assert text == "1. Teapot(kitchen): ceramic."


def test_templates_can_be_overridden():
    templates = SceneTemplates(item="<{title}|{description}>", item_without_keywords="<{title}>", joiner="+")
    items = (Item("1", "A", keywords=("k",), description="d"), Item("2", "B"))
    assert render_history(UserHistory("u", items, scene="movie"), templates) == "<A|d>+<B>"
    assert fill("{{literal}} {x}", {"x": 1}) == "{literal} 1"


def test_unknown_placeholder_and_attribute_access_are_refused():
    with pytest.raises(InvalidSettingError, match=r"\{oops\}"):
        render_history(UserHistory("u", (HEAT,), scene="movie"), SceneTemplates(item="{oops}", item_without_keywords="{oops}"))
    # str.format would resolve this; our filler leaves it as text (it is not a placeholder).
    assert fill("{title.__class__}", {"title": "x"}) == "{title.__class__}"


def test_empty_history_is_an_error():
    with pytest.raises(EmptyHistoryError, match="no history items"):
        render_history(UserHistory("u", (), scene="movie"))


def test_unknown_scene():
    with pytest.raises(InvalidSettingError, match="scene"):
        render_history(UserHistory("u", (HEAT,), scene="comics"))
    with pytest.raises(InvalidSettingError):
        negative_prompt("comics")


def test_target_texts_per_scene():
    kws = ["blue sky", "toys", "rivalry", "cowboy", "space", "sixth"]
    assert render_target_text(TOY, kws, "movie") == (
        "movie poster, Toy Story, named 'Toy Story', blue sky, toys, rivalry, cowboy, space"
    )
    assert render_target_text(Item("c", "Wool coat"), kws, "clothing") == "costume, blue sky, toys, rivalry, cowboy, space"
    assert render_target_text(Item("c", "Wool coat"), [], "clothing") == "costume, Wool coat"
    assert render_target_text(Item("e", "joy"), ["smiling", "waving", "jumping", "x"], "sticker") == (
        "a cute emoji, sticker, white background, joy, smiling, waving, jumping"
    )
    assert render_target_text(Item("g", "Teapot", ("kitchen",)), ["ceramic"], "generic") == "Teapot, kitchen, ceramic"


def test_negative_prompts():
    assert negative_prompt("movie") == "broken text, unclear, twisted"
    for scene in ("clothing", "sticker", "generic"):
        assert negative_prompt(scene) and "blurry" in negative_prompt(scene)
