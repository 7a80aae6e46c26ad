"""Condition assembly and the alpha sweep.

These tests use the tiny random CLIP text encoder (width 32): they check the
mechanics (shapes, scaling rule, validation), not what a real encoder produces.
"""

from __future__ import annotations

import math

import pytest
import torch

from pmg_core.conditioning import (
    ConditionWeights,
    EncodedText,
    PMGConditions,
    TextEncoder,
    build_conditions,
    negative_conditions,
    parse_alphas,
    tile_to_length,
)
from pmg_core.errors import AdapterMismatchError, EmbeddingValueError, InvalidSettingError, PMGError

TARGET = "movie poster, Heat, named 'Heat', crime, heist, los angeles"
PREFERENCE = "crime, noir, thriller, detective"


def soft(k=4, width=32, seed=0):
    return torch.randn(k, width, generator=torch.Generator().manual_seed(seed))


def test_diffusers_text_encoder_matches_protocol_and_clip_shape(tiny_text_encoder):
    """DiffusersTextEncoder reads its width from the model and returns CLIP's [B, 77, D] + pooled [B, D]."""
    assert isinstance(tiny_text_encoder, TextEncoder)
    assert tiny_text_encoder.width == 32
    out = tiny_text_encoder.encode(["a photo of a cat", "a dog"])
    assert isinstance(out, EncodedText)
    assert out.embeddings.shape == (2, 77, 32)
    assert out.pooled.shape == (2, 32)
    assert not out.embeddings.requires_grad


def test_diffusers_text_encoder_matches_pipeline_encode_prompt(tiny_sd, tiny_text_encoder):
    """The condition is exactly what StableDiffusionPipeline.encode_prompt computes for the same text."""
    ours = tiny_text_encoder.encode([TARGET]).embeddings
    theirs, _ = tiny_sd.encode_prompt(TARGET, "cpu", 1, False)
    torch.testing.assert_close(ours, theirs)


def test_conditions_shape_segments_and_pooled(tiny_text_encoder):
    alphas = [0.3, 0.5, 0.7]
    cond = build_conditions(tiny_text_encoder, TARGET, PREFERENCE, soft(), ConditionWeights(), alphas)
    assert isinstance(cond, PMGConditions)
    assert cond.embeddings.shape == (3, 77 + 4 + 77, 32)
    assert cond.segments == (("target", 77), ("soft", 4), ("preference", 77))
    assert cond.alphas == (0.3, 0.5, 0.7)
    target = tiny_text_encoder.encode([TARGET])
    assert cond.pooled.shape == (3, 32)
    for row in cond.pooled:  # pooled comes from the target text, unscaled, for every alpha
        torch.testing.assert_close(row, target.pooled[0])


def test_alpha_half_is_plain_concatenation(tiny_text_encoder):
    s = soft()
    cond = build_conditions(tiny_text_encoder, TARGET, PREFERENCE, s.unsqueeze(0), ConditionWeights(), [0.5])
    expected = torch.cat(
        [tiny_text_encoder.encode([TARGET]).embeddings, s[None], tiny_text_encoder.encode([PREFERENCE]).embeddings],
        dim=1,
    )
    torch.testing.assert_close(cond.embeddings, expected)


def test_alpha_scaling_rule_per_part(tiny_text_encoder):
    """Target scaled by w_t*2(1-a), soft by w_i*2a, preference by w_p*2a; a=0 zeroes the user's parts."""
    s = soft()
    weights = ConditionWeights(target=1.5, soft=0.5, preference=2.0)
    alphas = [0.0, 0.25, 1.0]
    cond = build_conditions(tiny_text_encoder, TARGET, PREFERENCE, s, weights, alphas)
    target = tiny_text_encoder.encode([TARGET]).embeddings[0]
    preference = tiny_text_encoder.encode([PREFERENCE]).embeddings[0]
    for row, alpha in zip(cond.embeddings, alphas, strict=True):
        torch.testing.assert_close(row[:77], target * 1.5 * 2 * (1 - alpha))
        torch.testing.assert_close(row[77:81], s * 0.5 * 2 * alpha)
        torch.testing.assert_close(row[81:], preference * 2.0 * 2 * alpha)
    assert torch.count_nonzero(cond.embeddings[0, 77:]) == 0
    assert torch.count_nonzero(cond.embeddings[2, :77]) == 0


def test_optional_parts_are_left_out(tiny_text_encoder):
    only_target = build_conditions(tiny_text_encoder, TARGET, None, None, None, [0.5])
    assert only_target.segments == (("target", 77),)
    assert only_target.embeddings.shape == (1, 77, 32)
    soft_only = build_conditions(tiny_text_encoder, TARGET, "   ", soft(k=2), None, [0.5])
    assert soft_only.segments == (("target", 77), ("soft", 2))


def test_soft_width_mismatch_names_both_widths(tiny_text_encoder):
    with pytest.raises(AdapterMismatchError) as excinfo:
        build_conditions(tiny_text_encoder, TARGET, PREFERENCE, soft(width=768), None, [0.5])
    message = str(excinfo.value)
    assert "768" in message and "32" in message


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_soft_embeddings_are_rejected(tiny_text_encoder, bad):
    s = soft()
    s[1, 3] = bad
    with pytest.raises(EmbeddingValueError, match="NaN/inf"):
        build_conditions(tiny_text_encoder, TARGET, PREFERENCE, s, None, [0.5])


