"""The one reader of α sweeps (pmg_core.alphas): text and numbers, empty entries and repeats refused."""

from __future__ import annotations

import pytest

from pmg_core.alphas import MAX_ALPHAS, parse_alphas, validate_alphas
from pmg_core.errors import InvalidSettingError
from pmg_core.scoring import candidate_alphas


def test_text_and_numbers_give_the_same_sweep():
    assert validate_alphas("0.33, 0.5,0.67") == validate_alphas([0.33, 0.5, 0.67]) == (0.33, 0.5, 0.67)
    assert validate_alphas(0.5) == (0.5,)
    assert validate_alphas("0.3 0.7") == (0.3, 0.7)  # spaces alone still separate


@pytest.mark.parametrize("text", ["0.5,,0.7", ",0.5", "0.5, 0.7,", "0.5 ; ; 0.7"])
def test_an_empty_entry_is_refused_naming_the_text_and_the_fix(text):
    with pytest.raises(InvalidSettingError, match=r"empty entry.*remove the extra comma") as info:
        parse_alphas(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("alphas", ["0.5, 0.5", "0.3, 0.5, .5", [0.5, 0.5], (0.2, 0.2)])
def test_a_repeated_alpha_is_refused_with_the_way_to_get_more_images(alphas):
    with pytest.raises(InvalidSettingError, match=r"given more than once.*give each alpha once.*batch_size"):
        validate_alphas(alphas)


def test_a_string_is_never_read_character_by_character():
    """What PMG Scorer did with '0.3, 0.7' before: float('.') of its second character."""
    with pytest.raises(InvalidSettingError, match=r"Cannot read 'abc' as an alpha"):
        validate_alphas("abc")
    with pytest.raises(InvalidSettingError, match=r"got dict.*comma-separated text"):
        validate_alphas({"a": 0.5})
    assert candidate_alphas(validate_alphas("0.3, 0.7"), 3) == [0.3, 0.7, 0.3]


def test_the_count_bound_comes_before_the_repeat_check():
    """1,000 copies of one value is a pasted range: the message says how many, not which repeats."""
    with pytest.raises(InvalidSettingError, match=r"1000 alpha values given; at most 16"):
        parse_alphas(", ".join(["0.5"] * 1000))
    assert len(parse_alphas(", ".join(str(i / 100) for i in range(MAX_ALPHAS)))) == MAX_ALPHAS

