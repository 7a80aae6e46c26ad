"""Real-shaped language models with random weights, for measuring memory and speed (checkout tooling).

The shapes are the published ``config.json`` values of Llama-3.2-1B, Qwen2.5-3B and
Llama-3.1-8B, written out here (nothing is downloaded). Weights are random, drawn directly
in the target precision (a bf16 8B model never exists in fp32), and saved once under
``~/.cache/pmg/realsize-llm/<shape>-<dtype>/`` (outside the repository) with a tokenizer
that has a chat template: SmolLM2's, extracted from its GGUF. Its 49,152 ids all fall
inside the real vocabularies, so prompts work; the answers are noise.

    python -m pmg_tools.realsize_llm --shape llama-3.2-1b --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import transformers

from pmg_core.assets import default_cache_dir
from pmg_core.atomic import atomic_path
from pmg_core.errors import ModelLoadError
from pmg_core.llm_precision import torch_dtype

from .report import emit

log = logging.getLogger(__name__)

_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

# Published config.json values (checked against public copies of each model's config).
SHAPES: dict[str, dict] = {
    "llama-3.2-1b": {
        "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256, "tie_word_embeddings": True,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "rope_scaling": {**_LLAMA3_ROPE, "factor": 32.0},
    },
    "qwen2.5-3b": {
        "model_type": "qwen2", "hidden_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
        "intermediate_size": 11008, "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    },
    "llama-3.1-8b": {
        "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "intermediate_size": 14336, "vocab_size": 128256, "tie_word_embeddings": False, "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "rope_scaling": {**_LLAMA3_ROPE, "factor": 8.0},
    },
}


def realsize_config(shape: str) -> transformers.PretrainedConfig:
    """The transformers config of a named shape."""
    if shape not in SHAPES:
        raise ModelLoadError(f"Unknown LLM shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    values = dict(SHAPES[shape])
    return transformers.AutoConfig.for_model(values.pop("model_type"), **values)


def parameter_bytes(shape: str, dtype: str) -> int:
    """Bytes of the weights of ``shape`` at ``dtype`` (what memory checks compare with)."""
    from pmg_core.llm_placement import parameter_count

    element = torch.tensor([], dtype=torch_dtype(dtype)).element_size()
    return parameter_count(realsize_config(shape)) * element


def require_chat_template(tokenizer_dir: Path) -> None:
    """Raise unless ``tokenizer_dir`` holds a tokenizer with a chat template (the prompts need one)."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    except Exception as exc:  # transformers raises OSError/ValueError for a folder without a tokenizer
        raise ModelLoadError(
            f"{tokenizer_dir} holds no loadable tokenizer ({type(exc).__name__}); give the folder of a "
            "tokenizer saved with save_pretrained()."
        ) from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(
            f"The tokenizer in {tokenizer_dir} has no chat template, so chat prompts cannot be written the "
            "model's way; use a tokenizer that ships one (chat_template.jinja or tokenizer_config.json's "
            "chat_template), e.g. SmolLM2's (pmg_tools.tiny_models.llm.smollm2_tokenizer_dir)."
        )


def realsize_folder(shape: str, dtype: str = "bf16", root: Path | None = None, seed: int = 0) -> Path:
    """Where :func:`build_realsize_llm` keeps ``shape`` at ``dtype`` (it may not be built yet)."""
    root = Path(root) if root else default_cache_dir() / "realsize-llm"
    return root / f"{shape}-{dtype}-s{seed}"


def build_realsize_llm(
    shape: str,
    dtype: str = "bf16",
    root: Path | None = None,
    tokenizer_dir: Path | None = None,
    seed: int = 0,
) -> Path:
    """The folder of ``shape`` with random ``dtype`` weights (built once, then reused)."""
    from pmg_tools.tiny_models.llm import smollm2_tokenizer_dir

    config = realsize_config(shape)
    out = realsize_folder(shape, dtype, root, seed)
    if (out / "config.json").is_file():
        return out
    tokenizer_dir = Path(tokenizer_dir) if tokenizer_dir else smollm2_tokenizer_dir()
    require_chat_template(tokenizer_dir)  # before minutes of building
    log.info("Building %s with random %s weights in %s (once)", shape, dtype, out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Drawn in `dtype` from the start: transformers builds the parameters in the dtype given.
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch_dtype(dtype))
    model.eval()
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="1GB")  # peak: weights + 1 shard
        del model
        transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True).save_pretrained(tmp)
        (tmp / "pmg_realsize.json").write_text(json.dumps({"shape": shape, "dtype": dtype, "seed": seed}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--root", type=Path, default=None, help="where the folders go (default ~/.cache/pmg/realsize-llm)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    emit(str(build_realsize_llm(args.shape, args.dtype, args.root)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
