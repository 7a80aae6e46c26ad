"""Load a Stable Diffusion checkpoint's components (UNet, VAE, CLIP, scheduler) offline, from a ComfyUI user's file.

A ComfyUI user keeps one single-file checkpoint (``models/checkpoints/*.safetensors``,
the original LDM key layout: ``model.diffusion_model.*`` for the UNet,
``cond_stage_model.transformer.*`` for the CLIP-L text encoder,
``first_stage_model.*`` for the VAE). Training and evaluation in :mod:`pmg_core`
need the same network as diffusers modules, so this module

* reads the file with safetensors (nothing else is ever executed),
* infers the UNet architecture from the key names and tensor shapes (levels,
  residual blocks per level, transformer depth, channels, context width),
* converts the weights with diffusers' own LDM→diffusers helpers, fed with a
  config built here (no hub, no YAML download),
* builds the CLIP text encoder from a locally inferred config plus the real CLIP
  BPE tokenizer (:func:`pmg_core.assets.clip_tokenizer_dir`),
* accepts both the full KL VAE and TAESD (``taesd_encoder.*``/``taesd_decoder.*``).

A diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``) is accepted too and loaded with ``local_files_only=True``.
Other layouts (SD2's OpenCLIP, SDXL's two encoders) raise :class:`ModelLoadError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .assets import clip_tokenizer_dir
from .errors import ModelLoadError
from .safe_paths import sha256_file

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model.transformer."
VAE_PREFIX = "first_stage_model."
# The fix for every layout this converter does not read.
_USE_STANDARD = "Use a standard SD1.x single-file checkpoint (e.g. v1-5-pruned-emaonly.safetensors) or a diffusers folder."

# SD1.x: latents are the KL VAE's posterior scaled by this factor before the UNet sees them.
SD1_LATENT_SCALE = 0.18215
# SD1.x was trained with 8 attention heads in every transformer; heads cannot be read from weights.
SD1_NUM_HEADS = 8
# The DDPM noise schedule Stable Diffusion 1.x was trained with.
SD1_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


@dataclass
class SDComponents:
    """The frozen parts of an SD1.x generator, as diffusers modules.

    ``latent_scaling``/``latent_shift`` say how raw VAE latents map to the UNet's
    latent space: ``unet_latents = (vae_latents - latent_shift) * latent_scaling``.
    """

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    name: str
    content_hash: str
    source: Path
    latent_scaling: float
    latent_shift: float = 0.0

    @property
    def identity(self) -> str:
        """A stable label of this generator: file name plus a short content hash."""
        return f"{self.name}@{self.content_hash[:12]}"

    @property
    def text_width(self) -> int:
        """Width D of the text-encoder output the UNet cross-attends to."""
        return int(self.unet.config.cross_attention_dim)

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "SDComponents":
        device = torch.device(device)
        for module in (self.unet, self.vae, self.text_encoder):
            current = next(module.parameters())
            if current.device != device or (dtype is not None and current.dtype != dtype):
                module.to(device=device, dtype=dtype)
        return self

    def pipeline(self):
        """A diffusers ``StableDiffusionPipeline`` over these components (DDIM sampler, no safety checker).

        The pipeline decodes with ``vae.config.scaling_factor``, so a TAESD whose
        checkpoint carries its own scale gets that factor written into its config.
        """
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        if self.latent_shift:
            raise ModelLoadError(
                f"The VAE of {self.name} shifts its latents by {self.latent_shift}; the diffusers SD pipeline cannot "
                "express that. Use an SD1.x checkpoint with a KL VAE or the SD1 TAESD."
            )
        if abs(float(getattr(self.vae.config, "scaling_factor", 1.0)) - self.latent_scaling) > 1e-9:
            self.vae.register_to_config(scaling_factor=self.latent_scaling)
        pipeline = StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=DDIMScheduler.from_config(self.scheduler.config),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def freeze(self) -> "SDComponents":
        """Eval mode and no gradients for every weight: the generator never trains here."""
        for module in (self.unet, self.vae, self.text_encoder):
            module.eval()
            module.requires_grad_(False)
        return self


def load_sd_components(path: str | Path, num_attention_heads: int | None = None) -> SDComponents:
    """Load an SD1.x generator from a single-file checkpoint or a diffusers folder.

    ``num_attention_heads`` overrides the SD1.x convention of 8 heads per
    transformer (head count is not stored in the weights).
    """
    path = Path(path)
    if path.is_dir():
        return _load_diffusers_folder(path)
    if not path.is_file():
        raise ModelLoadError(
            f"Generator checkpoint {path} does not exist; pass a .safetensors file from "
            "ComfyUI's models/checkpoints folder or a diffusers folder with unet/, vae/ and text_encoder/."
        )
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(
            f"{path.name} is not a .safetensors file; only safetensors checkpoints are read "
            "(convert .ckpt files to safetensors first, they may hold executable pickles)."
        )
    state = _read_safetensors(path)
    return components_from_state_dict(
        state, name=path.stem, content_hash=sha256_file(path), source=path, num_attention_heads=num_attention_heads
    )


def components_from_state_dict(
    state: dict[str, torch.Tensor],
    name: str = "checkpoint",
    content_hash: str = "",
    source: Path | None = None,
    num_attention_heads: int | None = None,
) -> SDComponents:
    """Build the diffusers components from an LDM-layout state dict (already in memory)."""
    _check_layout(state)
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet_config = infer_unet_config(state, num_attention_heads=num_attention_heads)
    unet = UNet2DConditionModel(**unet_config)
    converted = convert_ldm_unet_checkpoint(state, unet_config)
    _load_exactly(unet, converted, "UNet")

    text_encoder, tokenizer = _build_clip(state)
    vae, scaling, shift = _build_vae(state)
    scheduler = DDPMScheduler.from_config(SD1_SCHEDULER_CONFIG)
    return _frozen_components(unet, vae, text_encoder, tokenizer, scheduler, name, content_hash, source or Path(name),
                              scaling, shift)


# --------------------------------------------------------------------------- layout checks


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"Cannot read {path} as safetensors ({exc}); the file is damaged or not a checkpoint.") from exc


def _check_layout(state: dict[str, torch.Tensor]) -> None:
    keys = state.keys()
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise ModelLoadError(
            "The checkpoint holds no 'model.diffusion_model.*' UNet weights: it is not a full Stable Diffusion "
            "checkpoint (a LoRA, a VAE or a text encoder alone?). Pass a full SD1.x checkpoint or a diffusers folder."
        )
    if any(k.startswith("conditioner.embedders.") for k in keys) or any(
        k.startswith(UNET_PREFIX + "label_emb.") for k in keys
    ):
        raise ModelLoadError(
            "This is an SDXL-style checkpoint (two text encoders, 'conditioner.embedders.*'); only SD1.x single files "
            "are converted here. Convert it to a diffusers folder and pass the folder instead."
        )
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ModelLoadError(
            "This is an SD2.x checkpoint (OpenCLIP text encoder 'cond_stage_model.model.*'); only SD1.x single files "
            "are converted here. Convert it to a diffusers folder and pass the folder instead."
        )
    if not any(k.startswith(CLIP_PREFIX) for k in keys):
        raise ModelLoadError(
            "The checkpoint holds no 'cond_stage_model.transformer.*' CLIP text encoder; PMG needs the generator's "
            "own text encoder. Use a full SD1.x checkpoint (UNet + CLIP + VAE) or a diffusers folder."
        )
    if not any(k.startswith(VAE_PREFIX) for k in keys):
        raise ModelLoadError(
            "The checkpoint holds no 'first_stage_model.*' VAE weights; training needs the VAE to encode target "
            "images. Use a full SD1.x checkpoint or a diffusers folder."
        )


def _load_exactly(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """Load weights and refuse any missing or unexpected tensor: nothing is lost silently."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"The checkpoint's {what} weights do not match the inferred architecture "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}). "
            "The layout is not a standard SD1.x checkpoint; convert it to a diffusers folder and pass that."
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelLoadError(
                f"{what} tensor {key} has shape {tuple(tensor.shape)}, the inferred architecture expects "
                f"{tuple(expected[key].shape)}; the checkpoint layout is not a standard SD1.x one."
            )
    module.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)


