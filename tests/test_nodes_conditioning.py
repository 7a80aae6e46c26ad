"""PMGConditioning and PMGSoftPromptEncoder on a tiny real ComfyUI CLIP and a tiny random Llama (mechanics only)."""

from __future__ import annotations

import pytest
import torch

from fixtures_nodes import TINY_CLIP_WIDTH, make_bundle


@pytest.fixture(scope="module")
def conditioning(pmg_pack):
    return pmg_pack.nodes["PMGConditioning"]


@pytest.fixture(scope="module")
def encoder_node(pmg_pack):
    return pmg_pack.nodes["PMGSoftPromptEncoder"]


def _run(conditioning, clip, **overrides):
    kwargs = dict(clip=clip, w_target=1.0, w_soft=1.0, w_preference=1.0, alphas="0, 0.5, 1")
    kwargs.update(overrides)
    return conditioning.execute(**kwargs).args


def test_one_condition_row_per_alpha_as_a_native_batch(conditioning, pmg_pack, comfy_clip):
    """positive is [[cond [A, T, D], {pooled_output: [A, P]}]] and the negative has the same shape."""
    bundle = make_bundle(pmg_pack)
    soft = pmg_pack.module.nodes.types.SoftPrompt(torch.randn(1, 4, TINY_CLIP_WIDTH))
    positive, negative, batch_size, alphas = _run(conditioning, comfy_clip, preference=bundle, soft_prompt=soft)
    assert batch_size == 3
    assert alphas == (0.0, 0.5, 1.0)  # what PMG Scorer learns each candidate's alpha from
    (cond, extras), = positive
    assert cond.shape == (3, 77 + 4 + 77, TINY_CLIP_WIDTH)
    assert extras["pooled_output"].shape == (3, TINY_CLIP_WIDTH)
    (negative_cond, negative_extras), = negative
    assert negative_cond.shape == cond.shape
    assert negative_extras["pooled_output"].shape == (3, TINY_CLIP_WIDTH)
    # alpha 0: the preference parts vanish; alpha 1: the target part vanishes
    assert torch.count_nonzero(cond[0, 77:]) == 0 and torch.count_nonzero(cond[0, :77]) > 0
    assert torch.count_nonzero(cond[2, :77]) == 0 and torch.count_nonzero(cond[2, 77:]) > 0
    # alpha 0.5 is the plain concatenation of the encoded parts
    target = comfy_clip.encode_from_tokens(comfy_clip.tokenize(bundle.preference.target_text))
    assert torch.allclose(cond[1, :77], target[0].float(), atol=1e-6)
    assert torch.allclose(cond[1, 77:81], soft.embeddings[0])


def test_the_sampler_gives_image_i_the_condition_of_alpha_i(conditioning, pmg_pack, comfy_clip):
    """ComfyUI matches a condition batch to the latent batch row by row (no mixing, no broadcast)."""
    import comfy.conds

    positive, _, batch_size, _ = _run(conditioning, comfy_clip, preference=make_bundle(pmg_pack))
    cond = positive[0][0]
    processed = comfy.conds.CONDCrossAttn(cond).process_cond(batch_size=batch_size, device="cpu").cond
    assert torch.equal(processed, cond)
    tiled = comfy.conds.CONDCrossAttn(cond).process_cond(batch_size=2 * batch_size, device="cpu").cond
    assert torch.equal(tiled[batch_size + 1], cond[1])


def test_text_overrides_and_no_preference(conditioning, pmg_pack, comfy_clip):
    positive, negative, batch_size, _ = _run(
        conditioning, comfy_clip, alphas="0.5", target_text="a red apple", preference_text=""
    )
    assert batch_size == 1
    cond = positive[0][0]
    assert cond.shape == (1, 77, TINY_CLIP_WIDTH)  # target only: no preference, no soft part
    apple = comfy_clip.encode_from_tokens(comfy_clip.tokenize("a red apple"))
    assert torch.allclose(cond[0], apple[0].float(), atol=1e-6)
    overridden = _run(conditioning, comfy_clip, alphas="0.5", preference=make_bundle(pmg_pack), target_text="a red apple")
    assert torch.allclose(overridden[0][0][0][0, :77], apple[0].float(), atol=1e-6)


def test_conditioning_errors_are_clear(conditioning, pmg_pack, comfy_clip):
    errors = pmg_pack.errors
    with pytest.raises(errors.InvalidSettingError, match="target"):
        _run(conditioning, comfy_clip)
    with pytest.raises(errors.InvalidSettingError, match="Alpha 1.5"):
        _run(conditioning, comfy_clip, preference=make_bundle(pmg_pack), alphas="0.5, 1.5")
    wrong_width = pmg_pack.module.nodes.types.SoftPrompt(torch.randn(1, 4, 768))
    with pytest.raises(errors.AdapterMismatchError, match="768"):
        _run(conditioning, comfy_clip, preference=make_bundle(pmg_pack), soft_prompt=wrong_width)


@pytest.fixture(scope="module")
def pack_tiny_llm(pmg_pack, tiny_llm_folder):
    """The tiny random Llama loaded by the pack's own library copy."""
    return pmg_pack.core.llm.load_llm(tiny_llm_folder)


