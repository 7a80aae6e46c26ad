"""PMG Conditioning, the Soft Prompt Encoder and the trainer's condition on every text-encoder family.

Each family's CLIP is ComfyUI 0.3.75's own classes (SD2ClipModel, SDXLClipModel,
SD3ClipModel with CLIP-L + CLIP-G, FluxClipModel with T5-XXL), shrunk through
ComfyUI's ``<model_name>_model_config`` option (see tests/fixtures_families.py for
the widths). SD2.x and SDXL also get a tiny real UNet of their family, so PMG's
condition runs through ComfyUI's sampler (SDXL: the pooled output becomes the ADM
vector ``y``). Mechanics only: random weights. SD1.x is covered by
tests/test_nodes_conditioning.py and tests/test_training_nodes.py.
"""

from __future__ import annotations

import importlib
import shutil

import pytest
import torch
from fixtures_families import FAMILIES, FAMILY_SHAPES
from fixtures_nodes import make_bundle, pack_submodule

K = 4  # soft tokens


@pytest.fixture(scope="module")
def text_encoder_cls(pmg_pack):
    return pack_submodule("nodes.comfy_text_encoder").ComfyTextEncoder


@pytest.fixture(scope="module")
def pack_tiny_llm(pmg_pack, tiny_llm_folder):
    return pmg_pack.core.llm.load_llm(tiny_llm_folder)


def _clip_text_encode(clip, text):
    """What ComfyUI's stock CLIPTextEncode node gives for ``text``: [[cond, extras]]."""
    import nodes as comfy_nodes

    return comfy_nodes.CLIPTextEncode().encode(clip, text)[0]


def _conditioning(pmg_pack, clip, soft=None, alphas="0, 0.5, 1"):
    node = pmg_pack.nodes["PMGConditioning"]
    return node.execute(clip=clip, w_target=1.0, w_soft=1.0, w_preference=1.0, alphas=alphas,
                        preference=make_bundle(pmg_pack), soft_prompt=soft).args


