"""Prompts per scene: structure, the rendered items, N, and overrides."""

from __future__ import annotations

import dataclasses

import pytest

from pmg_core.errors import InvalidSettingError
from pmg_core.history import Item
from pmg_core.prompts import (
    DEFAULT_PROMPTS,
    PROMPT_SETS,
    REFERENCE_MOVIE_PROMPTS,
    ChatRequest,
    preference_prompt,
    soft_prompt_text,
    target_prompt,
)

HISTORY = "1. Toy Story(Animation, Comedy): toys, friendship. 2. Heat(Crime)."


def test_reference_movie_prompt_is_verbatim():
    request = preference_prompt("movie", "<Items/>", 8, REFERENCE_MOVIE_PROMPTS)
    assert request.plain() == (
        "The assistant is helping the human generate keywords of movie lover's interests. "
        "### Human: A person watched some movies. Please provide 8 keywords to describe his movie interests. "
        'The example of output is "The keywords are: 1. Keyword 1. 2. Keyword 2. 3. Keyword 3." '
        '### Human: The movies and their information are "<Items/>". ### Assistant: The keywords are:'
    )


@pytest.mark.parametrize("prompt_set", PROMPT_SETS)
@pytest.mark.parametrize("n", [3, 8])
def test_preference_prompt_holds_items_and_n(prompt_set, n):
    request = preference_prompt(prompt_set, HISTORY, n)
    text = request.plain()
    assert HISTORY in text
    assert f" {n} " in text
    assert request.system and request.assistant_prefix
    assert "{" not in text  # every placeholder filled


def test_clothing_prompt_asks_for_style_not_products():
    text = preference_prompt("clothing", "Red wool coat", 8).plain()
    for word in ("theme", "color", "material", "appearance style", "excluding specific product types"):
        assert word in text


@pytest.mark.parametrize("prompt_set", PROMPT_SETS)
def test_target_prompt_holds_the_item(prompt_set):
    item = Item("1", "Toy Story", ("Animation", "Comedy"), description="Released in 1995.")
    text = target_prompt(prompt_set, item, 10).plain()
    assert "Toy Story" in text and " 10 " in text and "Released in 1995." in text
    if prompt_set in ("movie", "clothing", "generic"):
        assert "Animation, Comedy" in text
    assert "  " not in text and "()" not in text


def test_movie_target_prompt_excludes_character_names():
    assert "Character names should be excluded" in target_prompt("movie", Item("1", "Heat"), 10).plain()
    assert "()" not in target_prompt("movie", Item("1", "Heat"), 10).plain()


def test_soft_prompt_text():
    assert soft_prompt_text("movie", "<Items/>") == (
        'A person watched the following movies "<Items/>". Please describe his movie interests.'
    )
    for prompt_set in PROMPT_SETS:
        assert HISTORY in soft_prompt_text(prompt_set, HISTORY)


def test_templates_can_be_overridden_and_change_the_digest():
    custom = dataclasses.replace(DEFAULT_PROMPTS["movie"], preference_data="Films: {items} (want {n})")
    request = preference_prompt("movie", "A, B", 4, custom)
    assert request.turns[1] == "Films: A, B (want 4)"
    assert custom.digest() != DEFAULT_PROMPTS["movie"].digest()
    assert DEFAULT_PROMPTS["movie"].digest() == DEFAULT_PROMPTS["movie"].digest()


def test_bad_settings():
    with pytest.raises(InvalidSettingError, match="positive integer"):
        preference_prompt("movie", HISTORY, 0)
    with pytest.raises(InvalidSettingError, match="scene"):
        preference_prompt("comics", HISTORY, 8)
    bad = dataclasses.replace(DEFAULT_PROMPTS["movie"], soft_prompt="{user}")
    with pytest.raises(InvalidSettingError, match=r"\{user\}"):
        soft_prompt_text("movie", HISTORY, bad)


def test_for_llm_uses_the_chat_template(tiny_llm):
    """Mechanics: the request goes through the model's chat template, answer primed."""
    request = ChatRequest(system="S", turns=("one", "two"), assistant_prefix="The keywords are:")
    text = request.for_llm(tiny_llm)
    assert "<|im_start|>user\none\ntwo<|im_end|>" in text
    assert text.endswith("The keywords are:")
