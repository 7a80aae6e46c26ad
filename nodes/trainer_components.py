"""ComfyUI's MODEL and VAE as the soft-prompt trainer's injected components.

The library's trainer (:class:`pmg_core.training.SoftPromptTrainer`) needs a noise
predictor, a latent encoder and the noise schedule. Here they come from the
objects a ComfyUI checkpoint loader outputs:

* noise predictor: ``model.model.apply_model(x_sigma, sigma, c_crossattn=cond)``
  on a clone of the ModelPatcher. ComfyUI works in k-diffusion form
  (``x_sigma = x_0 + sigma * eps``); the trainer's DDPM sample
  ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` is the same point scaled by ``sqrt(a)``,
  with ``sigma = sqrt((1 - a) / a)``. The model's output is recovered from the
  denoised estimate by inverting ``model_sampling.calculate_denoised``.
* schedule: ``alphas_cumprod = 1 / (1 + sigmas^2)`` from ``model.model.model_sampling``.
* latents: ``vae.encode`` (ComfyUI's ``[B, H, W, C]`` layout) then the model's
  ``process_latent_in`` (the SD1.x 0.18215 scale).

ComfyUI runs nodes under ``torch.inference_mode()``, so every weight it loaded is an
*inference tensor*, which autograd refuses to save for a backward pass. Gradients
must flow *through* the frozen UNet and LLM to the adapter, so:

* the UNet's weights pass through a weight wrapper (ComfyUI's own mechanism, used by
  its LoRA trainer) that hands the layer an ordinary copy; the model itself is untouched;
* the LLM (this pack's own object) has its inference tensors replaced in place by
  ordinary copies with the same values (:func:`make_autograd_ready`).
"""

from __future__ import annotations

import hashlib
import logging

import comfy.model_management as mm
import comfy.model_sampling
import torch

from ..pmg_core.errors import TrainingError
from ..pmg_core.training.components import NoiseSchedule

logger = logging.getLogger(__name__)


def _ordinary_copy(tensor: torch.Tensor) -> torch.Tensor:
    """An autograd-usable copy of an inference tensor (ordinary tensors pass through)."""
    return tensor.clone() if tensor.is_inference() else tensor


def make_autograd_ready(module: torch.nn.Module) -> int:
    """Replace the inference tensors among ``module``'s parameters and buffers by ordinary copies.

    Values, devices, dtypes and ``requires_grad`` are kept; returns how many
    tensors were replaced. Must run outside ``torch.inference_mode()``.
    """
    replaced = 0
    with torch.inference_mode(False):
        for owner in module.modules():
            for name, parameter in list(owner._parameters.items()):
                if parameter is not None and parameter.is_inference():
                    owner._parameters[name] = torch.nn.Parameter(parameter.clone(), requires_grad=False)
                    replaced += 1
            for name, buffer in list(owner._buffers.items()):
                if buffer is not None and buffer.is_inference():
                    owner._buffers[name] = buffer.clone()
                    replaced += 1
    return replaced


def _prediction_type(sampling) -> str:
    if isinstance(sampling, comfy.model_sampling.EDM) or not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete):
        raise TrainingError(
            f"This model samples with {type(sampling).__name__}; soft-prompt training supports the discrete "
            "epsilon / v-prediction schedules of SD1.x and SD2.x. Load an SD1.x or SD2.x checkpoint."
        )
    if isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        return "v_prediction"
    if isinstance(sampling, comfy.model_sampling.EPS):
        return "epsilon"
    raise TrainingError(f"Unsupported model sampling {type(sampling).__name__}; use an SD1.x or SD2.x checkpoint.")


def comfy_schedule(model) -> NoiseSchedule:
    """The trainer's :class:`NoiseSchedule` from a ComfyUI MODEL's ``model_sampling``."""
    sampling = model.model.model_sampling
    prediction = _prediction_type(sampling)
    sigmas = sampling.sigmas.detach().to("cpu", torch.float64).clone()
    return NoiseSchedule(1.0 / (1.0 + sigmas**2), prediction)


