"""PMG Image Prompt Encoder inside the real ComfyUI, on the shipped sticker generator and projection.

The history loader's images → the encoder → PMG Conditioning's soft_prompt → the stock KSampler:
the image tokens change the stickers (same seed, same target text), and two users' histories
give two different sets of stickers; given a soft prompt too, both token sets go through.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.comfy_server
TARGET = "a cute emoji, sticker, white background, grinning face"
PROJECTION = "pmg-sticker-image-prompt.safetensors"


def graph(user_id: str, with_image: bool, prefix: str) -> dict:
    nodes = {
        "1": {"class_type": "PMGStickerGeneratorLoader", "inputs": {"generator": "pmg-sticker-generator.safetensors"}},
        "2": {"class_type": "PMGUserHistoryLoader", "inputs": {
            "history_file": "pmg_stickers/history.jsonl", "format": "auto", "user_id": user_id, "max_items": 0,
            "scene": "sticker"}},
        "3": {"class_type": "PMGImagePromptEncoder", "inputs": {
            "history_images": ["2", 2], "projection": PROJECTION, "clip": ["1", 1]}},
        "4": {"class_type": "PMGConditioning", "inputs": {
            "clip": ["1", 1], "w_target": 1.0, "w_soft": 1.0, "w_preference": 1.0, "alphas": "0.5",
            "target_text": TARGET, "preference_text": ""}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["4", 1], "latent_image": ["5", 0], "seed": 3,
            "steps": 10, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": prefix}},
    }
    if with_image:
        nodes["4"]["inputs"]["soft_prompt"] = ["3", 0]
    else:
        del nodes["3"]
    return nodes


def stickers(server, nodes: dict) -> torch.Tensor:
    entry = server.client.run(nodes, timeout=300)
    assert entry["status"]["status_str"] == "success", (entry["status"], server.log_tail())
    saved = entry["outputs"]["8"]["images"]
    files = [server.client.view(r["filename"], r.get("subfolder", ""), r.get("type", "output")) for r in saved]
    images = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255 for data in files]
    return torch.from_numpy(np.stack(images))


def test_image_prompt_encoder_is_listed_with_the_shipped_projection(comfy_server):
    info = comfy_server.client.object_info()["PMGImagePromptEncoder"]
    assert info["category"] == "PMG/conditioning" and info["description"]
    projection = info["input"]["required"]["projection"]
    assert PROJECTION in projection[1]["options"] or PROJECTION in projection[0]


def test_image_tokens_steer_the_stickers_by_the_users_history(comfy_server):
    plain = stickers(comfy_server, graph("sticker_user_000", False, "pmg_test/ip_plain"))
    first = stickers(comfy_server, graph("sticker_user_000", True, "pmg_test/ip_u0"))
    second = stickers(comfy_server, graph("sticker_user_001", True, "pmg_test/ip_u1"))
    assert plain.shape == first.shape == (2, 64, 64, 3)
    # More than two grey levels on average (the PNGs are 8-bit; the same graph twice gives 0). The shipped
    # projection's tokens move the 64 px stickers by about 1% of the range (0.0096 here on the first user).
    visible = 2 / 255
    assert (first - plain).abs().mean() > visible  # the tokens reach the sampler
    assert (first - second).abs().mean() > visible  # and they come from the history images
