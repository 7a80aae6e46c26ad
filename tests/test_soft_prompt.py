"""Soft preference embeddings: image tokens + P-Tuning v2 prefix + bridge over a frozen LLM.

Most tests run on the tiny random Llama (hidden 64, 2 layers, 4 heads, 2 KV heads, SmolLM2 tokenizer):
they check mechanics (shapes, padding, gradients, the prefix cache, the file
format), not what a trained adapter produces. The ``real_model`` test runs the
real SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import functools
import time
from types import SimpleNamespace

import pytest
import torch

from pmg_core.errors import AdapterMismatchError, EmbeddingValueError, InvalidSettingError, ModelLoadError
from pmg_core.soft_prompt import AdapterConfig, SoftPromptAdapter, load_adapter, save_adapter

TEXT_DIM = 48  # deliberately not a real encoder width: the adapter must take it from the caller
SHORT = "A person watched the following movies \"1. Heat(Crime)\". Please describe his movie interests."
LONG = (
    "A person watched the following movies \"1. Heat(Crime, Thriller): heist, detective, los angeles, "
    "robbery, police. 2. Alien(Horror, Sci-Fi): space, creature, ship, crew, survival.\". "
    "Please describe his movie interests."
)


def other_llm(llm, identity=None, hidden=None):
    """An object with the identity and shape attributes of another LLM (only what the checks read)."""
    return SimpleNamespace(
        weights_identity=identity or llm.weights_identity,
        hidden_size=hidden or llm.hidden_size,
        num_layers=llm.num_layers,
        num_kv_heads=llm.num_kv_heads,
        head_dim=llm.head_dim,
    )


@pytest.fixture(scope="module")
def llm(tiny_llm):
    """The tiny random Llama of tests/fixtures_llm.py (hidden 64, 2 layers, 4 heads, 2 KV heads)."""
    return tiny_llm


@pytest.fixture()
def adapter(llm) -> SoftPromptAdapter:
    return SoftPromptAdapter.untrained(llm, TEXT_DIM, num_image_tokens=4, num_prefix=4, seed=0)


def test_output_shape_and_config(llm, adapter):
    with torch.no_grad():
        out = adapter.encode(llm, [SHORT, LONG])
    assert out.shape == (2, 4, TEXT_DIM)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    c = adapter.config
    assert (c.llm_hidden_size, c.llm_num_layers, c.llm_num_kv_heads, c.llm_head_dim, c.text_dim) == (64, 2, 2, 16, 48)
    assert adapter.prefix.weight.shape == (4, 2 * 2 * 2 * 16)
    assert adapter.bridge.out_features == TEXT_DIM


def test_untrained_is_deterministic_per_seed(llm):
    a = SoftPromptAdapter.untrained(llm, TEXT_DIM, seed=3)
    b = SoftPromptAdapter.untrained(llm, TEXT_DIM, seed=3)
    c = SoftPromptAdapter.untrained(llm, TEXT_DIM, seed=4)
    for (name, pa), (_, pb), (_, pc) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
        if name != "bridge.bias":  # the bias starts at zero for every seed
            assert not torch.equal(pa, pc), name
    with torch.no_grad():
        assert torch.equal(a.encode(llm, [SHORT]), b.encode(llm, [SHORT]))


def test_image_tokens_follow_embedding_statistics(llm, adapter):
    table = llm.model.get_input_embeddings().weight
    assert abs(adapter.image_tokens.std().item() - table.std().item()) < 0.5 * table.std().item()


def test_batch_equals_each_text_alone(llm, adapter):
    """Left padding keeps the image tokens at the true end of every row, with unchanged positions."""
    with torch.no_grad():
        batch = adapter.encode(llm, [SHORT, LONG, "hi"])
        for i, text in enumerate([SHORT, LONG, "hi"]):
            torch.testing.assert_close(batch[i : i + 1], adapter.encode(llm, [text]), atol=1e-5, rtol=1e-4)


def test_positions_start_after_the_prefix(llm, adapter, monkeypatch):
    """For one unpadded text, the explicit positions equal transformers' own default with a filled cache."""
    decoder = llm.model.base_model
    seen = {}
    original = decoder.forward

    @functools.wraps(original)  # keeps the signature the adapter inspects
    def spy(*args, **kwargs):
        seen["position_ids"] = kwargs["position_ids"].clone()
        seen["cache"] = kwargs.get("cache", kwargs.get("past_key_values"))
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", spy)
    with torch.no_grad():
        ours = adapter.encode(llm, [SHORT])
    text_tokens = len(llm.tokenizer(SHORT)["input_ids"])
    expected = torch.arange(4, 4 + text_tokens + 4).unsqueeze(0)
    assert torch.equal(seen["position_ids"], expected)
    monkeypatch.undo()

    # Same call without explicit positions: transformers derives them from the cache length.
    with torch.no_grad():
        ids = torch.tensor([llm.tokenizer(SHORT)["input_ids"]])
        embeds = torch.cat([llm.model.get_input_embeddings()(ids), adapter.image_tokens[None]], dim=1)
        from pmg_core.soft_prompt import _prefix_cache

        cache = _prefix_cache(adapter.prefix_key_values(1, torch.device("cpu"), torch.float32), llm.model.config)
        hidden = decoder(inputs_embeds=embeds, cache=cache, use_cache=True).last_hidden_state
        reference = adapter.bridge(hidden[:, -4:])
    torch.testing.assert_close(ours, reference)


