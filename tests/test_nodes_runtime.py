"""Where the LLM lives between node runs, the device choice, and the progress callback.

The LLM runs under ComfyUI's model management (a ``ModelPatcher`` loaded by
``load_models_gpu``). This machine has no GPU, so these tests check the
bookkeeping on the CPU: what is registered in ``current_loaded_models``, when it is
unloaded, what ``unload_all_models`` (``POST /free``) releases, and that a handle
whose weights were never needed loads nothing. The GPU side (weights really moving
to CUDA, eviction by a diffusion model) is the same code path with another device.
"""

from __future__ import annotations

import pytest
import torch

from fixtures_nodes import pack_submodule


@pytest.fixture()
def runtime(pack_module):
    module = pack_submodule("nodes.comfy_runtime")
    yield module
    module.mm.unload_all_models()


@pytest.fixture()
def handle(pack_module, tiny_llm_folder):
    """A fresh lazy handle on the tiny Llama: weights not loaded yet."""
    llm = pack_submodule("pmg_core.llm").open_llm(tiny_llm_folder)
    assert not llm.loaded
    return llm


def _registered_models(runtime) -> list:
    return [entry.model for entry in runtime.mm.current_loaded_models]


def test_a_block_loads_the_weights_registers_them_and_unloads_after(runtime, handle):
    runtime.remember_compute_device(handle, runtime.resolve_device("cpu"))
    with runtime.llm_on_compute_device(handle, keep_loaded=False) as device:
        assert device == torch.device("cpu")
        assert handle.loaded and handle.weight_loads == 1
        patcher = runtime.runtime_state(handle).patcher
        assert patcher.model.llm is handle.model
        assert patcher in _registered_models(runtime)
        assert patcher.model_size() == sum(p.numel() * p.element_size() for p in handle.model.parameters())
    assert patcher not in _registered_models(runtime)
    assert runtime.runtime_state(handle).device_loads == 1


def test_keep_model_loaded_leaves_it_registered_and_the_next_use_does_not_load_it_again(runtime, handle):
    with runtime.llm_on_compute_device(handle, keep_loaded=True):
        pass
    with runtime.llm_on_compute_device(handle, keep_loaded=True):
        pass
    assert runtime.is_registered(handle)
    assert runtime.runtime_state(handle).device_loads == 1 and handle.weight_loads == 1
    runtime.mm.unload_all_models()  # what POST /free {"unload_models": true} runs
    assert not runtime.is_registered(handle)
    assert handle.device.type == "cpu"
    with runtime.llm_on_compute_device(handle, keep_loaded=False):
        assert runtime.is_registered(handle)
    assert runtime.runtime_state(handle).device_loads == 2 and handle.weight_loads == 1


def test_the_llm_is_unloaded_even_when_the_block_fails(runtime, handle):
    with pytest.raises(RuntimeError), runtime.llm_on_compute_device(handle, keep_loaded=False):
        raise RuntimeError("interrupted")
    assert not runtime.is_registered(handle)


def test_a_load_that_fails_part_way_is_undone(runtime, handle, monkeypatch):
    """Out of memory inside load_models_gpu after registering: the LLM is unloaded again."""
    real = runtime.mm.load_models_gpu

    def failing(models, **kwargs):
        real(models, **kwargs)
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(runtime.mm, "load_models_gpu", failing)
    with pytest.raises(torch.OutOfMemoryError), runtime.llm_on_compute_device(handle, keep_loaded=True):
        pass
    assert not runtime.is_registered(handle)


def test_a_handle_nobody_computes_with_loads_nothing(runtime, handle):
    runtime.remember_compute_device(handle, runtime.resolve_device("auto"))
    assert handle.identity and handle.hidden_size and handle.count_tokens("a red apple") > 0
    assert not handle.loaded and handle.weight_loads == 0
    assert runtime.runtime_state(handle).patcher is None and not runtime.is_registered(handle)


def test_device_choices_follow_comfyui(runtime, caplog):
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.resolve_device("auto") == runtime.mm.get_torch_device()
    with caplog.at_level("WARNING"):
        assert runtime.resolve_device("gpu").type == "cpu"  # this machine: ComfyUI runs with --cpu
    assert "runs on the CPU" in caplog.text
    with pytest.raises(ValueError):
        runtime.resolve_device("tpu")


def test_progress_callback_updates_a_bar_and_raises_on_cancel(runtime):
    import comfy.utils

    seen = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: seen.append((value, total)))
    try:
        report = runtime.progress_callback()
        report(1, 4)
        report(4, 4)
        runtime.mm.interrupt_current_processing(True)
        with pytest.raises(runtime.mm.InterruptProcessingException):
            report(2, 4)
    finally:
        runtime.mm.interrupt_current_processing(False)
        comfy.utils.set_progress_bar_global_hook(None)
    assert seen == [(1, 4), (4, 4)]
