"""The ``realsize`` tier: PMG on FULL-SIZE SD1.5 and SDXL checkpoints (random weights) through ComfyUI's stock loader.

Not in the default run (pyproject's addopts deselect the marker): it builds 2.1 GB (SD1.5) and
6.9 GB (SDXL) checkpoints into ``~/.cache/pmg/realsize/`` once (``pmg_tools.realsize``) and loads
them at their real size (SDXL ~9 GB of memory). Run it with::

    bash scripts/test.sh -m realsize

(on a shared machine under ``flock /tmp/pmg-bigmem.lock``). Each test loads a checkpoint with the
stock ``CheckpointLoaderSimple``, checks the family ComfyUI detected from the tensor shapes, runs
PMG Soft Prompt Encoder and PMG Conditioning at the family's real widths (SD1.5 768; SDXL 2048 with
the pooled 1280 that ComfyUI puts into the ADM ``y``), samples with the stock ``KSampler`` at a
reduced size and step count, decodes with ``VAEDecode`` and scores with PMG Scorer. Random weights:
the images are noise; shapes, detection and the whole path are what is checked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_nodes import make_bundle

from pmg_tools.realsize import FAMILIES, ensure_realsize_checkpoint

pytestmark = [pytest.mark.realsize, pytest.mark.timeout(3600)]

ALPHAS = "0.3, 0.7"
SOFT_TOKENS = 4


@pytest.fixture(scope="module")
def checkpoints_folder(comfy_base) -> Path:
    """``models/checkpoints`` of the test base, registered with ComfyUI's folder_paths."""
    import folder_paths

    folder = comfy_base.models / "checkpoints"
    folder.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("checkpoints", str(folder), is_default=True)
    return folder


def load_stock(checkpoints_folder: Path, family: str):
    """(model, clip, vae) of the full-size random checkpoint of ``family``, through the stock node."""
    import nodes as comfy_nodes
    from pmg_core.atomic import copy_atomic

    name = FAMILIES[family].file_name
    copy_atomic(ensure_realsize_checkpoint(family), checkpoints_folder / name, link=True)
    with torch.inference_mode():
        return comfy_nodes.CheckpointLoaderSimple().load_checkpoint(name)


def run_pmg(pmg_pack, comfy_base, input_histories, tiny_llm_folder, model, clip, vae, size: int, steps: int):
    """History loader → Soft Prompt Encoder → Conditioning → KSampler → VAEDecode → Scorer, as the executor runs them."""
    import nodes as comfy_nodes

    llm = __import__("comfyui_pmg.pmg_core.llm", fromlist=["load_llm"]).load_llm(tiny_llm_folder)
    with torch.inference_mode():
        _, _, history_images = pmg_pack.nodes["PMGUserHistoryLoader"].execute(
            history_file="pmg/movies.jsonl", format="auto", user_id="ada", max_items=0, scene="auto").result
        bundle = make_bundle(pmg_pack, llm=llm)
        soft = pmg_pack.nodes["PMGSoftPromptEncoder"].execute(
            preference=bundle, adapter="random (untrained, research)", clip=clip, num_image_tokens=SOFT_TOKENS, seed=0).result[0]
        positive, negative, batch, alphas = pmg_pack.nodes["PMGConditioning"].execute(
            clip=clip, w_target=1.0, w_soft=1.0, w_preference=1.0, alphas=ALPHAS, preference=bundle,
            soft_prompt=soft).result
        (latent,) = comfy_nodes.EmptyLatentImage().generate(size, size, batch)
        (samples,) = comfy_nodes.KSampler().sample(model, 0, steps, 5.0, "euler", "normal", positive, negative, latent)
        (images,) = comfy_nodes.VAEDecode().decode(vae, samples)
        selected, _, record = pmg_pack.nodes["PMGScorer"].execute(
            images=images, history_images=history_images, target_image=history_images[:1], preference=bundle,
            alphas=alphas, alpha=0.5, lpips_net="alex", filename_prefix="pmg/realsize").args
    return soft, positive, negative, batch, images, selected, json.loads(record)


def check_condition(positive, negative, width: int, pooled_width: int, batch: int) -> torch.Tensor:
    """PMG's [A, 77+k+77, D] condition with the target's pooled vector, in ComfyUI's CONDITIONING form."""
    (embeddings, extras), = positive
    assert tuple(embeddings.shape) == (batch, 77 + SOFT_TOKENS + 77, width)
    assert tuple(extras["pooled_output"].shape) == (batch, pooled_width)
    (negative_embeddings, _), = negative
    assert negative_embeddings.shape == embeddings.shape
    assert torch.isfinite(embeddings).all()
    return extras["pooled_output"]


