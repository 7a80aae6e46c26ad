"""The trainer node and its ComfyUI component wrappers, on the tiny random SD1.5 checkpoint.

Mechanics only (random weights): the checkpoint is loaded by ComfyUI's own loader
under ``torch.inference_mode()`` as ComfyUI's executor does; its UNet / VAE /
schedule wrapped for the trainer must agree with the same file converted to
diffusers by :mod:`pmg_core.sd_checkpoint`, and the node must train, save an
adapter the soft-prompt encoder accepts, and return a loss-curve image.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from fixtures_nodes import make_bundle, pack_submodule

RESOLUTION = 64


@pytest.fixture(scope="module")
def comfy_checkpoint(comfy_source, tiny_checkpoint):
    """(model, clip, vae) of the tiny checkpoint, loaded like CheckpointLoaderSimple inside ComfyUI's executor."""
    import comfy.sd

    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(tiny_checkpoint), output_vae=True, output_clip=True
        )
    return model, clip, vae


@pytest.fixture(scope="module")
def diffusers_checkpoint(tiny_checkpoint):
    from pmg_core.sd_checkpoint import load_sd_components

    return load_sd_components(tiny_checkpoint)


def test_comfy_components_match_the_diffusers_conversion(pmg_pack, comfy_checkpoint, diffusers_checkpoint):
    """Mechanics: ComfyUI's UNet (via apply_model), VAE latents and schedule equal the diffusers-converted
    checkpoint's, and gradients reach the condition through ComfyUI's inference-mode weights."""
    components = pack_submodule("nodes.trainer_components")
    training = importlib.import_module("comfyui_pmg.pmg_core.training.components")
    model, _, vae = comfy_checkpoint
    ours = diffusers_checkpoint

    schedule = components.comfy_schedule(model)
    reference = training.NoiseSchedule.from_scheduler(ours.scheduler)
    assert schedule.prediction_type == "epsilon"
    assert torch.allclose(schedule.alphas_cumprod, reference.alphas_cumprod, rtol=1e-5)

    predictor = components.ComfyNoisePredictor(model)
    generator = torch.Generator().manual_seed(0)
    noisy = torch.randn(2, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([3, 700])
    cond = (torch.randn(2, 79, 768, generator=generator) * 0.5).requires_grad_(True)
    with torch.inference_mode(False), torch.enable_grad():
        eps = predictor(noisy, timesteps, cond)
        eps.square().mean().backward()
    with torch.no_grad():
        expected = ours.unet(noisy, timesteps, encoder_hidden_states=cond.detach()).sample
    assert torch.allclose(eps.detach(), expected, atol=2e-3, rtol=1e-3), (eps - expected).abs().max()
    assert cond.grad is not None and cond.grad.abs().sum() > 0

    images = torch.rand(1, 3, RESOLUTION, RESOLUTION, generator=generator)
    comfy_latents = components.ComfyLatentEncoder(vae, model)(images)
    diffusers_latents = training.DiffusersLatentEncoder(ours.vae, ours.latent_scaling, ours.latent_shift)(images)
    assert comfy_latents.shape == (1, 4, 8, 8)
    assert torch.allclose(comfy_latents, diffusers_latents, atol=1e-3), (comfy_latents - diffusers_latents).abs().max()


def test_trainer_node_trains_and_the_encoder_uses_the_adapter(
    pmg_pack, comfy_base, comfy_checkpoint, sticker_set, tiny_llm_folder
):
    """Mechanics: run under inference mode like ComfyUI, the node trains 2 steps on real sticker users,
    saves models/pmg/adapters/<name>.safetensors and a loss curve; PMG Soft Prompt Encoder then loads that adapter."""
    import shutil

    llm_module = importlib.import_module("comfyui_pmg.pmg_core.llm")
    soft_prompt = importlib.import_module("comfyui_pmg.pmg_core.soft_prompt")
    folder = comfy_base.input / "pmg_stickers_train"
    if not folder.exists():
        shutil.copytree(sticker_set, folder)
    model, clip, vae = comfy_checkpoint
    node = pmg_pack.nodes["PMGSoftPromptTrainer"]
    llm = llm_module.load_llm(tiny_llm_folder)
    with torch.inference_mode():
        # Worst case: weights created inside ComfyUI's executor are inference tensors, unusable by autograd.
        for owner in llm.model.modules():
            for name, parameter in list(owner.named_parameters(recurse=False)):
                owner.register_parameter(name, torch.nn.Parameter(parameter.clone(), requires_grad=False))
        assert next(llm.model.parameters()).is_inference()
        assert node.validate_inputs(history_file="pmg_stickers_train/history.jsonl", adapter_name="stickers_test") is True
        output = node.execute(
            history_file="pmg_stickers_train/history.jsonl", llm=llm, model=model, clip=clip, vae=vae,
            steps=2, learning_rate=1e-3, batch_size=2, grad_accum=1, resolution=RESOLUTION, negative_weight=0.5,
            num_image_tokens=2, num_prefix=2, seed=0, adapter_name="stickers_test", resume=True,
        )
    path, curve = output.result
    assert path == str(pmg_pack.base.models / "pmg" / "adapters" / "stickers_test.safetensors")  # the adapters' folder
    assert curve.ndim == 4 and curve.shape[0] == 1 and curve.shape[-1] == 3
    adapter = soft_prompt.load_adapter(path, llm=llm, text_dim=768)
    assert adapter.config.metadata["trained_steps"] == "2"
    assert adapter.config.generator.startswith("SD15@")
    assert "stickers_test.safetensors" in pack_submodule("nodes.comfy_paths").adapter_choices()

    encoder = pmg_pack.nodes["PMGSoftPromptEncoder"]
    with torch.inference_mode():
        soft = encoder.execute(
            preference=make_bundle(pmg_pack, llm=llm), adapter="stickers_test.safetensors", clip=clip,
            num_image_tokens=4, seed=0,
        ).result[0]
    assert tuple(soft.embeddings.shape) == (1, 2, 768)


def test_adapter_names_are_checked(pmg_pack):
    """Adapter names that are not plain file names are refused before any training."""
    node = pmg_pack.nodes["PMGSoftPromptTrainer"]
    message = node.validate_inputs(history_file="nope.jsonl", adapter_name="../evil")
    assert isinstance(message, str) and message
    module = pack_submodule("nodes.trainer_nodes")
    assert module.checked_adapter_name("my_adapter.safetensors") == "my_adapter"
    for bad in ("../evil", "a/b", "", ".hidden"):
        with pytest.raises(pmg_pack.errors.InvalidSettingError):
            module.checked_adapter_name(bad)
