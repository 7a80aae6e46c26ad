"""LLM precision: dtype choice, 16-bit loading, cache keys and soft prompts at 16-bit, the placement plan.

Mechanics on the tiny random Llama; the decisions (``auto``, placement) are pure
functions fed with device facts, since the test machine has no GPU.
"""

from __future__ import annotations

import pytest
import torch

from pmg_core.errors import InvalidSettingError, ModelLoadError
from pmg_core.llm import load_llm, open_llm
from pmg_core.llm_placement import (
    check_quantization,
    loader_options,
    parameter_count,
    plan_placement,
)
from pmg_core.llm_precision import (
    bytes_per_parameter,
    choose_auto_dtype,
    dtype_name,
    resolve_dtype,
)
from pmg_core.soft_prompt import SoftPromptAdapter, soft_cache_key

GIB = 1 << 30


@pytest.mark.parametrize(
    ("device", "bf16", "fp16", "expected"),
    [("cuda", True, True, "bf16"), ("cuda", False, True, "fp16"), ("cuda", False, False, "fp32"),
     ("cpu", True, True, "fp32"), ("mps", False, True, "fp16")],
)
def test_auto_picks_the_half_precision_a_gpu_supports_and_fp32_on_the_cpu(device, bf16, fp16, expected):
    assert choose_auto_dtype(device, bf16, fp16) == expected


def test_names_resolve_and_unknown_ones_name_the_choices():
    assert resolve_dtype("auto", "cpu") == "fp32"
    assert resolve_dtype("bf16", "cpu") == "bf16"
    assert dtype_name(torch.float16) == "fp16"
    assert (bytes_per_parameter("fp32"), bytes_per_parameter("bf16"), bytes_per_parameter("fp16")) == (4, 2, 2)
    with pytest.raises(InvalidSettingError, match="auto, bf16, fp16, fp32"):
        resolve_dtype("int3", "cpu")
    with pytest.raises(InvalidSettingError, match="bf16, fp16 or fp32"):
        dtype_name(torch.float64)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_16_bit_weights_take_two_bytes_per_parameter_and_have_their_own_identity(tiny_llm_folder, dtype):
    full = load_llm(tiny_llm_folder)
    half = load_llm(tiny_llm_folder, dtype=dtype)
    params = list(half.model.parameters())
    in_memory = sum(p.numel() * p.element_size() for p in params) / sum(p.numel() for p in params)
    assert in_memory <= 2.1
    assert {p.dtype for p in params} == {getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[dtype])}
    assert full.identity == full.weights_identity, "fp32 keys stay as they were before precisions existed"
    assert half.identity == f"{full.identity}-{dtype}" and half.weights_identity == full.weights_identity
    answer = half.generate(["A person watched Toy Story."], max_new_tokens=6)
    assert len(answer) == 1 and isinstance(answer[0], str)


def test_an_open_handle_reads_no_weights_until_used_and_then_in_its_dtype(tiny_llm_folder):
    handle = open_llm(tiny_llm_folder, dtype="bf16")
    assert not handle.loaded and handle.identity.endswith("-bf16") and handle.hidden_size == 64
    assert handle.model.dtype == torch.bfloat16 and handle.weight_loads == 1
    handle.model  # noqa: B018 - a second read loads nothing
    assert handle.weight_loads == 1


