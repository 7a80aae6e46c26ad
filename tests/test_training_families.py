"""Soft-prompt training on SDXL and the flow-matching families (SD3, Flux), on ComfyUI's shrunk classes.

Mechanics only (random weights). The text encoders are tests/fixtures_families.py's shrunk
ComfyUI CLIPs; the diffusion networks are ComfyUI's own classes with tiny widths, built
from the family's ``supported_models`` config as a checkpoint loader would build them:
SDXL's UNet (``model_base.SDXL``, ADM ``y`` = pooled + six size embeddings), SD3's MMDiT
(``model_base.SD3``, shift-3 flow sigmas) and Flux (``model_base.Flux``, shift-1.15 flow
sigmas, guidance input). Flow families get a ComfyUI VAE with 16 latent channels (a
random TAESD, which ComfyUI's VAE class detects by its keys).
"""

from __future__ import annotations

import importlib
import logging
import math
import shutil

import pytest
import torch
from fixtures_families import FAMILY_SHAPES
from fixtures_nodes import pack_submodule

logger = logging.getLogger(__name__)

K = 4  # soft tokens
LATENT = 8  # 64 px


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's ops skip weight initialisation: set every tensor (norm weights 1, the rest small)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
            if tensor.ndim == 1 and name.endswith("weight") and "norm" in name:
                tensor.fill_(1.0)
            elif tensor.ndim >= 2:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * tensor[0].numel() ** -0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)


def make_flow_model(family: str, seed: int = 0):
    """A tiny ComfyUI MODEL of SD3 (MMDiT, depth 1 = 64 wide) or Flux (64 wide, 1 double + 1 single block)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    width, pooled, _ = FAMILY_SHAPES[family]
    if family == "sd3":
        config = comfy.supported_models.SD3({
            "in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "adm_in_channels": pooled,
            "context_embedder_config": {"target": "torch.nn.Linear", "params": {"in_features": width, "out_features": 64}},
            "pos_embed_max_size": 16, "num_patches": 256, "pos_embed_scaling_factor": None,
        })
    elif family == "flux":
        config = comfy.supported_models.Flux({
            "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": pooled, "context_in_dim": width,
            "hidden_size": 64, "mlp_ratio": 2.0, "num_heads": 4, "depth": 1, "depth_single_blocks": 1,
            "axes_dim": [4, 6, 6], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": True,
        })
    else:
        raise ValueError(family)
    config.set_inference_dtype(torch.float32, None)
    base = config.get_model({})
    _randomise(base.diffusion_model, seed)
    device = comfy.model_management.get_torch_device()
    return comfy.model_patcher.ModelPatcher(base, load_device=device, offload_device=device)


def make_vae_16ch(seed: int = 0):
    """ComfyUI's VAE with 16 latent channels (SD3/Flux latents): a random TAESD, detected by its keys."""
    import comfy.sd
    import comfy.taesd.taesd

    taesd = comfy.taesd.taesd.TAESD(latent_channels=16)
    _randomise(taesd, seed)
    return comfy.sd.VAE(sd={k: v for k, v in taesd.state_dict().items() if k.startswith("taesd_")})


@pytest.fixture(scope="module")
def models(comfy_source, family_models) -> dict:
    return {"sdxl": family_models["sdxl"], "sd3": make_flow_model("sd3"), "flux": make_flow_model("flux")}


@pytest.fixture(scope="module")
def components(pmg_pack):
    return pack_submodule("nodes.trainer_components")


@pytest.fixture(scope="module")
def training(pmg_pack):
    return importlib.import_module("comfyui_pmg.pmg_core.training.components")


def _caption(family_clips, family, text="a cat sticker"):
    encoder = pack_submodule("nodes.comfy_text_encoder").ComfyTextEncoder(family_clips[family])
    encoded = encoder.encode([text])
    return encoder, encoded.embeddings, encoded.pooled