def test_soft_embeddings_of_wrong_rank_are_rejected(tiny_text_encoder):
    with pytest.raises(EmbeddingValueError, match=r"\[k, D\]"):
        build_conditions(tiny_text_encoder, TARGET, PREFERENCE, torch.zeros(2, 4, 32), None, [0.5])


@pytest.mark.parametrize("alphas", [[], [1.2], [-0.1], [float("nan")]])
def test_bad_alphas_are_rejected(tiny_text_encoder, alphas):
    with pytest.raises(InvalidSettingError, match="[Aa]lpha"):
        build_conditions(tiny_text_encoder, TARGET, PREFERENCE, soft(), None, alphas)


def test_negative_weights_are_rejected(tiny_text_encoder):
    with pytest.raises(InvalidSettingError, match="preference condition weight"):
        build_conditions(tiny_text_encoder, TARGET, PREFERENCE, soft(), ConditionWeights(preference=-1), [0.5])


def test_negative_conditions_match_positive_shape(tiny_text_encoder):
    cond = build_conditions(tiny_text_encoder, TARGET, PREFERENCE, soft(), None, [0.2, 0.8])
    negative = negative_conditions(tiny_text_encoder, "broken text, unclear, twisted", cond)
    assert negative.embeddings.shape == cond.embeddings.shape
    encoded = tiny_text_encoder.encode(["broken text, unclear, twisted"]).embeddings[0]
    for row in negative.embeddings:  # 158 = two whole copies + the last position 4 more times
        torch.testing.assert_close(row[:77], encoded)
        torch.testing.assert_close(row[77:154], encoded)
        torch.testing.assert_close(row[154:], encoded[-1:].expand(4, -1))


def test_tile_to_length_keeps_cross_attention_output_for_whole_copies():
    """Attention over a sequence repeated r times equals attention over one copy."""
    keys = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(1))
    query = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(2))
    tiled = tile_to_length(keys, 15)
    assert tiled.shape == (1, 15, 8)
    once = torch.nn.functional.scaled_dot_product_attention(query, keys, keys)
    thrice = torch.nn.functional.scaled_dot_product_attention(query, tiled, tiled)
    torch.testing.assert_close(once, thrice)
    assert tile_to_length(keys, 3).shape == (1, 3, 8)


def test_parse_alphas_accepts_user_spacing():
    assert parse_alphas("0.3, 0.5,0.7") == [0.3, 0.5, 0.7]
    assert parse_alphas(" 0 ;1  .5 ") == [0.0, 1.0, 0.5]
    assert parse_alphas("2e-1") == [0.2]


@pytest.mark.parametrize(
    "text, piece",
    [
        ("0.3, abc", "abc"),
        ("__import__('os')", "__import__('os')"),
        ("0.5, nan", "nan"),
        ("1/2", "1/2"),
    ],
)
def test_parse_alphas_rejects_junk_naming_it(text, piece):
    with pytest.raises(InvalidSettingError) as excinfo:
        parse_alphas(text)
    assert repr(piece) in str(excinfo.value)
    assert "0.3, 0.5, 0.7" in str(excinfo.value)  # the message shows the expected form


@pytest.mark.parametrize("text", ["", "  , ", "1.5", "-0.2"])
def test_parse_alphas_rejects_empty_and_out_of_range(text):
    with pytest.raises(InvalidSettingError):
        parse_alphas(text)


def test_errors_are_pmg_errors():
    assert issubclass(InvalidSettingError, PMGError) and issubclass(InvalidSettingError, ValueError)
    assert math.isclose(parse_alphas("0.6666")[0], 0.6666)


def test_gradients_flow_to_soft_embeddings(tiny_text_encoder):
    """Training builds conditions from adapter outputs: the soft part must stay differentiable."""
    s = soft().requires_grad_(True)
    cond = build_conditions(tiny_text_encoder, TARGET, PREFERENCE, s, None, [0.25, 0.75])
    cond.embeddings.sum().backward()
    # d(sum)/d(soft) = sum over alphas of w_i * 2a = 0.5 + 1.5
    torch.testing.assert_close(s.grad, torch.full_like(s, 2.0))


def test_alpha_sweeps_are_bounded_with_the_fix_named(tiny_text_encoder):
    """1,000 alphas (a typo or a pasted range) is one clear error, not 1,000 images."""
    from pmg_core.conditioning import MAX_ALPHAS

    assert MAX_ALPHAS == 16
    assert len(parse_alphas(", ".join(str(i / 100) for i in range(MAX_ALPHAS)))) == MAX_ALPHAS
    with pytest.raises(InvalidSettingError, match=r"1000 alpha values given; at most 16 .*Give 16 or fewer"):
        parse_alphas(", ".join(["0.5"] * 1000))
    with pytest.raises(InvalidSettingError, match=r"17 alpha values given"):
        build_conditions(tiny_text_encoder, TARGET, PREFERENCE, soft(), None, [0.5] * 17)
