"""Generate one image per alpha from PMG conditions with a diffusers Stable Diffusion pipeline.

The pipeline's components are injected (diffusers style); PMG only supplies
``prompt_embeds`` (the conditions of :func:`pmg_core.conditioning.build_conditions`)
and a matching ``negative_prompt_embeds``. Every image of an alpha sweep starts
from the same initial latent and the same per-step noise, so the images differ
only through alpha.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .conditioning import DiffusersTextEncoder, PMGConditions, check_finite, negative_conditions
from .errors import EmbeddingValueError, InvalidSettingError, ModelLoadError

logger = logging.getLogger(__name__)

__all__ = ["GenerationSettings", "SDRunner"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationSettings:
    """How :meth:`SDRunner.generate` samples: the same settings for every alpha of a sweep."""

    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance_scale: float = 7.5
    height: int = 512
    width: int = 512

    def validate(self) -> None:
        steps, guidance_scale = self.steps, self.guidance_scale
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise InvalidSettingError(f"steps = {steps!r}; use a whole number of denoising steps >= 1 (20 is typical).")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise InvalidSettingError(f"guidance_scale = {guidance_scale!r}; use a finite value >= 0 (7.5 is typical).")
        multiple = 8
        for name, size in (("height", self.height), ("width", self.width)):
            if not isinstance(size, int) or size < multiple or size % multiple:
                raise InvalidSettingError(f"{name} = {size!r}; use a positive multiple of {multiple} (e.g. 512).")


class SDRunner:
    """Runs a ``diffusers.StableDiffusionPipeline`` on PMG conditions."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        # The encoder that built the conditions must be this pipeline's own: callers use this one.
        self.text_encoder = DiffusersTextEncoder(pipeline.tokenizer, pipeline.text_encoder)
        pipeline.set_progress_bar_config(disable=True)

    @classmethod
    def from_folder(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> SDRunner:
        """Load a local diffusers Stable Diffusion folder (safetensors weights, no hub access)."""
        from diffusers import StableDiffusionPipeline

        path = Path(path)
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"{path} is not a diffusers pipeline folder (no model_index.json); point to a folder written by "
                f"save_pretrained, or load a single-file checkpoint with pmg_core.sd_checkpoint."
            )
        try:
            pipeline = StableDiffusionPipeline.from_pretrained(
                path,
                local_files_only=True,
                use_safetensors=True,
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        except Exception as exc:  # diffusers raises many types for incomplete folders
            raise ModelLoadError(
                f"Could not load the diffusers pipeline in {path}: {exc}. The folder needs unet/, vae/, "
                f"text_encoder/, tokenizer/ and scheduler/ with .safetensors weights."
            ) from exc
        # Cast after loading: the dtype keyword of from_pretrained changed name across diffusers versions.
        return cls(pipeline.to(device=device, dtype=dtype))

    @property
    def width(self) -> int:
        """The text-embedding width the UNet cross-attends to (768 SD1.x)."""
        return int(self.pipeline.unet.config.cross_attention_dim)

    def generate(self, conditions: PMGConditions, progress: Progress | None = None, **settings) -> list:
        """One ``PIL.Image`` per alpha of ``conditions``, in the same order; ``settings`` are :class:`GenerationSettings`."""
        return self._run(conditions, GenerationSettings(**settings), progress, "pil")

    def generate_tensor(self, conditions: PMGConditions, progress: Progress | None = None, **settings) -> Tensor:
        """Like :meth:`generate`, as a float tensor ``[A, 3, H, W]`` in [0, 1] (the library's image layout)."""
        images = self._run(conditions, GenerationSettings(**settings), progress, "pt")
        return images.float().clamp(0, 1).cpu()

    def _check(self, conditions: PMGConditions) -> None:
        embeddings = conditions.embeddings
        if embeddings.ndim != 3 or embeddings.shape[0] != len(conditions.alphas):
            raise EmbeddingValueError(
                f"Conditions have shape {tuple(embeddings.shape)} for {len(conditions.alphas)} alpha(s); expected "
                f"[alphas, tokens, width]. Build them with pmg_core.conditioning.build_conditions."
            )
        if embeddings.shape[-1] != self.width:
            raise EmbeddingValueError(
                f"The conditions are {embeddings.shape[-1]}-wide but this model's UNet expects {self.width}-wide "
                f"text embeddings; build the conditions with this checkpoint's own text encoder "
                f"(SDRunner.text_encoder)."
            )
        check_finite(embeddings, "The conditions", "check the soft embeddings and condition weights.")

    @torch.no_grad()
    def _run(self, conditions: PMGConditions, settings: GenerationSettings, progress: Progress | None, output_type: str):
        settings.validate()
        self._check(conditions)
        negative_prompt, seed, steps = settings.negative_prompt, settings.seed, settings.steps
        guidance_scale, height, width = settings.guidance_scale, settings.height, settings.width
        pipeline = self.pipeline
        device, dtype = pipeline.unet.device, pipeline.unet.dtype
        count = len(conditions.alphas)
        prompt_embeds = conditions.embeddings.to(device, dtype)
        negative_embeds = None
        if guidance_scale > 1.0:  # diffusers applies classifier-free guidance only above 1
            negative = negative_conditions(self.text_encoder, negative_prompt, conditions)
            negative_embeds = negative.embeddings.to(device, dtype)

        # One latent, drawn on the CPU (the same on every device), shared by every alpha;
        # one generator per image with the same seed, so stochastic schedulers add the same noise too.
        latent_shape = (
            1,
            pipeline.unet.config.in_channels,
            height // pipeline.vae_scale_factor,
            width // pipeline.vae_scale_factor,
        )
        latent = torch.randn(latent_shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        latents = latent.expand(count, -1, -1, -1).to(device, dtype)
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in range(count)]

        callback = None
        if progress is not None:
            progress(0, steps)

            def callback(_pipeline, step, _timestep, _tensors):
                progress(step + 1, steps)  # may raise to interrupt the run
                return {}

        logger.debug("Generating %d image(s), %d steps, %dx%d, seed %d", count, steps, width, height, seed)
        result = pipeline(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            latents=latents,
            generator=generators,
            output_type=output_type,
            callback_on_step_end=callback,
        )
        return result.images
