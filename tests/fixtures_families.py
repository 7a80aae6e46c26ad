"""Session fixtures: ComfyUI's real text encoders of each model family, shrunk, with seeded random weights.

Each CLIP is ComfyUI's own class pair for the family (tokenizer + text-encoder model,
wrapped in ``comfy.sd.CLIP``), exactly what a checkpoint or CLIP loader gives a
graph. The encoders are shrunk through ComfyUI's own hook for that,
``model_options["<model_name>_model_config"]`` (read by ``comfy.sd1_clip.SDClipModel``),
so the real tokenizers, windows, layer selection, L+G concatenation, SD3's 4096
padding and pooled vectors all run; only the widths are small. Mechanics only:
the embeddings mean nothing.

Widths of the shrunk encoders (the real ones in brackets):

* ``sd2``:  OpenCLIP-H ``SD2ClipModel`` 48 wide (1024); pooled 48 (1024).
* ``sdxl``: ``SDXLClipModel``, CLIP-L 32 + OpenCLIP-G 48 = 80 wide (768 + 1280 = 2048); pooled = G's projected 48 (1280).
* ``sd3``:  ``SD3ClipModel`` with CLIP-L + CLIP-G and no T5 (a valid SD3 text-encoder set), padded by
  ComfyUI to the real 4096 width; pooled = L 32 + G 48 = 80 (768 + 1280 = 2048). A T5 beside them must be
  4096 wide (ComfyUI concatenates the CLIP part, padded to 4096, with T5's tokens), too big to build here.
* ``flux``: ``FluxClipModel``, T5-XXL (2 layers) 64 wide (4096), 256 tokens minimum as in ComfyUI; pooled = CLIP-L 32 (768).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

TINY_L = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 3, "num_attention_heads": 4, "projection_dim": 32}
TINY_H = {"hidden_size": 48, "intermediate_size": 53, "num_hidden_layers": 3, "num_attention_heads": 4, "projection_dim": 48}
TINY_G = {"hidden_size": 48, "intermediate_size": 53, "num_hidden_layers": 3, "num_attention_heads": 4, "projection_dim": 48}
TINY_T5 = {"d_model": 64, "d_ff": 96, "d_kv": 16, "num_heads": 4, "num_layers": 2, "num_decoder_layers": 2}

# family -> (token width D, pooled width P, tokens of a short prompt)
FAMILY_SHAPES = {
    "sd2": (48, 48, 77),
    "sdxl": (32 + 48, 48, 77),
    "sd3": (4096, 32 + 48, 77),
    "flux": (64, 32, 256),
}
FAMILIES = tuple(FAMILY_SHAPES)


def _target(family: str):
    import comfy.sdxl_clip
    import comfy.supported_models_base
    import comfy.text_encoders.flux
    import comfy.text_encoders.sd2_clip
    import comfy.text_encoders.sd3_clip

    ClipTarget = comfy.supported_models_base.ClipTarget
    if family == "sd2":
        return ClipTarget(comfy.text_encoders.sd2_clip.SD2Tokenizer, comfy.text_encoders.sd2_clip.SD2ClipModel)
    if family == "sdxl":
        return ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
    if family == "sd3":
        return ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer,
                          comfy.text_encoders.sd3_clip.sd3_clip(clip_l=True, clip_g=True, t5=False))
    if family == "flux":
        return ClipTarget(comfy.text_encoders.flux.FluxTokenizer, comfy.text_encoders.flux.flux_clip())
    raise ValueError(family)


def make_family_clip(family: str, seed: int = 0):
    """ComfyUI's ``CLIP`` of ``family`` (one of :data:`FAMILIES`), shrunk, fp32, seeded weights."""
    import comfy.sd
    import torch

    model_options = {
        "dtype": torch.float32,
        "clip_l_model_config": TINY_L,
        "clip_h_model_config": TINY_H,
        "clip_g_model_config": TINY_G,
        "t5xxl_model_config": TINY_T5,
    }
    clip = comfy.sd.CLIP(target=_target(family), model_options=model_options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # ComfyUI's ops skip weight initialisation: every tensor must be set explicitly.
        for name, parameter in clip.cond_stage_model.named_parameters():
            if name.endswith("logit_scale"):
                continue
            if parameter.ndim == 1 and "norm" in name and name.endswith("weight"):
                parameter.fill_(1.0)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
    return clip


@pytest.fixture(scope="session")
def family_clips(comfy_source) -> dict:
    """``{family: CLIP}`` for every family of :data:`FAMILIES`, built once per session (~1 s in all)."""
    return {family: make_family_clip(family) for family in FAMILIES}


@pytest.fixture(scope="session")
def family_shapes() -> dict:
    return {family: SimpleNamespace(width=w, pooled=p, tokens=t) for family, (w, p, t) in FAMILY_SHAPES.items()}


def _tiny_unet_config(context_dim: int, adm_in_channels: int | None) -> dict:
    extra = {"num_classes": "sequential"} if adm_in_channels else {}  # as comfy/model_detection.py sets it
    return {**extra,
        "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
        "adm_in_channels": adm_in_channels, "in_channels": 4, "out_channels": 4, "model_channels": 64,
        "num_res_blocks": [1], "transformer_depth": [1], "transformer_depth_output": [1, 1], "channel_mult": [1],
        "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": context_dim,
        "use_temporal_resblock": False, "use_temporal_attention": False,
    }


def make_family_model(family: str, seed: int = 0):
    """A tiny real ComfyUI MODEL (``ModelPatcher``) of ``family``, cross-attending to the shrunk CLIP's width.

    ``sd2``: ``comfy.supported_models.SD20`` with v-prediction (SD2.x 768); ``sdxl``:
    ``comfy.supported_models.SDXL`` (``model_base.SDXL``: ADM input = pooled 48 + six
    256-d size embeddings). One level, 64 channels: built in-process from the family's
    config class, not from a checkpoint file (ComfyUI's detection needs the real widths).
    """
    import comfy.model_base
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    width, pooled, _ = FAMILY_SHAPES[family]
    if family == "sd2":
        config = comfy.supported_models.SD20(_tiny_unet_config(width, None))
        base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION)
    elif family == "sdxl":
        config = comfy.supported_models.SDXL(_tiny_unet_config(width, pooled + 6 * 256))
        base = config.get_model({})
    else:
        raise ValueError(f"no tiny UNet for {family}")
    config.set_inference_dtype(torch.float32, None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in base.diffusion_model.named_parameters():
            if parameter.ndim == 1 and name.endswith("weight"):
                parameter.fill_(1.0)
            else:
                fan_in = parameter[0].numel() if parameter.ndim >= 2 else 1
                scale = fan_in ** -0.5 if parameter.ndim >= 2 else 0.02
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


@pytest.fixture(scope="session")
def family_models(comfy_source) -> dict:
    """``{"sd2": MODEL, "sdxl": MODEL}``: tiny real UNets matching :func:`family_clips`' widths."""
    return {family: make_family_model(family) for family in ("sd2", "sdxl")}