def model_identity(model) -> str:
    """A short, stable label of a ComfyUI MODEL: its family and a hash of its first and last UNet weights."""
    base = model.model
    digest = hashlib.sha256()
    tensors = list(base.diffusion_model.state_dict().items())
    for name, tensor in (tensors[0], tensors[-1]):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return f"{type(base.model_config).__name__}@{digest.hexdigest()[:12]}"


class ComfyNoisePredictor:
    """A ComfyUI MODEL as the trainer's noise predictor (frozen; gradients reach the condition only)."""

    def __init__(self, model):
        self.sampling = model.model.model_sampling
        self.prediction_type = _prediction_type(self.sampling)
        if getattr(model.model, "adm_channels", 0):
            # SDXL's UNet also takes y (pooled text + image-size embeddings); the trainer's
            # condition is the token sequence only, so apply_model would fail deep inside.
            raise TrainingError(
                f"This model ({type(model.model).__name__}) needs the ADM vector y ({model.model.adm_channels} wide: "
                "the pooled text and the image size, as in SDXL) beside the token condition; soft-prompt training "
                "builds the token condition only. Train with an SD1.x or SD2.x checkpoint."
            )
        # A clone: the wrappers below belong to this patcher only, the user's MODEL is unchanged.
        self.patcher = model.clone()
        wrapped = 0
        for name, module in self.patcher.model.named_modules():
            if not hasattr(module, "weight_function"):
                continue
            for kind in ("weight", "bias"):
                if getattr(module, kind, None) is not None:
                    self.patcher.add_weight_wrapper(f"{name}.{kind}", _ordinary_copy)
                    wrapped += 1
        if wrapped == 0:
            raise TrainingError("The MODEL exposes no ComfyUI layers to train through; load it with a checkpoint loader.")
        self.patcher.model.requires_grad_(False)
        self._loaded = False

    @property
    def device(self) -> torch.device:
        return torch.device(self.patcher.load_device)

    def load(self) -> None:
        """Put the UNet on the compute device (ComfyUI frees room for it first)."""
        mm.load_models_gpu([self.patcher], force_full_load=True)
        self._loaded = True

    def __call__(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond_embeddings: torch.Tensor) -> torch.Tensor:
        if not self._loaded:
            self.load()
        sigma = self.sampling.sigma(timesteps.float()).to(noisy_latents.device, torch.float32)
        shape = (-1,) + (1,) * (noisy_latents.dim() - 1)
        sigma_b = sigma.view(shape)
        sigma_data = float(getattr(self.sampling, "sigma_data", 1.0))
        # DDPM x_t -> k-diffusion x_sigma (apply_model divides it back by sqrt(sigma^2 + sigma_data^2)).
        x = noisy_latents.float() * (sigma_b**2 + sigma_data**2).sqrt()
        denoised = self.patcher.model.apply_model(x, sigma, c_crossattn=cond_embeddings)
        if self.prediction_type == "epsilon":  # denoised = x - eps * sigma
            return (x - denoised) / sigma_b
        # v: denoised = x * sd^2 / (s^2 + sd^2) - v * s * sd / sqrt(s^2 + sd^2)
        total = sigma_b**2 + sigma_data**2
        return (x * sigma_data**2 / total - denoised) * total.sqrt() / (sigma_b * sigma_data)


class ComfyLatentEncoder:
    """A ComfyUI VAE (+ the MODEL's latent format) as the trainer's latent encoder."""

    def __init__(self, vae, model):
        self.vae = vae
        self.base = model.model

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.movedim(1, -1).contiguous()  # library [B,3,H,W] -> ComfyUI [B,H,W,3]
        raw = self.vae.encode(pixels)
        return self.base.process_latent_in(raw).float()