@pytest.mark.parametrize("family", FAMILIES)
def test_text_encoder_reads_each_family_width_and_pooled(family, family_clips, text_encoder_cls):
    width, pooled_width, tokens = FAMILY_SHAPES[family]
    clip = family_clips[family]
    encoder = text_encoder_cls(clip)
    assert encoder.width == width
    long_text = " ".join(["lantern"] * 100)  # past one 77-token CLIP window
    encoded = encoder.encode(["a red apple", long_text])
    long_tokens = 256 if family == "flux" else 154  # Flux: T5 pads to 256; CLIP families: two windows
    assert encoded.embeddings.shape == (2, long_tokens, width)
    assert encoded.pooled.shape == (2, pooled_width)
    (stock, extras), = _clip_text_encode(clip, "a red apple")
    assert stock.shape == (1, tokens, width)
    assert torch.allclose(encoded.embeddings[0, :tokens], stock[0].float(), atol=1e-6)
    assert torch.allclose(encoded.pooled[0], extras["pooled_output"][0].float(), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_pmg_conditioning_fits_each_family(family, family_clips, pmg_pack):
    """[A, T + k + T, D] tokens, the target's pooled [A, P], same keys as CLIPTextEncode; negative alike."""
    width, pooled_width, tokens = FAMILY_SHAPES[family]
    clip = family_clips[family]
    soft = pmg_pack.module.nodes.types.SoftPrompt(torch.randn(1, K, width))
    positive, negative, batch_size, _ = _conditioning(pmg_pack, clip, soft)
    assert batch_size == 3
    (cond, extras), = positive
    (stock, stock_extras), = _clip_text_encode(clip, make_bundle(pmg_pack).preference.target_text)
    assert cond.shape == (3, 2 * tokens + K, width)
    assert set(extras) == set(stock_extras) == {"pooled_output"}
    assert extras["pooled_output"].shape == (3, pooled_width)
    assert torch.allclose(extras["pooled_output"][1], stock_extras["pooled_output"][0].float(), atol=1e-6)
    assert torch.allclose(cond[1, :tokens], stock[0].float(), atol=1e-6)  # alpha 0.5: plain concatenation
    assert torch.allclose(cond[1, tokens:tokens + K], soft.embeddings[0])
    assert torch.count_nonzero(cond[0, tokens:]) == 0  # alpha 0: only the target
    (negative_cond, negative_extras), = negative
    assert negative_cond.shape == cond.shape
    assert negative_extras["pooled_output"].shape == (3, pooled_width)


def test_sd3_conditioning_is_4096_wide_with_clip_l_and_g_in_place(family_clips, pmg_pack):
    """SD3: ComfyUI puts CLIP-L | CLIP-G side by side and zero-pads to 4096; PMG keeps that layout."""
    positive, *_ = _conditioning(pmg_pack, family_clips["sd3"], alphas="0.5")
    cond = positive[0][0]
    used = FAMILY_SHAPES["sdxl"][0]  # L 32 + G 48, as in SDXL
    assert cond.shape[-1] == 4096
    assert torch.count_nonzero(cond[..., used:]) == 0 and torch.count_nonzero(cond[..., :used]) > 0


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_pmg_condition_samples_on_a_tiny_unet_of_the_family(family, family_clips, family_models, pmg_pack):
    """ComfyUI's own sampler runs PMG's batch (one row per alpha); SDXL's y is built from the pooled output."""
    import comfy.sample
    import comfy.samplers
    import comfy.utils

    width, pooled_width, _ = FAMILY_SHAPES[family]
    model = family_models[family]
    soft = pmg_pack.module.nodes.types.SoftPrompt(torch.randn(1, K, width) * 0.1)
    positive, negative, batch_size, _ = _conditioning(pmg_pack, family_clips[family], soft)
    if family == "sdxl":
        extra = model.model.extra_conds(pooled_output=positive[0][1]["pooled_output"], width=64, height=64,
                                        cross_attn=positive[0][0], device="cpu", noise=None)
        assert extra["y"].cond.shape == (batch_size, pooled_width + 6 * 256)  # pooled + six size embeddings
    latent = torch.zeros(batch_size, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    samples = comfy.sample.sample(model, noise, 2, 5.0, "euler", "normal", positive, negative, latent,
                                  disable_pbar=True, seed=0)
    assert samples.shape == (batch_size, 4, 8, 8)
    assert torch.isfinite(samples).all()
    assert not torch.allclose(samples[0], samples[2])  # alpha 0 and alpha 1 conditions differ


@pytest.mark.parametrize("family", FAMILIES)
def test_soft_prompt_encoder_sizes_embeddings_to_each_family(family, family_clips, pmg_pack, pack_tiny_llm):
    width = FAMILY_SHAPES[family][0]
    node = pmg_pack.nodes["PMGSoftPromptEncoder"]
    bundle = make_bundle(pmg_pack, llm=pack_tiny_llm, soft_prompt_text=f"soft prompt for the {family} family test")
    soft = node.execute(preference=bundle, adapter="random (untrained, research)", clip=family_clips[family],
                        num_image_tokens=2, seed=1).args[0]
    assert soft.embeddings.shape == (1, 2, width)
    positive, *_ = _conditioning(pmg_pack, family_clips[family], soft, alphas="0.5")
    assert positive[0][0].shape[1] == 2 * FAMILY_SHAPES[family][2] + 2


def test_an_adapter_of_another_family_is_refused_naming_both_widths(family_clips, pmg_pack):
    sdxl_width = FAMILY_SHAPES["sdxl"][0]
    soft = pmg_pack.module.nodes.types.SoftPrompt(torch.randn(1, K, FAMILY_SHAPES["sd2"][0]))
    with pytest.raises(pmg_pack.errors.AdapterMismatchError, match=rf"48-wide.*{sdxl_width}-wide.*SDXL"):
        _conditioning(pmg_pack, family_clips["sdxl"], soft)


class _MaskingClip:
    """ComfyUI's Flux CLIP whose condition also carries an attention mask (as Chroma's or Lumina 2's do)."""

    def __init__(self, clip, masked: int, extra_key: str | None = None):
        self.clip, self.masked, self.extra_key = clip, masked, extra_key

    def tokenize(self, text):
        return self.clip.tokenize(text)

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        out = self.clip.encode_from_tokens(tokens, return_pooled=return_pooled, return_dict=True)
        mask = torch.ones(1, out["cond"].shape[1])
        if self.masked:
            mask[:, -self.masked:] = 0
        out["attention_mask"] = mask
        if self.extra_key:
            out[self.extra_key] = torch.zeros(1, 3, 8)
        return out


def test_attention_masks_and_extra_keys(family_clips, text_encoder_cls, pmg_pack):
    """An all-ones mask means no mask and is dropped; a mask hiding padding or an unknown extra key is refused."""
    flux = family_clips["flux"]
    plain = text_encoder_cls(flux).encode(["a red apple"]).embeddings
    unmasked = text_encoder_cls(_MaskingClip(flux, masked=0)).encode(["a red apple"]).embeddings
    assert torch.equal(plain, unmasked)
    with pytest.raises(pmg_pack.errors.EmbeddingValueError, match="attention mask that hides 200 padding"):
        _conditioning(pmg_pack, _MaskingClip(flux, masked=200))
    with pytest.raises(pmg_pack.errors.EmbeddingValueError, match="conditioning_byt5small"):
        text_encoder_cls(_MaskingClip(flux, masked=0, extra_key="conditioning_byt5small")).encode(["x"])


def test_trainer_condition_on_sd2_and_sdxl(family_clips, family_models, text_encoder_cls, pmg_pack):
    """The trainer's condition [caption tokens | soft] through a v-prediction SD2 UNet and through SDXL's UNet (the
    caption's pooled vector + size embeddings as ADM y) reaches the soft part with gradients.
    SDXL, SD3 and Flux training in depth: tests/test_training_families.py."""
    components = pack_submodule("nodes.trainer_components")
    assert components.comfy_schedule(family_models["sd2"]).prediction_type == "v_prediction"
    for family, prediction in (("sd2", "v_prediction"), ("sdxl", "epsilon")):
        encoder = text_encoder_cls(family_clips[family])
        encoded = encoder.encode(["a cat sticker"])  # what SoftPromptTrainer._encode_texts caches
        soft = (torch.randn(1, K, encoder.width) * 0.1).requires_grad_(True)
        predictor = components.ComfyNoisePredictor(family_models[family])
        assert predictor.prediction_type == prediction
        with torch.inference_mode(False), torch.enable_grad():
            cond = torch.cat([encoded.embeddings, soft], dim=1)  # SoftPromptTrainer._denoising_errors
            out = predictor(torch.randn(1, 4, 8, 8), torch.tensor([500]), cond, encoded.pooled)
            out.square().mean().backward()
        assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
        assert soft.grad is not None and soft.grad.abs().sum() > 0, family


def test_trainer_node_trains_on_sd2(pmg_pack, comfy_base, family_clips, family_models, tiny_checkpoint,
                                    sticker_set, tiny_llm_folder):
    """The trainer node, end to end on the SD2 family (tiny OpenCLIP-H CLIP and v-prediction UNet; the tiny
    checkpoint's TAESD as VAE, SD2 shares SD1's latent format): 1 step, an adapter of the SD2 CLIP's width."""
    import comfy.sd

    folder = comfy_base.input / "pmg_stickers_sd2"
    if not folder.exists():
        shutil.copytree(sticker_set, folder)
    with torch.inference_mode():
        _, _, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint), output_vae=True, output_clip=False)
    llm = importlib.import_module("comfyui_pmg.pmg_core.llm").load_llm(tiny_llm_folder)
    node = pmg_pack.nodes["PMGSoftPromptTrainer"]
    with torch.inference_mode():
        path, _ = node.execute(
            history_file="pmg_stickers_sd2/history.jsonl", llm=llm, model=family_models["sd2"],
            clip=family_clips["sd2"], vae=vae, steps=1, learning_rate=1e-3, batch_size=2, grad_accum=1,
            resolution=64, negative_weight=0.5, num_image_tokens=2, num_prefix=2, seed=0,
            adapter_name="sd2_family_test", resume=False,
        ).result
    soft_prompt = importlib.import_module("comfyui_pmg.pmg_core.soft_prompt")
    adapter = soft_prompt.load_adapter(path, llm=llm, text_dim=FAMILY_SHAPES["sd2"][0])
    assert adapter.config.metadata["trained_steps"] == "1"
    assert adapter.config.generator.startswith("SD20@")
