"""Where the LLM lives between node runs, the device choice, and the progress callback.

This machine has no GPU, so a stand-in LLM records where it is asked to go; the
moves and ComfyUI memory calls are what a GPU run would make.
"""

from __future__ import annotations

import pytest
import torch

from fixtures_nodes import pack_submodule


class RecordingLLM:
    """Has what the runtime touches: ``model``, ``device`` and ``to``; records every move."""

    def __init__(self):
        self.model = torch.nn.Linear(4, 4)
        self.device = torch.device("cpu")
        self.moves: list[str] = []

    def to(self, device):
        self.device = torch.device(device)
        self.moves.append(str(self.device))
        return self


@pytest.fixture()
def runtime(pack_module, monkeypatch):
    module = pack_submodule("nodes.comfy_runtime")
    calls = []
    monkeypatch.setattr(module.mm, "free_memory", lambda size, device: calls.append(("free_memory", size, str(device))))
    monkeypatch.setattr(module.mm, "soft_empty_cache", lambda *a, **k: calls.append(("soft_empty_cache",)))
    module.calls = calls
    return module


def test_gpu_llm_is_loaded_for_the_block_and_offloaded_after(runtime):
    llm = RecordingLLM()
    runtime.remember_compute_device(llm, torch.device("cuda", 0))
    with runtime.llm_on_compute_device(llm, keep_loaded=False) as device:
        assert device == torch.device("cuda", 0) and llm.device == device
    assert llm.moves == ["cuda:0", "cpu"]
    assert runtime.calls[0][0] == "free_memory" and runtime.calls[0][1] >= 4 * 4 * 4 + 4 * 4
    assert runtime.calls[-1] == ("soft_empty_cache",)


def test_keep_model_loaded_leaves_it_on_the_gpu_and_the_next_use_does_not_move_it(runtime):
    llm = RecordingLLM()
    runtime.remember_compute_device(llm, torch.device("cuda", 0))
    with runtime.llm_on_compute_device(llm, keep_loaded=True):
        pass
    with runtime.llm_on_compute_device(llm, keep_loaded=True):
        pass
    assert llm.moves == ["cuda:0"]
    assert [c[0] for c in runtime.calls] == ["free_memory"]


def test_the_llm_is_offloaded_even_when_the_block_fails(runtime):
    llm = RecordingLLM()
    runtime.remember_compute_device(llm, torch.device("cuda", 0))
    with pytest.raises(RuntimeError):
        with runtime.llm_on_compute_device(llm, keep_loaded=False):
            raise RuntimeError("interrupted")
    assert llm.moves == ["cuda:0", "cpu"]


def test_a_move_that_fails_part_way_is_undone(runtime):
    """Out of GPU memory half-way through llm.to(gpu): what did move goes back to the CPU."""

    class HalfMovedLLM(RecordingLLM):
        def to(self, device):
            super().to(device)
            if self.device.type == "cuda":
                raise torch.OutOfMemoryError("CUDA out of memory")
            return self

    llm = HalfMovedLLM()
    runtime.remember_compute_device(llm, torch.device("cuda", 0))
    with pytest.raises(torch.OutOfMemoryError):
        with runtime.llm_on_compute_device(llm, keep_loaded=False):
            pass
    assert llm.moves == ["cuda:0", "cpu"] and llm.device.type == "cpu"


def test_cpu_choice_never_moves_or_frees(runtime):
    llm = RecordingLLM()
    runtime.remember_compute_device(llm, runtime.resolve_device("cpu"))
    with runtime.llm_on_compute_device(llm, keep_loaded=False):
        pass
    assert llm.moves == [] and runtime.calls == []


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
