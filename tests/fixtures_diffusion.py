"""Session fixtures: a tiny random Stable Diffusion pipeline and its text encoder (mechanics only)."""

from __future__ import annotations

import pytest

from pmg_core.conditioning import DiffusersTextEncoder
from pmg_tools.tiny_models.diffusion import save_tiny_sd, tiny_sd_pipeline


@pytest.fixture(scope="session")
def tiny_sd():
    """A tiny random SD1.x-layout pipeline (32-wide text encoder, real CLIP tokenizer); do not mutate it."""
    return tiny_sd_pipeline(seed=0)


@pytest.fixture(scope="session")
def tiny_text_encoder(tiny_sd) -> DiffusersTextEncoder:
    """The tiny pipeline's CLIP text model behind the :class:`TextEncoder` protocol (width 32)."""
    return DiffusersTextEncoder(tiny_sd.tokenizer, tiny_sd.text_encoder)


@pytest.fixture(scope="session")
def tiny_sd_folder(tmp_path_factory):
    """The tiny pipeline saved as a local diffusers folder (safetensors)."""
    return save_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "tiny-sd", seed=0)
