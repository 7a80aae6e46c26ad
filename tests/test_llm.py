"""LocalLLM loading and generation.

Tests on ``tiny_llm`` (random weights) check mechanics: batching, padding, seeds,
progress, errors. Tests marked ``real_model`` use SmolLM2-135M and check real
behaviour (GGUF conversion and its cache).
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from pmg_core.errors import ModelLoadError
from pmg_core.llm import LocalLLM, gguf_fingerprint, load_llm

PROMPTS = ["A person watched Toy Story.", "Give three keywords about jazz music please.", "Hi"]


def test_properties_follow_the_config(tiny_llm: LocalLLM):
    """Mechanics: the shape properties read the tiny Llama's config."""
    assert (tiny_llm.hidden_size, tiny_llm.num_layers) == (64, 2)
    assert (tiny_llm.num_attention_heads, tiny_llm.num_kv_heads, tiny_llm.head_dim) == (4, 2, 16)
    assert tiny_llm.context_length == 2048
    assert tiny_llm.device == torch.device("cpu")
    assert tiny_llm.tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in tiny_llm.model.parameters())


def test_identity_is_stable_and_content_based(tiny_llm_folder, tiny_llm, tmp_path):
    """Mechanics: reloading gives the same identity; other weights give another one."""
    assert load_llm(tiny_llm_folder).identity == tiny_llm.identity
    assert tiny_llm.identity.startswith("tiny-llama-")
    from pmg_tools.tiny_models.llm import save_tiny_llama

    other = load_llm(save_tiny_llama(tmp_path / "tiny-llama", seed=1))
    assert other.identity != tiny_llm.identity


def test_batch_gives_one_answer_per_prompt_equal_to_single_runs(tiny_llm):
    """Mechanics: left padding does not change greedy answers; order is kept."""
    batched = tiny_llm.generate(PROMPTS, max_new_tokens=8)
    singles = [tiny_llm.generate([p], max_new_tokens=8)[0] for p in PROMPTS]
    assert len(batched) == 3 and all(isinstance(text, str) for text in batched)
    assert batched == singles
    assert len(set(batched)) == 3  # the prompts really lead to different continuations
    assert tiny_llm.generate(PROMPTS, max_new_tokens=8, batch_size=2) == batched


def test_sampling_is_deterministic_under_a_seed_and_leaves_global_rng(tiny_llm):
    """Mechanics: same seed, same sample; another seed, another sample; global RNG untouched."""
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = tiny_llm.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert tiny_llm.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=5) == first
    assert tiny_llm.generate(PROMPTS, max_new_tokens=8, do_sample=True, seed=6) != first
    assert tiny_llm.generate(PROMPTS, max_new_tokens=8) != first  # greedy differs from a sample


def test_progress_counts_steps_and_can_interrupt(tiny_llm):
    """Mechanics: progress sees every decoding step; an exception inside it stops generation."""
    calls = []
    tiny_llm.generate(PROMPTS, max_new_tokens=4, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (8, 8)
    assert all(total == 8 for _, total in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) >= 8

    class Interrupted(Exception):
        pass

    def stop_at_two(done, total):
        if done >= 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        tiny_llm.generate(PROMPTS, max_new_tokens=50, progress=stop_at_two)


def test_chat_prompt_uses_the_template_or_the_plain_layout(tiny_llm):
    """Mechanics: SmolLM2's chat template when present, the reference layout otherwise."""
    text = tiny_llm.chat_prompt("list keywords", system="You help.", assistant_prefix="The keywords are:")
    assert "<|im_start|>system\nYou help.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\nThe keywords are:")
    template = tiny_llm.tokenizer.chat_template
    try:
        tiny_llm.tokenizer.chat_template = None
        plain = tiny_llm.chat_prompt("list keywords", system="You help.", assistant_prefix="The keywords are:")
    finally:
        tiny_llm.tokenizer.chat_template = template
    assert plain == "You help. ### Human: list keywords ### Assistant: The keywords are:"


def test_prompt_longer_than_the_context_is_refused(tmp_path):
    """Mechanics: generation never runs past the model's context (transformers would only warn)."""
    from pmg_core.errors import InvalidSettingError
    from pmg_tools.tiny_models.llm import tiny_llama

    small = tiny_llama(seed=0, context_length=64)
    assert small.generate(["short prompt"], max_new_tokens=8)
    with pytest.raises(InvalidSettingError, match="context of 64 tokens"):
        small.generate(["word " * 60], max_new_tokens=8)


