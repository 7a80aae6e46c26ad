"""Bounds and interruption of PMG's condition build: one prompt cannot stall the server.

A text part (target, preference) may span at most ``max_windows`` encoder windows of 77
tokens; a megabyte is refused by its character count before the tokenizer sees it, a
text of a few windows too many by its token count. ``check_interrupt`` runs before each
encoding (the node passes ComfyUI's interrupt check). Real ComfyUI CLIP (tiny weights).
"""

from __future__ import annotations

import pytest

from fixtures_nodes import pack_submodule


class Interrupted(Exception):
    pass


def interrupt_now():
    raise Interrupted


@pytest.fixture(scope="module")
def parts(pack_module, comfy_clip):
    conditioning = pack_submodule("pmg_core.conditioning")
    encoder = pack_submodule("nodes.comfy_text_encoder").ComfyTextEncoder(comfy_clip)
    return conditioning, encoder, pack_submodule("pmg_core.errors").InvalidSettingError


def test_a_megabyte_target_is_refused_before_any_encoding(parts):
    conditioning, encoder, InvalidSettingError = parts
    calls = []
    with pytest.raises(InvalidSettingError) as info:
        conditioning.build_conditions(encoder, "cat " * 262_144, "noir", None, check_interrupt=lambda: calls.append(1))
    message = str(info.value)
    assert "The target text is 1,048,576 characters long" in message
    assert "at most 8 encoder window(s) of 77 tokens" in message and "max_text_windows" in message
    assert "target_text" in message and "title" in message
    assert calls == []  # refused before the first encode


def test_a_preference_over_the_token_bound_is_refused_with_its_token_count(parts):
    conditioning, encoder, InvalidSettingError = parts
    long_text = " ".join(["cat"] * 700)  # 700 tokens: 10 windows, few enough characters to be tokenized
    with pytest.raises(InvalidSettingError, match=r"The preference text is 770 tokens long.*at most 8 encoder"):
        conditioning.build_conditions(encoder, "a cat", long_text, None)
    raised = conditioning.build_conditions(encoder, "a cat", long_text, None, max_windows=10)
    assert raised.segments == (("target", 77), ("preference", 770))


@pytest.mark.parametrize("bad", [0, 65, 2.5, True])
def test_the_bound_itself_is_checked(parts, bad):
    conditioning, encoder, InvalidSettingError = parts
    with pytest.raises(InvalidSettingError, match=r"max_text_windows is .*whole number from 1 to 64"):
        conditioning.build_conditions(encoder, "a cat", None, None, max_windows=bad)


def test_interruption_is_checked_before_each_encoding(parts):
    conditioning, encoder, _ = parts
    calls = []
    conditioning.build_conditions(encoder, "a cat", "noir", None, weighting="interpolate",
                                  check_interrupt=lambda: calls.append(1))
    assert len(calls) == 3  # target, preference, the empty prompt of 'interpolate'

    def interrupt_at_second():
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
    calls.clear()
    with pytest.raises(Interrupted):
        conditioning.build_conditions(encoder, "a cat", "noir", None, check_interrupt=interrupt_at_second)
    assert len(calls) == 2  # stopped before the preference was encoded
    like = conditioning.build_conditions(encoder, "a cat", None, None)
    with pytest.raises(Interrupted):
        conditioning.negative_conditions(encoder, "blurry", like, check_interrupt=interrupt_now)
