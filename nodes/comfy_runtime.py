"""Cooperation with ComfyUI's runtime: progress bars, interruption, and where the LLM lives.

The PMG language model runs under ComfyUI's own memory management: the first node that
needs its weights (a keyword or soft-prompt cache miss) wraps the model in a
``comfy.model_patcher.ModelPatcher`` and loads it with
``comfy.model_management.load_models_gpu``, like any checkpoint. ComfyUI then knows its
size, unloads it when a diffusion model needs room, and releases it on ``POST /free``
(``{"unload_models": true}``). ``keep_model_loaded`` maps onto that: ``True`` leaves it
registered (ComfyUI evicts it when it must), ``False`` unloads it right after the node.

A prompt whose keywords and soft embeddings are all cached never reaches
:func:`llm_on_compute_device`, so it loads no weights and moves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "gpu")
# Where a handle keeps its ComfyUI bookkeeping (the LocalLLM is a plain dataclass of the library).
_STATE_ATTRIBUTE = "_pmg_comfy_state"


@dataclass
class LLMRuntimeState:
    """ComfyUI-side bookkeeping of one LLM handle: its device choice, its ModelPatcher, counters."""

    device: torch.device | None = None
    patcher: "comfy.model_patcher.ModelPatcher | None" = None
    device_loads: int = 0  # load_models_gpu calls that had to (re)load the LLM onto its device


def runtime_state(llm) -> LLMRuntimeState:
    state = llm.__dict__.get(_STATE_ATTRIBUTE)
    if state is None:
        state = LLMRuntimeState()
        llm.__dict__[_STATE_ATTRIBUTE] = state
    return state


def progress_callback() -> Callable[[int, int], None]:
    """A library ``progress(done, total)`` callback: updates the node's bar, honours Cancel."""
    bar: comfy.utils.ProgressBar | None = None

    def report(done: int, total: int) -> None:
        nonlocal bar
        mm.throw_exception_if_processing_interrupted()
        if bar is None:
            bar = comfy.utils.ProgressBar(max(int(total), 1))
        bar.update_absolute(int(done), max(int(total), 1))

    return report


def resolve_device(choice: str) -> torch.device:
    """``auto``/``gpu`` → ComfyUI's compute device; ``cpu`` → the CPU."""
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"Unknown device {choice!r}; choose one of {DEVICE_CHOICES}.")
    if choice == "cpu":
        return torch.device("cpu")
    device = mm.get_torch_device()
    if choice == "gpu" and device.type == "cpu":
        logger.warning("PMG: device 'gpu' was asked for but ComfyUI runs on the CPU; the LLM runs on the CPU.")
    return device


def remember_compute_device(llm, device: torch.device) -> None:
    """Record where ``llm`` should compute (the loader's device choice)."""
    runtime_state(llm).device = torch.device(device)


def compute_device(llm) -> torch.device:
    """Where ``llm`` should compute: the recorded choice, else ComfyUI's compute device."""
    return runtime_state(llm).device or mm.get_torch_device()


class LLMWeights(torch.nn.Module):
    """The LLM's weights as ComfyUI's ModelPatcher expects a model: a module with a settable ``device``.

    (A transformers model's ``device`` is a read-only property, which ModelPatcher assigns.)
    Moving this container moves the LLM's own parameters: the handle keeps using them.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.llm = model
        self.device = next(model.parameters()).device

    def get_dtype(self) -> torch.dtype:
        return next(self.llm.parameters()).dtype


def llm_patcher(llm) -> "comfy.model_patcher.ModelPatcher":
    """The ModelPatcher of ``llm``'s weights (created once per handle; reading them loads them)."""
    state = runtime_state(llm)
    if state.patcher is None:
        weights = LLMWeights(llm.model)  # the first cache miss: this is where the weights are read
        state.patcher = comfy.model_patcher.ModelPatcher(
            weights, load_device=compute_device(llm), offload_device=torch.device("cpu"),
            # Tied embeddings count once (module_size would sum the state dict, counting them twice).
            size=sum(p.numel() * p.element_size() for p in weights.parameters()),
        )
    return state.patcher


def llm_activity(llm) -> dict:
    """What this LLM handle has cost so far, for the nodes' UI (and ``/history``) output.

    ``weight_loads``: weight reads from disk; ``device_loads``: loads through
    ``load_models_gpu`` (a move to the GPU on a GPU server); ``registered``: held now
    by ComfyUI's model management. A returning user's prompt leaves all three at 0/False.
    """
    return {
        "identity": str(llm.identity),
        "weights_loaded": bool(getattr(llm, "loaded", True)),
        "weight_loads": int(getattr(llm, "weight_loads", 0)),
        "device_loads": runtime_state(llm).device_loads,
        "registered": is_registered(llm),
    }


def _loaded_entry(patcher) -> "mm.LoadedModel | None":
    for entry in mm.current_loaded_models:
        if entry.model is patcher:
            return entry
    return None


def is_registered(llm) -> bool:
    """Whether ComfyUI's model management currently holds ``llm`` loaded (``current_loaded_models``)."""
    patcher = runtime_state(llm).patcher
    return patcher is not None and _loaded_entry(patcher) is not None


def unload_llm(llm) -> bool:
    """Unload ``llm`` through ComfyUI (back to the CPU, unregistered); whether it was loaded."""
    patcher = runtime_state(llm).patcher
    entry = _loaded_entry(patcher) if patcher is not None else None
    if entry is None:
        return False
    entry.model_unload()
    mm.current_loaded_models.remove(entry)
    mm.soft_empty_cache()
    return True


@contextmanager
def llm_on_compute_device(llm, keep_loaded: bool) -> Iterator[torch.device]:
    """Run a block with ``llm`` loaded by ComfyUI on its compute device.

    ComfyUI makes room first (unloading diffusion models if needed) and counts the
    LLM's memory while it is loaded. Afterwards it is unloaded unless ``keep_loaded``,
    in which case it stays registered until ComfyUI needs the room or ``/free``.
    """
    patcher = llm_patcher(llm)
    state = runtime_state(llm)
    try:
        if _loaded_entry(patcher) is None:
            state.device_loads += 1
        mm.load_models_gpu([patcher], force_full_load=True)
    except BaseException:
        unload_llm(llm)  # a load that failed part-way (out of GPU memory) is undone
        raise
    try:
        yield patcher.load_device
    finally:
        if not keep_loaded:
            unload_llm(llm)