def test_generate_rejects_a_bare_string(tiny_llm):
    """Mechanics: a str is not silently split into characters."""
    with pytest.raises(TypeError, match="list"):
        tiny_llm.generate("hello")
    assert tiny_llm.generate([]) == []


def test_to_keeps_the_model_usable(tiny_llm_folder):
    """Mechanics: the ComfyUI node moves the model around; it stays on the CPU here and still answers."""
    llm = load_llm(tiny_llm_folder, device="cpu")
    before = llm.generate(["Hi"], max_new_tokens=3)
    assert llm.to("cpu") is llm and llm.device == torch.device("cpu")
    assert llm.generate(["Hi"], max_new_tokens=3) == before


# -- bad inputs -----------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_llm(tmp_path / "nope")


def test_folder_without_config(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_llm(tmp_path)


def test_folder_with_a_gguf_but_no_config_points_to_the_file(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="model.gguf"):
        load_llm(tmp_path)


def test_random_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hello": "world", "layers": 3}))
    with pytest.raises(ModelLoadError, match="not a usable model config"):
        load_llm(tmp_path)


def test_config_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("not json {")
    with pytest.raises(ModelLoadError, match="config"):
        load_llm(tmp_path)


def test_unsupported_architecture(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        load_llm(tmp_path)


def test_config_without_weights(tiny_llm_folder, tmp_path):
    (tmp_path / "config.json").write_bytes((tiny_llm_folder / "config.json").read_bytes())
    with pytest.raises(ModelLoadError, match="weights"):
        load_llm(tmp_path)


def test_pickled_weights_are_refused(tiny_llm_folder, tmp_path):
    """A folder with only pytorch_model.bin (a pickle) is refused before anything unpickles it."""
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_llm_folder / name).exists():
            (tmp_path / name).write_bytes((tiny_llm_folder / name).read_bytes())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_llm(tmp_path)


def test_text_file_named_gguf(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="GGUF"):
        load_llm(fake, cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache" / "llm").glob("*")), "a failed conversion must leave no folder behind"


def test_other_single_file(tmp_path):
    fake = tmp_path / "model.bin"
    fake.write_bytes(b"\0" * 10)
    with pytest.raises(ModelLoadError, match=".gguf"):
        load_llm(fake)


def test_fingerprint_reads_head_size_and_tail(tmp_path):
    """The GGUF cache key changes when the size, the head or the tail of the file changes."""
    data = bytearray(b"a" * (3 * 1024 * 1024))
    path = tmp_path / "f.gguf"
    path.write_bytes(data)
    base = gguf_fingerprint(path)
    data[-1:] = b"b"
    path.write_bytes(data)
    assert gguf_fingerprint(path) != base
    path.write_bytes(bytes(data) + b"c")
    assert gguf_fingerprint(path) != base


# -- the real SmolLM2 ---------------------------------------------------------------


@pytest.mark.real_model
def test_gguf_conversion_is_cached(smollm2, model_cache_dir, monkeypatch):
    """Real model: a second load reuses the converted folder (no GGUF parsing) and keeps the identity."""
    from pmg_core import llm as llm_module
    from pmg_core.assets import smollm2_gguf

    def no_conversion(*args, **kwargs):
        raise AssertionError("the GGUF was converted again")

    monkeypatch.setattr(llm_module, "_convert_gguf", no_conversion)
    started = time.perf_counter()
    again = load_llm(smollm2_gguf(), cache_dir=model_cache_dir)
    elapsed = time.perf_counter() - started
    assert again.identity == smollm2.identity
    assert again.identity.startswith("SmolLM2-135M-Instruct.Q4_1-")
    assert (again.hidden_size, again.num_layers, again.num_kv_heads, again.head_dim) == (576, 30, 3, 64)
    assert again.context_length == 8192
    assert elapsed < 15, f"reloading the converted model took {elapsed:.1f} s"


@pytest.mark.real_model
def test_smollm2_answers_in_english(smollm2):
    """Real model: greedy decoding of a chat prompt gives words, and is reproducible."""
    prompt = smollm2.chat_prompt("Name three colours.")
    first = smollm2.generate([prompt], max_new_tokens=20)
    assert first == smollm2.generate([prompt], max_new_tokens=20)
    assert sum(c.isalpha() for c in first[0]) > 5