def test_prefix_changes_the_output(llm, adapter):
    with torch.no_grad():
        before = adapter.encode(llm, [SHORT])
        adapter.prefix.weight.zero_()
        zero = adapter.encode(llm, [SHORT])
        adapter.prefix.weight.normal_(0, 1.0)
        large = adapter.encode(llm, [SHORT])
    assert not torch.allclose(before, zero)
    assert not torch.allclose(zero, large, atol=1e-3)


def test_text_changes_the_output(llm, adapter):
    with torch.no_grad():
        out = adapter.encode(llm, [SHORT, LONG])
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_gradients_reach_adapter_but_not_llm(llm, adapter):
    out = adapter.encode(llm, [SHORT, LONG])
    out.square().mean().backward()
    for name in ("image_tokens", "prefix.weight", "bridge.weight", "bridge.bias"):
        grad = adapter.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in llm.model.parameters())


def test_save_load_round_trip(tmp_path, llm, adapter):
    path = tmp_path / "adapters" / "user.safetensors"
    adapter.config.generator = "SD1.5"
    save_adapter(adapter, path, extra_metadata={"epochs": "3", "dataset": "ml-100k"})
    loaded = load_adapter(path, llm=llm, text_dim=TEXT_DIM)
    assert loaded.config.generator == "SD1.5"
    assert loaded.config.metadata == {"epochs": "3", "dataset": "ml-100k"}
    assert loaded.config.text_dim == TEXT_DIM and loaded.config.llm_identity == llm.identity
    assert not list(path.parent.glob(".*tmp*"))  # the temporary file is gone
    with torch.no_grad():
        assert torch.equal(loaded.encode(llm, [SHORT, LONG]), adapter.encode(llm, [SHORT, LONG]))


def test_header_holds_every_config_field_as_text(tmp_path, adapter):
    from safetensors import safe_open

    path = tmp_path / "a.safetensors"
    save_adapter(adapter, path)
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert header["format"] == "pmg-soft-prompt-adapter" and header["format_version"] == "1"
    for name in ("llm_identity", "llm_hidden_size", "llm_num_layers", "llm_num_kv_heads", "llm_head_dim",
                 "text_dim", "num_image_tokens", "num_prefix", "generator"):
        assert name in header, name


@pytest.mark.parametrize(
    "changes, named",
    [(dict(identity="other-llm@1234"), "other-llm@1234"), (dict(hidden=32), "hidden 32")],
)
def test_load_rejects_another_llm(tmp_path, llm, adapter, changes, named):
    path = tmp_path / "a.safetensors"
    save_adapter(adapter, path)
    with pytest.raises(AdapterMismatchError) as excinfo:
        load_adapter(path, llm=other_llm(llm, **changes))
    message = str(excinfo.value)
    assert named in message and llm.identity in message and "hidden 64" in message
    assert "train" in message  # the fix