def test_soft_embeddings_at_bf16_keep_an_fp32_adapter_and_a_separate_cache_key(tiny_llm_folder):
    """An adapter made for the fp32 weights serves them at bf16: fp32 in, fp32 out, gradients in fp32."""
    full = load_llm(tiny_llm_folder)
    half = load_llm(tiny_llm_folder, dtype="bf16")
    adapter = SoftPromptAdapter.untrained(full, text_dim=48)
    text = ["A person who likes jazz and space films."]
    with torch.no_grad():
        reference = adapter.encode(full, text)
    embeddings = adapter.encode(half, text)
    assert embeddings.dtype == torch.float32 and torch.isfinite(embeddings).all()
    assert torch.nn.functional.cosine_similarity(embeddings.flatten(), reference.flatten(), dim=0) > 0.98
    embeddings.square().mean().backward()
    grads = [p.grad for p in adapter.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    assert not any(p.requires_grad for p in half.model.parameters())
    adapter_id = "adapter-1"
    assert soft_cache_key(adapter_id, full.identity, text[0], 48) != soft_cache_key(adapter_id, half.identity, text[0], 48)


def test_keyword_cache_keeps_precisions_apart(tiny_llm_folder, tmp_path):
    """A user cached with the fp32 model is asked again of the bf16 one (the answers can differ)."""
    from pmg_core.history import Item, UserHistory
    from pmg_core.keywords import KeywordExtractor

    answer = "space opera\n2. salvage crews\n3. night trains\n4. robots\n5. the sea"

    def scripted(llm):
        calls = []
        llm.generate = lambda prompts, **_: calls.append(len(prompts)) or [answer] * len(prompts)
        return calls

    history = UserHistory("u", (Item("1", "Toy Story", ("Animation",)), Item("2", "Heat", ("Crime",))),
                          scene="movie", target=Item("3", "Alien", ("Sci-Fi",)))
    full, half = open_llm(tiny_llm_folder), open_llm(tiny_llm_folder, dtype="bf16")
    full_calls, half_calls = scripted(full), scripted(half)
    KeywordExtractor(full, cache_dir=tmp_path, n_preference=4, n_target=4).extract(history)
    KeywordExtractor(full, cache_dir=tmp_path, n_preference=4, n_target=4).extract(history)
    calls_after_fp32 = len(full_calls)
    KeywordExtractor(half, cache_dir=tmp_path, n_preference=4, n_target=4).extract(history)
    assert calls_after_fp32 > 0 and half_calls, "the bf16 model must not reuse the fp32 answers"


# -- bigger than VRAM: the plan ------------------------------------------------------------


@pytest.mark.parametrize(
    ("weights_gib", "free_gib", "device", "partial", "expected"),
    [
        (16, 0, "cpu", False, "cpu"),  # the CPU has no plan to make
        (2.5, 24, "cuda", False, "full"),  # a 1B model at bf16 on a 24 GB card
        (16, 24, "cuda", True, "full"),  # an 8B model at bf16 on a 24 GB card
        (16, 12, "cuda", True, "partial"),  # ... on a 12 GB card inside ComfyUI: its own lowvram loading
        (16, 12, "cuda", False, "offload"),  # ... outside ComfyUI: accelerate's device_map
        (11.5, 12, "cuda", False, "offload"),  # fits the card but not with the working reserve
    ],
)
def test_placement_plan_follows_free_vram(weights_gib, free_gib, device, partial, expected):
    plan = plan_placement(int(weights_gib * GIB), int(free_gib * GIB), device, partial_available=partial)
    assert plan == expected


def test_offload_options_cap_the_gpu_at_the_free_memory_less_the_reserve():
    options = loader_options("offload", torch.device("cuda", 1), torch.bfloat16, free_bytes=12 * GIB,
                             reserve_bytes=GIB)
    assert options == {"device_map": "auto", "max_memory": {1: 11 * GIB, "cpu": "1024GiB"}}
    assert loader_options("full", torch.device("cuda", 0), torch.bfloat16) == {"device_map": {"": "cuda:0"}}
    assert loader_options("cpu", torch.device("cpu"), torch.float32) == {}


def test_bitsandbytes_quantization_is_gpu_only_and_optional(monkeypatch):
    with pytest.raises(InvalidSettingError, match="CUDA GPU only"):
        plan_placement(GIB, 0, "cpu", quantization="nf4")
    with pytest.raises(InvalidSettingError, match="int8, nf4"):
        check_quantization("int2", "cuda")
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ModelLoadError, match="pip install bitsandbytes"):
        plan_placement(GIB, 24 * GIB, "cuda", quantization="int8")


def test_parameter_count_reads_the_config_without_weights(tiny_llm):
    assert parameter_count(tiny_llm.config) == sum(p.numel() for p in tiny_llm.model.parameters())


def test_adapter_training_steps_on_a_bf16_llm_keep_the_adapter_in_fp32(tiny_llm_folder, tiny_sd, tiny_text_encoder,
                                                                     tmp_path):
    """The trainer with a bf16 LLM: finite loss, fp32 adapter updated, LLM untouched."""
    from PIL import Image

    from pmg_core.training.components import (
        DiffusersLatentEncoder,
        DiffusersNoisePredictor,
        NoiseSchedule,
    )
    from pmg_core.training.examples import TrainingExample
    from pmg_core.training.trainer import SoftPromptTrainer, TrainConfig

    half = load_llm(tiny_llm_folder, dtype="bf16")
    before = {name: tensor.clone() for name, tensor in half.model.state_dict().items()}
    images = []
    for i in range(2):
        path = tmp_path / f"item{i}.png"
        Image.new("RGB", (32, 32), (60 * i, 120, 200)).save(path)
        images.append(path)
    examples = [
        TrainingExample(user_id=f"u{i}", soft_prompt_text=f"A person sent sticker {i}. Describe what they like.",
                        target_caption=f"a cute sticker {i}", target_image=images[i],
                        negative_caption=f"a cute sticker {1 - i}", negative_image=images[1 - i])
        for i in range(2)
    ]
    adapter = SoftPromptAdapter.untrained(half, tiny_text_encoder.width, num_image_tokens=2, num_prefix=2)
    trainer = SoftPromptTrainer(
        half, adapter, tiny_text_encoder, DiffusersNoisePredictor(tiny_sd.unet), DiffusersLatentEncoder(tiny_sd.vae),
        NoiseSchedule.from_scheduler(tiny_sd.scheduler),
        TrainConfig(batch_size=2, grad_accum=1, resolution=32, learning_rate=1e-2, checkpoint_every=2, seed=3),
        generator_identity="tiny-sd@test",
    )
    start = {name: p.detach().clone() for name, p in adapter.named_parameters()}
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=1e-2)
    loss, _, _ = trainer.micro_batch_loss(examples, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in adapter.parameters())
    assert any(not torch.equal(p, start[name]) for name, p in adapter.named_parameters())
    assert all(torch.equal(half.model.state_dict()[name], tensor) for name, tensor in before.items())
    assert adapter.config.llm_identity == half.weights_identity


def test_load_llm_refuses_bitsandbytes_on_the_cpu_before_reading_weights(tiny_llm_folder):
    with pytest.raises(InvalidSettingError, match="CUDA GPU only"):
        load_llm(tiny_llm_folder, device="cpu", quantization="nf4")
