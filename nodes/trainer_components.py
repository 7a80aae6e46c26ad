"""ComfyUI's MODEL and VAE as the soft-prompt trainer's injected components.

The library's trainer (:class:`pmg_core.training.SoftPromptTrainer`) needs a noise
predictor, a latent encoder and the noise schedule. Here they come from the
objects a ComfyUI checkpoint loader outputs:

* noise predictor: ``model.model.apply_model(x, sigma, c_crossattn=cond, **model_conds)``
  on a clone of the ModelPatcher, where ``model_conds`` are what the model's own
  ``extra_conds`` builds from the caption's pooled vector, as ComfyUI's sampler does
  (SDXL: ``y`` = pooled 1280 + six size/crop embeddings = 2816, the size being the
  training image's, uncropped; SD3: ``y`` = pooled 2048; Flux: ``y`` = pooled 768 and
  ``guidance``). DDPM families: ComfyUI works in k-diffusion form
  (``x_sigma = x_0 + sigma * eps``); the trainer's sample ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps``
  is the same point scaled by ``sqrt(a)``, with ``sigma = sqrt((1 - a) / a)``.
  Flow families (SD3, Flux) take ``x_t = (1 - sigma) x_0 + sigma eps`` as it is. The
  model's output (eps, v, or the flow velocity) is recovered from the denoised estimate
  by inverting ``model_sampling.calculate_denoised``.
* schedule: ``alphas_cumprod = 1 / (1 + sigmas^2)`` from ``model.model.model_sampling``
  (DDPM families), or its sigma table itself (flow families: SD3's shift 3, Flux's 1.15).
* latents: ``vae.encode`` (ComfyUI's ``[B, H, W, C]`` layout) then the model's
  ``process_latent_in`` (the family's scale and shift: SD1.x 0.18215, SDXL 0.13025,
  SD3 and Flux 16 channels with a shift).

ComfyUI runs nodes under ``torch.inference_mode()``, so every weight it loaded is an
*inference tensor*, which autograd refuses to save for a backward pass. Gradients
must flow *through* the frozen UNet and LLM to the adapter, so:

* the UNet's weights pass through a weight wrapper (ComfyUI's own mechanism, used by
  its LoRA trainer) that hands the layer an ordinary tensor aliasing the weight (no
  copy); the model itself is untouched;
* the LLM (this pack's own object) has its inference tensors replaced in place by
  ordinary copies with the same values (:func:`make_autograd_ready`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging

import comfy.model_management as mm
import comfy.model_sampling
import torch

from ..pmg_core.errors import TrainingError
from ..pmg_core.training.components import (
    FlowMatchingSchedule,
    FrozenGenerator,
    NoiseSchedule,
    TrainingSchedule,
)
from .comfy_text_encoder import ComfyTextEncoder

logger = logging.getLogger(__name__)

FLUX_GUIDANCE = 3.5  # what ComfyUI's Flux conditioning gets when no FluxGuidance node sets it
_FAMILIES = "SD1.x, SD2.x, SDXL, SD3 or Flux"


def _autograd_view(tensor: torch.Tensor) -> torch.Tensor:
    """An autograd-usable tensor with an inference tensor's values (ordinary tensors pass through).

    A plain tensor is made to alias the weight's storage, so no copy is made: a copy of
    every weight, held until the backward pass, would cost the whole model's size again
    (10 GB in fp32 for SDXL's UNet). Tensor subclasses (quantised weights) are copied.
    """
    if not tensor.is_inference():
        return tensor
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        return tensor.clone()
    view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return view.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())


def make_autograd_ready(module: torch.nn.Module) -> int:
    """Replace the inference tensors among ``module``'s parameters and buffers by ordinary copies.

    Values, devices, dtypes and ``requires_grad`` are kept; returns how many
    tensors were replaced. Must run outside ``torch.inference_mode()``.
    """
    replaced = 0
    with torch.inference_mode(False):
        for owner in module.modules():
            # Assigning an attribute that names a parameter or buffer replaces it in place
            # (a buffer keeps its persistence); each module's own entries, so tied weights are seen in each.
            for name, parameter in list(owner.named_parameters(recurse=False, remove_duplicate=False)):
                if parameter.is_inference():
                    setattr(owner, name, torch.nn.Parameter(parameter.clone(), requires_grad=False))
                    replaced += 1
            for name, buffer in list(owner.named_buffers(recurse=False, remove_duplicate=False)):
                if buffer.is_inference():
                    setattr(owner, name, buffer.clone())
                    replaced += 1
    return replaced


def _prediction_type(sampling) -> str:
    """``"epsilon"``, ``"v_prediction"`` (discrete DDPM schedules) or ``"flow"`` (rectified flow)."""
    flow_samplings = (comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.ModelSamplingFlux)
    if isinstance(sampling, flow_samplings) and isinstance(sampling, comfy.model_sampling.CONST):
        return "flow"
    if isinstance(sampling, comfy.model_sampling.EDM) or not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete):
        raise TrainingError(
            f"This model samples with {type(sampling).__name__}; soft-prompt training supports the discrete "
            "epsilon / v-prediction schedules (SD1.x, SD2.x, SDXL) and rectified flow (SD3, Flux). "
            f"Load an {_FAMILIES} checkpoint."
        )
    if isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        return "v_prediction"
    if isinstance(sampling, comfy.model_sampling.EPS):
        return "epsilon"
    raise TrainingError(f"Unsupported model sampling {type(sampling).__name__}; use an {_FAMILIES} checkpoint.")


def comfy_schedule(model) -> TrainingSchedule:
    """The trainer's schedule from a ComfyUI MODEL's ``model_sampling``: DDPM, or the flow sigma table."""
    sampling = model.model.model_sampling
    prediction = _prediction_type(sampling)
    sigmas = sampling.sigmas.detach().to("cpu", torch.float64).clone()
    if prediction == "flow":
        return FlowMatchingSchedule(sigmas)
    return NoiseSchedule(1.0 / (1.0 + sigmas**2), prediction)


def comfy_generator(model, clip, vae, flux_guidance: float = FLUX_GUIDANCE) -> FrozenGenerator:
    """ComfyUI's MODEL / CLIP / VAE as the library's :class:`FrozenGenerator` (nothing is modified)."""
    return FrozenGenerator(
        ComfyTextEncoder(clip),
        ComfyNoisePredictor(model, flux_guidance=flux_guidance),
        ComfyLatentEncoder(vae, model),
        comfy_schedule(model),
        model_identity(model),
    )


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
    """A ComfyUI MODEL as the trainer's noise predictor (frozen; gradients reach the condition only).

    ``flux_guidance``: the guidance input of guidance-distilled Flux models (ignored by
    the other families), as ComfyUI's FluxGuidance node would set it.
    """

    def __init__(self, model, flux_guidance: float = FLUX_GUIDANCE):
        self.sampling = model.model.model_sampling
        self.prediction_type = _prediction_type(self.sampling)
        self.flux_guidance = float(flux_guidance)
        # A clone: the wrappers below belong to this patcher only, the user's MODEL is unchanged.
        self.patcher = model.clone()
        wrapped = 0
        for name, module in self.patcher.model.named_modules():
            if not hasattr(module, "weight_function"):
                continue
            for kind in ("weight", "bias"):
                if getattr(module, kind, None) is not None:
                    self.patcher.add_weight_wrapper(f"{name}.{kind}", _autograd_view)
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

    def __call__(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        cond_embeddings: torch.Tensor,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if not self._loaded:
            self.load()
        shape = (-1,) + (1,) * (noisy_latents.dim() - 1)
        if self.prediction_type == "flow":
            # The flow sample is ComfyUI's model input as it is (CONST.calculate_input is the identity).
            sigma = self.sampling.sigmas.to(noisy_latents.device)[timesteps.to(noisy_latents.device)].float()
            x = noisy_latents.float()
        else:
            sigma = self.sampling.sigma(timesteps.float()).to(noisy_latents.device, torch.float32)
            sigma_data = float(getattr(self.sampling, "sigma_data", 1.0))
            # DDPM x_t -> k-diffusion x_sigma (apply_model divides it back by sqrt(sigma^2 + sigma_data^2)).
            x = noisy_latents.float() * (sigma.view(shape) ** 2 + sigma_data**2).sqrt()
        conds = self._model_conds(x, pooled)
        with self._autograd_safe_norms():
            denoised = self.patcher.model.apply_model(x, sigma, c_crossattn=cond_embeddings, **conds)
        return self._output(x, denoised, sigma.view(shape))

    @contextlib.contextmanager
    def _autograd_safe_norms(self):
        """For this call only, Flux's layer norms read a copy of their input.

        Flux's blocks add their residual in place (``x += ...``) into the very tensor
        their LayerNorm saved for the backward pass, which autograd refuses; a copy
        taken before the norm keeps the saved input intact. Other families need no copy.
        """
        diffusion_model = self.patcher.model.diffusion_model
        if not type(diffusion_model).__module__.startswith("comfy.ldm.flux") or not torch.is_grad_enabled():
            yield
            return
        hooks = [
            module.register_forward_pre_hook(lambda _module, args: (args[0].clone(), *args[1:]))
            for module in diffusion_model.modules()
            if isinstance(module, torch.nn.LayerNorm)
        ]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def _model_conds(self, x: torch.Tensor, pooled: torch.Tensor | None) -> dict:
        """The model's extra inputs (ADM ``y``, Flux ``guidance``...) built by its own ``extra_conds``.

        The arguments are those ComfyUI's sampler passes (``encode_model_conds``): the image
        size is the latent's times 8, uncropped, which is what the training images are.
        """
        params = {"device": x.device, "noise": x, "width": x.shape[-1] * 8, "height": x.shape[-2] * 8,
                  "guidance": self.flux_guidance}
        if pooled is not None:
            params["pooled_output"] = pooled.to(x.device, torch.float32)
        try:
            built = self.patcher.model.extra_conds(**params)
        except KeyError as missing:
            raise TrainingError(
                f"This model ({type(self.patcher.model).__name__}) needs {missing} beside the token condition, "
                "and the CLIP gives no pooled output; use the CLIP loaded with the same checkpoint."
            ) from None
        return {key: cond.process_cond(batch_size=x.shape[0], area=None).cond for key, cond in built.items()
                if key != "c_crossattn"}

    def _output(self, x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Invert ``model_sampling.calculate_denoised``: the model's own output (eps, v or flow velocity)."""
        if self.prediction_type in ("epsilon", "flow"):  # denoised = x - output * sigma
            return (x - denoised) / sigma
        sigma_data = float(getattr(self.sampling, "sigma_data", 1.0))
        # v: denoised = x * sd^2 / (s^2 + sd^2) - v * s * sd / sqrt(s^2 + sd^2)
        total = sigma**2 + sigma_data**2
        return (x * sigma_data**2 / total - denoised) * total.sqrt() / (sigma * sigma_data)


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
