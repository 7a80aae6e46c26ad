"""The shipped, trained sticker generator in the real ComfyUI server, through the stock nodes only.

Real weights (``models/generators/pmg-sticker-generator.safetensors``, trained by this
project; see models/README.md): two prompts of different emoji categories give
measurably different stickers, each judged closer to its own category by the
category classifier trained on real Twemoji images; and the library's sampler
gives the server's stickers for the same prompt and seed, so ``pmg eval``'s
figures are the figures of the ComfyUI workflow.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.comfy_server
REPO = Path(__file__).resolve().parents[1]
GENERATOR = REPO / "models" / "generators" / "pmg-sticker-generator.safetensors"
JUDGE = REPO / "models" / "judges" / "pmg-sticker-judge.safetensors"
PROMPTS = {"Smileys & Emotion": "grinning face with smiling eyes", "Food & Drink": "red apple"}
SEED, BATCH, STEPS, CFG = 11, 4, 20, 5.0


def graph(prompt: str, prefix: str, seed: int = SEED) -> dict:
    return {
        "1": {"class_type": "PMGStickerGeneratorLoader", "inputs": {"generator": GENERATOR.name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": prompt}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": BATCH}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": seed,
            "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def stickers(comfy_server, prompt: str, prefix: str) -> torch.Tensor:
    entry = comfy_server.client.run(graph(prompt, prefix), timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = []
    for record in entry["outputs"]["7"]["images"]:
        data = comfy_server.client.view(record["filename"], record.get("subfolder", ""), record.get("type", "output"))
        images.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def judge():
    from pmg_core.evaluation.judge import load_judge

    return load_judge(JUDGE)


@pytest.fixture(scope="module")
def served(comfy_server):
    return {category: stickers(comfy_server, prompt, f"sticker_gen_{i}") for i, (category, prompt) in enumerate(PROMPTS.items())}


def test_the_generator_ships_within_its_size_budget():
    assert GENERATOR.is_file() and GENERATOR.stat().st_size < 25e6


def test_two_prompts_give_different_stickers_each_nearer_its_own_category(served, judge):
    from pmg_core.sticker_model.dataset import CATEGORIES

    (first, a), (second, b) = served.items()
    assert a.shape == b.shape == (BATCH, 3, 64, 64)
    assert (a - b).abs().mean() > 0.05
    pa, pb = judge.probabilities(a).mean(0), judge.probabilities(b).mean(0)
    i, j = CATEGORIES.index(first), CATEGORIES.index(second)
    assert pa[i] > pb[i] and pb[j] > pa[j], (pa, pb)


def test_the_library_draws_the_servers_stickers(served):
    from pmg_core.evaluation.sticker_eval import StickerPipeline
    from pmg_core.sticker_model.text_encoder import MiniLMTextEncoder
    from pmg_core.sticker_model.weights import load_sticker_model

    pipeline = StickerPipeline(load_sticker_model(GENERATOR), MiniLMTextEncoder())
    condition = pipeline.encoder.encode([PROMPTS["Smileys & Emotion"]]).embeddings
    library = pipeline.generate(condition, SEED, BATCH, STEPS, CFG)
    assert (library - served["Smileys & Emotion"]).abs().max() < 3 / 255