def test_soft_prompt_encoder_random_research_adapter_is_seeded_and_cached(encoder_node, pmg_pack, comfy_clip, pack_tiny_llm,
                                                                          comfy_base):
    bundle = make_bundle(pmg_pack, llm=pack_tiny_llm, soft_prompt_text="a unique text for the cache test")
    first = encoder_node.execute(preference=bundle, adapter="random (untrained, research)", clip=comfy_clip,
                                 num_image_tokens=3, seed=7).args[0]
    assert first.embeddings.shape == (1, 3, TINY_CLIP_WIDTH)
    assert first.metadata["cached"] == "false" and first.metadata["llm_identity"] == pack_tiny_llm.identity
    cache_files = list((comfy_base.user / "pmg_cache" / "soft_prompts").glob("*.safetensors"))
    assert any(first.metadata["cache_key"] in f.name for f in cache_files)
    again = encoder_node.execute(preference=bundle, adapter="random (untrained, research)", clip=comfy_clip,
                                 num_image_tokens=3, seed=7).args[0]
    assert again.metadata["cached"] == "true"
    assert torch.equal(again.embeddings, first.embeddings)
    other_seed = encoder_node.execute(preference=bundle, adapter="random (untrained, research)", clip=comfy_clip,
                                      num_image_tokens=3, seed=8).args[0]
    assert other_seed.metadata["cached"] == "false"
    assert not torch.allclose(other_seed.embeddings, first.embeddings)


def test_soft_prompt_encoder_loads_a_trained_adapter_and_refuses_a_mismatch(
    encoder_node, pmg_pack, comfy_clip, pack_tiny_llm, comfy_base
):
    soft_prompt = pmg_pack.core.soft_prompt
    adapter = soft_prompt.SoftPromptAdapter.untrained(pack_tiny_llm, text_dim=TINY_CLIP_WIDTH, num_image_tokens=2, seed=3)
    soft_prompt.save_adapter(adapter, comfy_base.models / "pmg" / "user-adapter.safetensors")
    assert "user-adapter.safetensors" in encoder_node.GET_SCHEMA().inputs[1].options
    assert encoder_node.validate_inputs(adapter="user-adapter.safetensors") is True
    bundle = make_bundle(pmg_pack, llm=pack_tiny_llm)
    result = encoder_node.execute(preference=bundle, adapter="user-adapter.safetensors", clip=comfy_clip,
                                  num_image_tokens=9, seed=0).args[0]
    assert result.embeddings.shape == (1, 2, TINY_CLIP_WIDTH)  # the trained adapter's k wins
    with torch.no_grad():
        expected = adapter.encode(pack_tiny_llm, [bundle.preference.soft_prompt_text])
    assert torch.allclose(result.embeddings, expected.float(), atol=1e-5)

    wide = soft_prompt.SoftPromptAdapter.untrained(pack_tiny_llm, text_dim=768, num_image_tokens=2, seed=3)
    soft_prompt.save_adapter(wide, comfy_base.models / "pmg" / "sd15-adapter.safetensors")
    with pytest.raises(pmg_pack.errors.AdapterMismatchError):
        encoder_node.execute(preference=bundle, adapter="sd15-adapter.safetensors", clip=comfy_clip,
                             num_image_tokens=4, seed=0)
    assert "not found" in encoder_node.validate_inputs(adapter="missing.safetensors")
    assert isinstance(encoder_node.validate_inputs(adapter="../../escape.safetensors"), str)


def test_soft_prompt_encoder_needs_the_extractor_llm(encoder_node, pmg_pack, comfy_clip):
    with pytest.raises(pmg_pack.errors.EmbeddingValueError, match="Preference Extractor"):
        encoder_node.execute(preference=make_bundle(pmg_pack, llm=None), adapter="random (untrained, research)",
                             clip=comfy_clip, num_image_tokens=4, seed=0)


@pytest.mark.parametrize("adapter", ["none (keywords only)", "none (untrained)"])
def test_no_adapter_means_no_soft_tokens_and_conditioning_keeps_keywords_only(
    adapter, encoder_node, conditioning, pmg_pack, comfy_clip, caplog
):
    """The default (and the pre-rename 'none (untrained)', read as it with a warning) gives an empty soft
    prompt without running the LLM; PMG Conditioning then builds the same condition as with no soft prompt."""
    assert encoder_node.GET_SCHEMA().inputs[1].default == "none (keywords only)"
    assert encoder_node.validate_inputs(adapter=adapter) is True
    bundle = make_bundle(pmg_pack, llm=None)  # no LLM needed: nothing is encoded
    with caplog.at_level("WARNING"):
        soft = encoder_node.execute(preference=bundle, adapter=adapter, clip=comfy_clip, num_image_tokens=4, seed=0).args[0]
    assert soft.num_tokens == 0 and soft.metadata["adapter"] == "none (keywords only)"
    legacy_warnings = [r.getMessage() for r in caplog.records if "none (untrained)" in r.getMessage()]
    if adapter == "none (untrained)":
        assert legacy_warnings and "random (untrained, research)" in legacy_warnings[0]
    else:
        assert legacy_warnings == []
    with_empty, *_ = _run(conditioning, comfy_clip, preference=bundle, soft_prompt=soft)
    without, *_ = _run(conditioning, comfy_clip, preference=bundle)
    assert with_empty[0][0].shape == (3, 77 + 77, TINY_CLIP_WIDTH)  # target + preference keywords, no soft part
    assert torch.equal(with_empty[0][0], without[0][0])