def check_images(images, selected, record, batch: int, size: int) -> None:
    assert tuple(images.shape) == (batch, size, size, 3) and torch.isfinite(images).all()
    assert tuple(selected.shape) == (1, size, size, 3)
    assert len(record["candidates"]) == batch and record["selected"] in range(batch)


def test_sd15_full_size_loads_as_sd15_and_runs_pmg(pmg_pack, comfy_base, input_histories, tiny_llm_folder,
                                                     checkpoints_folder):
    """SD1.5 (1.07 B parameters): detected as SD15 (EPS), 768-wide CLIP-L, PMG sampled at 128 px in 2 steps."""
    import comfy.model_base
    import comfy.sd1_clip

    model, clip, vae = load_stock(checkpoints_folder, "sd15")
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model.model_type == comfy.model_base.ModelType.EPS
    assert isinstance(clip.cond_stage_model, comfy.sd1_clip.SD1ClipModel)
    assert sum(p.numel() for p in model.model.diffusion_model.parameters()) == 859_520_964
    soft, positive, negative, batch, images, selected, record = run_pmg(
        pmg_pack, comfy_base, input_histories, tiny_llm_folder, model, clip, vae, size=128, steps=2)
    assert tuple(soft.embeddings.shape) == (1, SOFT_TOKENS, 768)
    assert batch == 2
    check_condition(positive, negative, 768, 768, batch)
    check_images(images, selected, record, batch, 128)


def test_sdxl_full_size_loads_as_sdxl_and_runs_pmg(pmg_pack, comfy_base, input_histories, tiny_llm_folder,
                                                     checkpoints_folder, monkeypatch):
    """SDXL base (3.47 B parameters, bf16, loaded as ``--bf16-unet`` would): detected as SDXL, CLIP-L+G 2048 wide,
    the pooled 1280 goes into ADM ``y`` (2816 = 1280 + 6·256 size/crop embeddings), sampled at 64 px in 1 step."""
    import comfy.cli_args
    import comfy.model_base
    import comfy.sdxl_clip

    monkeypatch.setattr(comfy.cli_args.args, "bf16_unet", True)  # fp32 would need 10 GB for the UNet alone
    model, clip, vae = load_stock(checkpoints_folder, "sdxl")
    assert isinstance(model.model, comfy.model_base.SDXL)
    assert type(model.model.model_config).__name__ == "SDXL"
    assert model.model.get_dtype() == torch.bfloat16
    assert isinstance(clip.cond_stage_model, comfy.sdxl_clip.SDXLClipModel)
    soft, positive, negative, batch, images, selected, record = run_pmg(
        pmg_pack, comfy_base, input_histories, tiny_llm_folder, model, clip, vae, size=64, steps=1)
    assert tuple(soft.embeddings.shape) == (1, SOFT_TOKENS, 2048)
    pooled = check_condition(positive, negative, 2048, 1280, batch)
    # What ComfyUI's SDXL feeds the UNet's label embedding for each row: pooled text first, then the size embeddings.
    y = model.model.encode_adm(pooled_output=pooled, width=64, height=64, target_width=64, target_height=64)
    assert tuple(y.shape) == (batch, 2816)
    assert torch.allclose(y[:, :1280].float(), pooled.float())
    check_images(images, selected, record, batch, 64)


def test_sd15_full_size_one_training_step(pmg_pack, comfy_base, sticker_set, tiny_llm_folder, checkpoints_folder):
    """One step of the PMG Soft Prompt Trainer node on the full-size SD1.5 (backward through the 860 M UNet)."""
    import shutil

    import nodes as comfy_nodes  # noqa: F401  (ComfyUI's node module first, as in the executor)

    llm_module = __import__("comfyui_pmg.pmg_core.llm", fromlist=["load_llm"])
    soft_prompt = __import__("comfyui_pmg.pmg_core.soft_prompt", fromlist=["load_adapter"])
    folder = comfy_base.input / "pmg_stickers_realsize"
    if not folder.exists():
        shutil.copytree(sticker_set, folder)
    model, clip, vae = load_stock(checkpoints_folder, "sd15")
    llm = llm_module.load_llm(tiny_llm_folder)
    with torch.inference_mode():
        path, curve = pmg_pack.nodes["PMGSoftPromptTrainer"].execute(
            history_file="pmg_stickers_realsize/history.jsonl", llm=llm, model=model, clip=clip, vae=vae,
            steps=1, learning_rate=1e-3, batch_size=1, grad_accum=1, resolution=64, negative_weight=0.5,
            num_image_tokens=2, num_prefix=2, seed=0, adapter_name="realsize_sd15", resume=False,
        ).result
    adapter = soft_prompt.load_adapter(path, llm=llm, text_dim=768)
    assert adapter.config.metadata["trained_steps"] == "1"
    assert adapter.config.generator.startswith("SD15@")
    assert curve.ndim == 4 and curve.shape[0] == 1
