"""The keyword classes of the keyword-quality measurement (pmg_core.evaluation.keyword_quality)."""

from __future__ import annotations

import pytest

from pmg_core.evaluation.keyword_quality import CLASSES, keyword_class, keyword_classes, quality_table
from pmg_core.history import Item, UserHistory

HISTORY = UserHistory(
    user_id="u1",
    items=(
        Item("1", "Blade Runner", categories=("Sci-Fi", "Thriller")),
        Item("2", "Alien", categories=("Horror", "Sci-Fi")),
    ),
    scene="movie",
    target=Item("3", "The Big Sleep", categories=("Film-Noir", "Mystery")),
)
PROMPT_WORDS = frozenset({"mood", "color", "character", "expression", "emotion", "movie", "keywords"})


@pytest.mark.parametrize(
    ("keyword", "expected"),
    [
        ("dystopian neon cities", "abstraction"),
        ("Blade Runner", "copy"),
        ("runner", "copy"),  # a word of one item's title
        ("Big Sleep", "copy"),  # the target's title counts too
        ("Horror", "category"),
        ("sci-fi", "category"),
        ("mood", "echo"),
        ("Character expressions", "echo"),  # plurals of prompt words
        ("Hor", "junk"),  # cut off: the start of "horror"
        ("The Big Sleep Movie Movie Movie", "junk"),
        ("Blade Blade Runner", "copy"),  # repeated words inside a title's words are still the title's
        ("Character names should be excluded from this list", "junk"),  # a sentence
        ("1984", "junk"),
    ],
)
def test_each_keyword_gets_the_class_that_describes_it(keyword, expected):
    assert keyword_class(keyword, HISTORY, PROMPT_WORDS) == expected


def test_a_keyword_cut_beside_its_whole_word_in_the_same_list_is_junk():
    assert keyword_classes(["Tranqu", "Tranquility"], HISTORY, PROMPT_WORDS) == ["junk", "abstraction"]


def test_the_table_gives_every_class_a_share_and_the_shares_add_up():
    table = quality_table(["copy", "copy", "echo", "abstraction"])
    assert table["keywords"] == 4 and set(table["shares"]) == set(CLASSES)
    assert table["shares"]["copy"] == 0.5 and table["shares"]["junk"] == 0.0
    assert sum(table["shares"].values()) == pytest.approx(1.0)
    assert quality_table([])["shares"]["copy"] == 0.0