# --------------------------------------------------------------------------- UNet


def infer_unet_config(state: dict[str, torch.Tensor], num_attention_heads: int | None = None) -> dict:
    """A diffusers ``UNet2DConditionModel`` config read from LDM key names and shapes."""
    unet = {k[len(UNET_PREFIX) :]: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    try:
        conv_in = unet["input_blocks.0.0.weight"]
        conv_out = unet["out.2.weight"]
    except KeyError as exc:
        raise ModelLoadError(f"The UNet lacks {exc.args[0]!r}; not an LDM-layout SD UNet. {_USE_STANDARD}") from exc

    levels = _unet_levels(unet)
    block_out_channels = [int(unet[f"input_blocks.{level[0]}.0.out_layers.3.weight"].shape[0]) for level in levels]
    has_attention = [f"input_blocks.{level[0]}.1.proj_in.weight" in unet for level in levels]
    depths = [
        _transformer_depth(unet, f"input_blocks.{level[0]}.1.") if attention else 0
        for level, attention in zip(levels, has_attention, strict=True)
    ]
    context_dim, use_linear = _cross_attention(unet)
    has_mid = "middle_block.0.in_layers.0.weight" in unet
    mid_depth = _transformer_depth(unet, "middle_block.1.") if "middle_block.1.proj_in.weight" in unet else 0
    depth = _uniform_depth(depths, mid_depth)
    if conv_in.shape[0] != block_out_channels[0]:
        raise ModelLoadError(f"The UNet's first level changes width inside the level; not an SD1.x layout. {_USE_STANDARD}")
    return {
        "sample_size": 64,
        "in_channels": int(conv_in.shape[1]),
        "out_channels": int(conv_out.shape[0]),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        "mid_block_type": ("UNetMidBlock2DCrossAttn" if mid_depth else "UNetMidBlock2D") if has_mid else None,
        "block_out_channels": block_out_channels,
        "layers_per_block": len(levels[0]),
        "cross_attention_dim": context_dim,
        "attention_head_dim": num_attention_heads or SD1_NUM_HEADS,
        "use_linear_projection": use_linear,
        "transformer_layers_per_block": depth,
    }


def _unet_levels(unet: dict[str, torch.Tensor]) -> list[list[int]]:
    """The input blocks grouped by resolution level; every level has the same number of resnet blocks."""
    input_ids = sorted({int(k.split(".")[1]) for k in unet if k.startswith("input_blocks.")})
    # Input block 0 is conv_in; each later block is a resnet (+ attention) or a downsampler ('.0.op').
    levels: list[list[int]] = [[]]
    for block in input_ids[1:]:
        if f"input_blocks.{block}.0.op.weight" in unet:
            levels.append([])
        else:
            levels[-1].append(block)
    res_counts = {len(level) for level in levels}
    if len(res_counts) != 1 or 0 in res_counts:
        raise ModelLoadError(
            f"The UNet has an uneven number of residual blocks per level ({[len(x) for x in levels]}); "
            "this converter handles the regular SD1.x layout only."
        )
    return levels


def _cross_attention(unet: dict[str, torch.Tensor]) -> tuple[int, bool]:
    """(width of the text context, whether proj_in is linear) of the UNet's cross-attention layers."""
    attention_keys = [k for k in unet if k.endswith("attn2.to_k.weight")]
    if not attention_keys:
        raise ModelLoadError(f"The UNet has no cross-attention layers; it cannot be text-conditioned. {_USE_STANDARD}")
    proj_in = next(unet[k] for k in unet if k.endswith(".proj_in.weight"))
    return int(unet[attention_keys[0]].shape[1]), proj_in.ndim == 2


def _uniform_depth(depths: list[int], mid_depth: int) -> int:
    """The one transformer depth of every attention level and the middle block (diffusers' config holds one)."""
    attention_depths = [d for d in depths if d] or [1]
    if mid_depth and mid_depth not in attention_depths:
        attention_depths.append(mid_depth)
    if len(set(attention_depths)) != 1:
        raise ModelLoadError(
            f"The UNet mixes transformer depths {depths} (middle {mid_depth}); only uniform depth is supported."
        )
    return attention_depths[0]


def _transformer_depth(unet: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"transformer_blocks\.(\d+)\.")
    found = {int(m.group(1)) for k in unet if (m := pattern.match(k))}
    return len(found)


# --------------------------------------------------------------------------- CLIP text encoder


def _build_clip(state: dict[str, torch.Tensor]):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # LDM files say 'text_model.embeddings...'; transformers>=5 names the same tensors without 'text_model.'.
    clip = {
        _strip(k[len(CLIP_PREFIX) :], "text_model."): v
        for k, v in state.items()
        if k.startswith(CLIP_PREFIX) and not k.endswith("position_ids")
    }
    try:
        token_embedding = clip["embeddings.token_embedding.weight"]
        positions = clip["embeddings.position_embedding.weight"]
        fc1 = clip["encoder.layers.0.mlp.fc1.weight"]
    except KeyError as exc:
        raise ModelLoadError(f"The CLIP text encoder lacks {exc.args[0]!r}; not a CLIP-L layout. {_USE_STANDARD}") from exc
    hidden = int(token_embedding.shape[1])
    layers = len({int(k.split(".")[2]) for k in clip if k.startswith("encoder.layers.")})
    config = CLIPTextConfig(
        vocab_size=int(token_embedding.shape[0]),
        hidden_size=hidden,
        intermediate_size=int(fc1.shape[0]),
        num_hidden_layers=layers,
        # CLIP text towers use 64-wide heads (CLIP-L: 768 / 64 = 12 heads).
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=int(positions.shape[0]),
        hidden_act="quick_gelu",
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    with _skipped_weight_init():  # random init of 123M weights costs seconds; all are overwritten below
        model = CLIPTextModel(config)
    # Extras some exporters add (text projection, logit scale) are not weights of the text tower.
    tower_keys = set(model.state_dict())
    weights = {k: v for k, v in clip.items() if k in tower_keys or k.startswith(("embeddings.", "encoder.", "final_layer_norm."))}
    _load_exactly(model, weights, "CLIP text encoder")
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()), local_files_only=True)
    tokenizer.model_max_length = config.max_position_embeddings
    if config.vocab_size != len(tokenizer):
        raise ModelLoadError(
            f"The text encoder has {config.vocab_size} tokens but the CLIP tokenizer has {len(tokenizer)}; "
            "the checkpoint's text encoder is not CLIP-L."
        )
    return model, tokenizer