def test_flow_schedules_are_comfyuis_sigma_tables(models, components, training):
    """SD3 and Flux train with the rectified-flow schedule over their model's own sigma table (SD3 shift 3 over
    1000 levels, Flux shift 1.15 over 10000): x_t = (1 - s) x0 + s eps, target eps - x0; SDXL stays DDPM."""
    for family, levels in (("sd3", 1000), ("flux", 10000)):
        schedule = components.comfy_schedule(models[family])
        assert isinstance(schedule, training.FlowMatchingSchedule) and schedule.num_train_timesteps == levels
        sampling = models[family].model.model_sampling
        assert torch.allclose(schedule.sigmas.float(), sampling.sigmas.float())
        x0, eps = torch.randn(2, 16, 4, 4), torch.randn(2, 16, 4, 4)
        t = torch.tensor([0, levels - 1])
        s = schedule.sigmas[t].float().view(-1, 1, 1, 1)
        assert torch.allclose(schedule.add_noise(x0, eps, t), (1 - s) * x0 + s * eps)
        assert torch.equal(schedule.target(x0, eps, t), eps - x0)
    sd3_mid = components.comfy_schedule(models["sd3"]).sigmas[499]
    assert sd3_mid == pytest.approx(3 * 0.5 / (1 + 2 * 0.5), abs=1e-6)  # time_snr_shift(3, 0.5)
    assert components.comfy_schedule(models["sdxl"]).prediction_type == "epsilon"


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_gradients_reach_the_soft_tokens_not_the_frozen_model(family, models, components, family_clips):
    """The trainer's condition [caption tokens | soft] plus the caption's pooled vector runs through the family's
    network; the gradient reaches the soft tokens and no weight of the network."""
    encoder, text, pooled = _caption(family_clips, family)
    channels = 4 if family == "sdxl" else 16
    predictor = components.ComfyNoisePredictor(models[family])
    soft = (torch.randn(1, K, encoder.width) * 0.1).requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        out = predictor(torch.randn(1, channels, LATENT, LATENT), torch.tensor([300]), torch.cat([text, soft], 1), pooled)
        out.square().mean().backward()
    assert out.shape == (1, channels, LATENT, LATENT) and torch.isfinite(out).all()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    assert all(p.grad is None for p in predictor.patcher.model.parameters())


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_the_pooled_vector_and_guidance_reach_the_network(family, models, components, family_clips):
    """SDXL's y (pooled + size embeddings), SD3's y and Flux's y and guidance are built by the model's own
    extra_conds: another pooled vector (and, for Flux, another guidance) changes the prediction."""
    _, text, pooled = _caption(family_clips, family)
    channels = 4 if family == "sdxl" else 16
    noisy = torch.randn(1, channels, LATENT, LATENT, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([300])
    predictor = components.ComfyNoisePredictor(models[family])
    with torch.no_grad():
        base = predictor(noisy, t, text, pooled)
        other = predictor(noisy, t, text, pooled + 1.0)
    assert not torch.allclose(base, other)
    if family == "sdxl":
        conds = predictor._model_conds(noisy, pooled)
        assert conds["y"].shape == (1, FAMILY_SHAPES["sdxl"][1] + 6 * 256)  # real SDXL: 1280 + 1536 = 2816
        assert torch.allclose(conds["y"][:, : pooled.shape[1]], pooled)
    if family == "flux":
        with torch.no_grad():
            guided = components.ComfyNoisePredictor(models[family], flux_guidance=7.0)(noisy, t, text, pooled)
        assert not torch.allclose(base, guided)
        assert predictor._model_conds(noisy, pooled)["guidance"].tolist() == [3.5]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_prediction_inverts_comfyuis_denoised(family, models, components, training, family_clips):
    """The predictor returns the network's velocity: ComfyUI's denoised estimate equals x_t - sigma * v."""
    _, text, pooled = _caption(family_clips, family)
    predictor = components.ComfyNoisePredictor(models[family])
    schedule = components.comfy_schedule(models[family])
    x0, eps = torch.randn(1, 16, LATENT, LATENT), torch.randn(1, 16, LATENT, LATENT)
    t = torch.tensor([schedule.num_train_timesteps // 2])
    noisy = schedule.add_noise(x0, eps, t)
    sigma = schedule.sigmas[t].float()
    with torch.no_grad():
        v = predictor(noisy, t, text, pooled)
        denoised = predictor.patcher.model.apply_model(noisy, sigma, c_crossattn=text, **predictor._model_conds(noisy, pooled))
    assert torch.allclose(denoised, noisy - sigma.view(-1, 1, 1, 1) * v, atol=1e-5)


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_the_loss_goes_down_on_a_tiny_overfit_problem(family, models, components, family_clips):
    """Optimising only the soft tokens against the family's loss (eps for SDXL, eps - x0 for the flow families)
    on one fixed noisy latent lowers the loss: the frozen network passes a useful gradient back."""
    encoder, text, pooled = _caption(family_clips, family)
    channels = 4 if family == "sdxl" else 16
    predictor = components.ComfyNoisePredictor(models[family])
    schedule = components.comfy_schedule(models[family])
    generator = torch.Generator().manual_seed(2)
    x0 = torch.randn(1, channels, LATENT, LATENT, generator=generator)
    eps = torch.randn(1, channels, LATENT, LATENT, generator=generator)
    t = torch.tensor([schedule.num_train_timesteps // 2])
    noisy, target = schedule.add_noise(x0, eps, t).float(), schedule.target(x0, eps, t).float()
    soft = torch.zeros(1, K, encoder.width, requires_grad=True)
    optimizer = torch.optim.Adam([soft], lr=0.05)
    losses = []
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(15):
            loss = (predictor(noisy, t, torch.cat([text, soft], 1), pooled) - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    logger.info("%s overfit loss %.4f -> %.4f (15 Adam steps on the soft tokens)", family, losses[0], losses[-1])
    assert losses[-1] < losses[0] * 0.995, losses  # a random Flux responds weakly to its condition: ~0.7 %


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_trainer_node_trains_on_the_family(family, pmg_pack, comfy_base, models, family_clips, tiny_checkpoint,
                                           sticker_set, tiny_llm_folder):
    """The trainer node end to end (library train_adapter inside): 1 step on real sticker users, an adapter of the
    family's CLIP width whose metadata names the family's model class."""
    import comfy.sd

    folder = comfy_base.input / "pmg_stickers_families"
    if not folder.exists():
        shutil.copytree(sticker_set, folder)
    if family == "sdxl":  # SDXL latents have SD1's 4 channels: the tiny checkpoint's TAESD encodes them
        with torch.inference_mode():
            _, _, vae, _ = comfy.sd.load_checkpoint_guess_config(str(tiny_checkpoint), output_vae=True, output_clip=False)
    else:
        vae = make_vae_16ch()
    llm = importlib.import_module("comfyui_pmg.pmg_core.llm").load_llm(tiny_llm_folder)
    node = pmg_pack.nodes["PMGSoftPromptTrainer"]
    with torch.inference_mode():
        path, curve = node.execute(
            history_file="pmg_stickers_families/history.jsonl", llm=llm, model=models[family],
            clip=family_clips[family], vae=vae, steps=1, learning_rate=1e-3, batch_size=2, grad_accum=1,
            resolution=64, negative_weight=0.5, num_image_tokens=2, num_prefix=2, seed=0,
            adapter_name=f"{family}_family_test", resume=False,
        ).result
    soft_prompt = importlib.import_module("comfyui_pmg.pmg_core.soft_prompt")
    adapter = soft_prompt.load_adapter(path, llm=llm, text_dim=FAMILY_SHAPES[family][0])
    assert adapter.config.metadata["trained_steps"] == "1"
    assert math.isfinite(float(adapter.config.metadata["final_loss"]))
    assert adapter.config.generator.startswith({"sdxl": "SDXL@", "sd3": "SD3@", "flux": "Flux@"}[family])
    assert curve.ndim == 4


def test_weights_reach_autograd_without_a_copy(components):
    """ComfyUI's inference-mode weights are handed to the layers as ordinary tensors aliasing the same memory (a copy
    of every weight held until the backward pass would double the model's memory); the values are untouched."""
    with torch.inference_mode():
        weight = torch.randn(8, 8)
    view = components._autograd_view(weight)
    assert not view.is_inference() and view.data_ptr() == weight.data_ptr() and torch.equal(view, weight)
    x = torch.randn(2, 8, requires_grad=True)
    with torch.inference_mode(False), torch.enable_grad():
        torch.nn.functional.linear(x, view).square().sum().backward()  # autograd saves the weight
    assert x.grad is not None and x.grad.abs().sum() > 0
    ordinary = torch.randn(3)
    assert components._autograd_view(ordinary) is ordinary


def test_a_model_that_needs_the_pooled_text_refuses_a_clip_without_it(models, components, pmg_pack, family_clips):
    """SD3 reads the pooled vector as y: a text encoder that gives none stops with a message naming the input."""
    _, text, _ = _caption(family_clips, "sd3")
    predictor = components.ComfyNoisePredictor(models["sd3"])
    with pytest.raises(pmg_pack.errors.TrainingError, match="pooled_output.*same checkpoint"):
        predictor(torch.randn(1, 16, LATENT, LATENT), torch.tensor([10]), text, None)