def test_load_rejects_another_text_width(tmp_path, adapter):
    path = tmp_path / "a.safetensors"
    save_adapter(adapter, path)
    with pytest.raises(AdapterMismatchError) as excinfo:
        load_adapter(path, text_dim=768)
    assert "48" in str(excinfo.value) and "768" in str(excinfo.value)


def test_encode_rejects_another_llm(llm, adapter):
    import copy

    renamed = copy.copy(llm)  # same weights, another identity
    renamed.weights_identity = "someone-else@9"
    with pytest.raises(AdapterMismatchError, match="someone-else@9"):
        adapter.encode(renamed, [SHORT])


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_load_rejects_corrupted_files(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_adapter(path)


def test_load_rejects_truncated_adapter(tmp_path, adapter):
    path = tmp_path / "a.safetensors"
    save_adapter(adapter, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelLoadError):
        load_adapter(path)


def test_load_rejects_foreign_safetensors_and_missing_files(tmp_path):
    from safetensors.torch import save_file

    foreign = tmp_path / "lora.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="not a PMG soft-prompt adapter"):
        load_adapter(foreign)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_adapter(tmp_path / "missing.safetensors")


def test_nan_outputs_raise(llm, adapter):
    with torch.no_grad():
        adapter.bridge.bias[0] = float("nan")
        with pytest.raises(EmbeddingValueError, match="NaN/inf"):
            adapter.encode(llm, [SHORT])


def test_bad_settings_are_rejected(llm):
    with pytest.raises(InvalidSettingError, match="num_prefix"):
        SoftPromptAdapter.untrained(llm, TEXT_DIM, num_prefix=0)
    with pytest.raises(InvalidSettingError):
        SoftPromptAdapter.untrained(llm, TEXT_DIM, seed=0).encode(llm, [])


def test_config_metadata_round_trip():
    config = AdapterConfig("x@1", 576, 30, 3, 64, 768, generator="SDXL", metadata={"lr": "5e-6"})
    assert AdapterConfig.from_metadata(config.to_metadata()) == config


def test_overlong_text_keeps_its_end(llm, adapter, caplog):
    """A text longer than the context is cut at the start (with a warning), keeping the request at its end."""
    short_context = SimpleNamespace(
        model=llm.model, tokenizer=llm.tokenizer, identity=llm.identity, weights_identity=llm.weights_identity,
        hidden_size=llm.hidden_size,
        num_layers=llm.num_layers, num_kv_heads=llm.num_kv_heads, head_dim=llm.head_dim, device=llm.device,
        context_length=40,
    )
    ending = " Please describe his movie interests."
    long_text = "movie " * 100 + ending
    with torch.no_grad():
        out = adapter.encode(short_context, [long_text])
        # The kept part is the last 40 - 4 prefix - 4 image = 32 tokens of the text.
        kept = llm.tokenizer.decode(llm.tokenizer(long_text)["input_ids"][-32:])
        assert kept.endswith(ending.strip())
        torch.testing.assert_close(out, adapter.encode(llm, [kept]), atol=1e-5, rtol=1e-4)
    assert out.shape == (1, 4, TEXT_DIM)
    assert "dropping the first" in caplog.text


@pytest.mark.real_model
def test_real_smollm2_untrained_adapter_encodes_movielens_prompt(smollm2):
    """Real SmolLM2-135M: an untrained adapter maps a MovieLens soft prompt to 4 finite 768-d vectors."""
    adapter = SoftPromptAdapter.untrained(smollm2, 768, seed=0)
    text = (
        "A person watched the following movies \"1. Star Wars (1977)(Action, Adventure, Romance, Sci-Fi, War): "
        "space, rebellion, jedi, empire, droids. 2. Fargo (1996)(Crime, Drama, Thriller): kidnapping, snow, "
        "police, ransom, minnesota. 3. Contact (1997)(Drama, Sci-Fi): signal, alien, scientist, radio, faith.\". "
        "Please describe his movie interests."
    )
    started = time.perf_counter()
    with torch.no_grad():
        out = adapter.encode(smollm2, [text])
    elapsed = time.perf_counter() - started
    assert out.shape == (1, 4, 768)
    assert torch.isfinite(out).all()
    assert out.std() > 0  # not collapsed to a constant
    assert elapsed < 30


def test_building_and_loading_leave_the_global_rng_alone(tmp_path, llm, adapter):
    path = tmp_path / "a.safetensors"
    save_adapter(adapter, path)
    state = torch.random.get_rng_state()
    SoftPromptAdapter.untrained(llm, TEXT_DIM, seed=5)
    load_adapter(path)
    assert torch.equal(torch.random.get_rng_state(), state)


# --- encode_cached: the one soft-embedding cache (the node and `pmg embed` use it) -----------


def test_encode_cached_computes_once_then_reads_the_cache(tmp_path, llm, monkeypatch):
    from pmg_core.cache import cache_key
    from pmg_core.soft_prompt import AdapterSource, encode_cached, load_soft_embeddings

    source = AdapterSource(num_image_tokens=3, seed=5)
    first = encode_cached(llm, ["a", "b"], source, 24, cache_dir=tmp_path)
    assert first.embeddings.shape == (2, 3, 24) and first.cached == (False, False)
    expected = SoftPromptAdapter.untrained(llm, text_dim=24, num_image_tokens=3, seed=5).encode(llm, ["a", "b"])
    assert torch.allclose(first.embeddings, expected.detach())
    # One key function for every cache of the project, one file format for the cache and `pmg embed`.
    assert first.cache_keys[0] == cache_key("pmg-soft-prompt-v2", source.identity(), llm.identity, "a", 24)
    stored, header = load_soft_embeddings(tmp_path / "soft_prompts" / f"{first.cache_keys[0]}.safetensors")
    assert torch.equal(stored, first.embeddings[:1]) and header["cache_key"] == first.cache_keys[0]

    def no_adapter(*_args, **_kwargs):
        raise AssertionError("a cache hit must not build the adapter")

    monkeypatch.setattr(AdapterSource, "build", no_adapter)
    again = encode_cached(llm, ["b", "a"], source, 24, cache_dir=tmp_path)
    assert again.cached == (True, True)
    assert torch.equal(again.embeddings, first.embeddings.flip(0))


def test_encode_cached_keys_on_the_adapter_and_recomputes_damaged_entries(tmp_path, llm, caplog):
    from pmg_core.soft_prompt import AdapterSource, encode_cached

    seven = encode_cached(llm, ["a"], AdapterSource(seed=7), 24, cache_dir=tmp_path)
    eight = encode_cached(llm, ["a"], AdapterSource(seed=8), 24, cache_dir=tmp_path)
    assert seven.cache_keys != eight.cache_keys and not torch.allclose(seven.embeddings, eight.embeddings)
    (tmp_path / "soft_prompts" / f"{seven.cache_keys[0]}.safetensors").write_bytes(b"damaged")
    again = encode_cached(llm, ["a"], AdapterSource(seed=7), 24, cache_dir=tmp_path)
    assert again.cached == (False,) and torch.allclose(again.embeddings, seven.embeddings)
    assert "unreadable soft-prompt cache entry" in caplog.text
    assert not [p for p in (tmp_path / "soft_prompts").iterdir() if p.name.startswith(".")]


def test_encode_cached_with_a_trained_file_and_without_the_cache(tmp_path, llm, adapter):
    from pmg_core.soft_prompt import AdapterSource, encode_cached

    save_adapter(adapter, tmp_path / "a.safetensors")
    result = encode_cached(llm, ["x"], AdapterSource(tmp_path / "a.safetensors"), adapter.config.text_dim,
                           cache_dir=tmp_path / "cache", use_cache=False)
    assert torch.allclose(result.embeddings, adapter.encode(llm, ["x"]).detach(), atol=1e-6)
    assert result.metadata["adapter_id"].startswith("sha256:") and not (tmp_path / "cache").exists()
    with pytest.raises(AdapterMismatchError):
        encode_cached(llm, ["x"], AdapterSource(tmp_path / "a.safetensors"), adapter.config.text_dim + 8,
                      cache_dir=tmp_path / "cache")