def _skipped_weight_init():
    """transformers' context that skips random weight initialisation (location differs across versions)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights
        except ImportError:
            return contextlib.nullcontext()
    return no_init_weights()


def _strip(key: str, prefix: str) -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


# --------------------------------------------------------------------------- VAE


def _build_vae(state: dict[str, torch.Tensor]):
    """Return (vae, latent_scaling, latent_shift) for a KL VAE or a TAESD."""
    vae = {k[len(VAE_PREFIX) :]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    if "taesd_decoder.1.weight" in vae:
        return _build_taesd(vae)
    if "encoder.conv_in.weight" in vae:
        return _build_kl_vae(vae)
    raise ModelLoadError(
        "The checkpoint's VAE ('first_stage_model.*') is neither a KL autoencoder nor TAESD; "
        "convert the checkpoint to a diffusers folder and pass that."
    )


def _build_kl_vae(vae: dict[str, torch.Tensor]):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ch = int(vae["encoder.conv_in.weight"].shape[0])
    down_ids = sorted({int(k.split(".")[2]) for k in vae if k.startswith("encoder.down.")})
    block_out = [int(vae[f"encoder.down.{i}.block.0.conv2.weight"].shape[0]) for i in down_ids]
    res_blocks = len({int(k.split(".")[4]) for k in vae if k.startswith("encoder.down.0.block.")})
    config = {
        "in_channels": int(vae["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(vae["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(block_out),
        "up_block_types": ["UpDecoderBlock2D"] * len(block_out),
        "block_out_channels": block_out,
        "latent_channels": int(vae["decoder.conv_in.weight"].shape[1]),
        "layers_per_block": res_blocks,
        "scaling_factor": SD1_LATENT_SCALE,
    }
    if ch != block_out[0]:
        raise ModelLoadError(f"The VAE's first level changes width inside the level; not an SD1.x VAE layout. {_USE_STANDARD}")
    model = AutoencoderKL(**config)
    # diffusers' converter looks for the 'first_stage_model.' prefix itself.
    converted = convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in vae.items()}, config)
    _load_exactly(model, converted, "VAE")
    return model, SD1_LATENT_SCALE, 0.0


def _build_taesd(vae: dict[str, torch.Tensor]):
    """TAESD as ComfyUI stores it: taesd_encoder.N / taesd_decoder.N (+ vae_scale, vae_shift)."""
    from diffusers import AutoencoderTiny

    latent_channels = int(vae["taesd_decoder.1.weight"].shape[1])
    model = AutoencoderTiny(latent_channels=latent_channels)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in vae.items():
        if key.startswith("taesd_encoder."):
            converted["encoder.layers." + key[len("taesd_encoder.") :]] = tensor
        elif key.startswith("taesd_decoder."):
            # ComfyUI's decoder starts with a parameter-free Clamp module that diffusers folds into forward().
            index, rest = key[len("taesd_decoder.") :].split(".", 1)
            converted[f"decoder.layers.{int(index) - 1}.{rest}"] = tensor
    _load_exactly(model, converted, "TAESD")
    # ComfyUI: raw = enc(x) / vae_scale + vae_shift, then the UNet sees raw * 0.18215.
    vae_scale = float(vae["vae_scale"]) if "vae_scale" in vae else SD1_LATENT_SCALE
    vae_shift = float(vae["vae_shift"]) if "vae_shift" in vae else 0.0
    scaling = SD1_LATENT_SCALE / vae_scale
    shift = -vae_shift * vae_scale
    return model, scaling, shift


# --------------------------------------------------------------------------- diffusers folder


def _load_diffusers_folder(path: Path) -> SDComponents:
    from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    for part in ("unet", "vae", "text_encoder"):
        if not (path / part / "config.json").exists():
            raise ModelLoadError(
                f"{path} is not a diffusers Stable Diffusion folder: {part}/config.json is missing. "
                "Pass a folder saved with pipeline.save_pretrained() or a single-file .safetensors checkpoint."
            )
    try:
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", local_files_only=True)
        vae_class_name = json.loads((path / "vae" / "config.json").read_text())["_class_name"]
        vae_class = AutoencoderTiny if vae_class_name == "AutoencoderTiny" else AutoencoderKL
        vae = vae_class.from_pretrained(path, subfolder="vae", local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder", local_files_only=True)
        tokenizer_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else clip_tokenizer_dir()
        tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
        if (path / "scheduler" / "scheduler_config.json").exists():
            scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", local_files_only=True)
        else:
            scheduler = DDPMScheduler.from_config(SD1_SCHEDULER_CONFIG)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"Cannot load the diffusers folder {path}: {exc}. Pass a complete folder saved with "
            "pipeline.save_pretrained() (weights included) or a single-file .safetensors checkpoint."
        ) from exc
    scaling = float(getattr(vae.config, "scaling_factor", SD1_LATENT_SCALE) or 1.0)
    shift = float(getattr(vae.config, "shift_factor", 0.0) or 0.0)
    weights = sorted(p for p in path.rglob("*.safetensors"))
    digest = hashlib.sha256()
    for weight_file in weights:
        digest.update(sha256_file(weight_file).encode())
    return _frozen_components(unet, vae, text_encoder, tokenizer, scheduler, path.name, digest.hexdigest(), path,
                              scaling, shift)


def _frozen_components(unet, vae, text_encoder, tokenizer, scheduler, name: str, content_hash: str, source: Path,
                       latent_scaling: float, latent_shift: float) -> SDComponents:
    """The one place the components are assembled, whatever they were loaded from; frozen (eval, no grad)."""
    return SDComponents(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler, name=name,
        content_hash=content_hash, source=source, latent_scaling=latent_scaling, latent_shift=latent_shift,
    ).freeze()
