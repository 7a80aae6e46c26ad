"""GGUF → Hugging Face folder, tensor by tensor, in the precision asked for.

The shard writer is checked on the tiny random Llama (fast); the conversion itself on
the shipped SmolLM2 GGUF (``real_model``: converted once per precision into the
persistent cache, then reused).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pmg_core.gguf_convert import _write_shards
from pmg_core.llm import load_llm


def test_shards_are_written_with_an_index_that_transformers_loads(tiny_llm_folder, tmp_path):
    """Mechanics: a model split over several shards loads back to the same weights and answers."""
    original = load_llm(tiny_llm_folder)
    out = tmp_path / "sharded"
    out.mkdir()
    state = original.model.state_dict()
    largest = max(t.numel() * t.element_size() for t in state.values())
    weight_map = _write_shards(iter(state.items()), out, shard_bytes=largest)
    for name in tiny_llm_folder.iterdir():
        if name.suffix != ".safetensors":
            shutil.copy(name, out / name.name)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == weight_map and len(set(weight_map.values())) >= 2
    assert not list(out.glob("shard-*")), "temporary shard names are renamed"
    reloaded = load_llm(out)
    assert all(torch.equal(reloaded.model.state_dict()[k], v) for k, v in state.items())
    assert reloaded.generate(["Hi there"], max_new_tokens=5) == original.generate(["Hi there"], max_new_tokens=5)


def test_one_small_model_is_one_file(tiny_llm_folder, tmp_path):
    state = load_llm(tiny_llm_folder).model.state_dict()
    weight_map = _write_shards(iter(state.items()), tmp_path, shard_bytes=1 << 30)
    assert set(weight_map.values()) == {"model.safetensors"}
    assert not (tmp_path / "model.safetensors.index.json").exists()


@pytest.mark.real_model
def test_smollm2_gguf_converts_to_bf16_at_two_bytes_per_parameter(smollm2, model_cache_dir):
    """Real model: the bf16 folder is the fp32 conversion's values rounded to bf16, at half the size."""
    from pmg_core.assets import smollm2_gguf

    half = load_llm(smollm2_gguf(), cache_dir=model_cache_dir, dtype="bf16")
    folder = next((model_cache_dir / "llm").glob(f"{half.weights_identity}-bf16"))
    full_folder = next((model_cache_dir / "llm").glob(f"{smollm2.weights_identity}-fp32"))
    assert half.weights_identity == smollm2.weights_identity and half.identity.endswith("-bf16")
    params = sum(p.numel() for p in half.model.parameters())
    on_disk = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    assert on_disk / params <= 2.1, f"{on_disk / params:.2f} bytes per parameter on disk"
    assert json.loads((folder / "config.json").read_text())["dtype"] == "bfloat16"
    bf16, fp32 = load_file(folder / "model.safetensors"), load_file(full_folder / "model.safetensors")
    assert bf16.keys() == fp32.keys()
    assert all(torch.equal(bf16[name], fp32[name].to(torch.bfloat16)) for name in fp32)
    answer = half.generate([half.chat_prompt("Name three colours.")], max_new_tokens=20)[0]
    assert sum(c.isalpha() for c in answer) > 5
