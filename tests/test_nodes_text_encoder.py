"""The TextEncoder protocol over a real ComfyUI CLIP (tiny random weights: mechanics only)."""

from __future__ import annotations

import pytest
import torch

from fixtures_nodes import TINY_CLIP_WIDTH, pack_submodule


@pytest.fixture(scope="module")
def text_encoder_module(pack_module):
    return pack_submodule("nodes.comfy_text_encoder")


def test_width_comes_from_an_encoded_empty_prompt(text_encoder_module, comfy_clip):
    encoder = text_encoder_module.ComfyTextEncoder(comfy_clip)
    assert encoder.width == TINY_CLIP_WIDTH


def test_encode_matches_comfyui_own_encoding(text_encoder_module, comfy_clip):
    """The adapter returns what CLIPTextEncode would compute for the same prompt."""
    encoder = text_encoder_module.ComfyTextEncoder(comfy_clip)
    encoded = encoder.encode(["a cat in a hat"])
    cond, pooled = comfy_clip.encode_from_tokens(comfy_clip.tokenize("a cat in a hat"), return_pooled=True)
    assert encoded.embeddings.shape == (1, 77, TINY_CLIP_WIDTH)
    assert torch.allclose(encoded.embeddings, cond.float())
    assert torch.allclose(encoded.pooled, pooled.float().reshape(1, -1))


def test_batch_of_texts_with_different_window_counts(text_encoder_module, comfy_clip):
    """A prompt longer than 77 tokens spans two windows; the short one is repeated to match."""
    encoder = text_encoder_module.ComfyTextEncoder(comfy_clip)
    short, long = "a cat", " ".join(["cat"] * 100)
    encoded = encoder.encode([short, long])
    assert encoded.embeddings.shape == (2, 154, TINY_CLIP_WIDTH)
    alone = encoder.encode([short]).embeddings
    assert torch.equal(encoded.embeddings[0, :77], alone[0])
    assert torch.equal(encoded.embeddings[0, 77:], alone[0])
    assert encoded.pooled.shape == (2, TINY_CLIP_WIDTH)


def test_brackets_are_read_literally(text_encoder_module, comfy_clip):
    """LLM keywords with brackets must not become ComfyUI emphasis weights."""
    escape = text_encoder_module.escape_prompt_weights
    assert escape("noir (1940s)") == "noir \\(1940s\\)"
    tokens = comfy_clip.tokenize(escape("(noir:1.5)"))
    weights = {weight for window in tokens["l"] for _, weight in window}
    assert weights == {1.0}
    raw_weights = {weight for window in comfy_clip.tokenize("(noir:1.5)")["l"] for _, weight in window}
    assert 1.5 in raw_weights


def test_rejects_something_that_is_not_a_clip(text_encoder_module, pack_module):
    errors = pack_submodule("pmg_core.errors")
    with pytest.raises(errors.EmbeddingValueError, match="CLIP"):
        text_encoder_module.ComfyTextEncoder(object())
    with pytest.raises(TypeError):
        text_encoder_module.ComfyTextEncoder.encode(None, "a string")


def test_the_width_of_a_loaded_text_encoder_is_read_once(text_encoder_module, comfy_clip, monkeypatch):
    """A second encoder over the same loaded CLIP knows the width without encoding anything."""
    text_encoder_module.ComfyTextEncoder(comfy_clip).encode(["a cat"])
    calls = []
    real = comfy_clip.encode_from_tokens
    monkeypatch.setattr(comfy_clip, "encode_from_tokens", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert text_encoder_module.ComfyTextEncoder(comfy_clip).width == TINY_CLIP_WIDTH
    assert calls == []
