"""Cooperation with ComfyUI's runtime: progress bars, interruption, and where the LLM lives.

The PMG language model runs under ComfyUI's own memory management: the first node that
needs its weights (a keyword or soft-prompt cache miss) wraps the model in a
``comfy.model_patcher.ModelPatcher`` and loads it with
``comfy.model_management.load_models_gpu``, like any checkpoint. ComfyUI then knows its
size, unloads it when a diffusion model needs room, and releases it on ``POST /free``
(``{"unload_models": true}``). ``keep_model_loaded`` maps onto that: ``True`` leaves it
registered (ComfyUI evicts it when it must), ``False`` unloads it right after the node.

An LLM bigger than the free VRAM loads *partially*, as ComfyUI's own text encoders do: its
``nn.Linear``/``nn.Embedding`` layers are given ComfyUI's castable layer classes
(:func:`make_castable`), so ``load_models_gpu`` keeps the layers that do not fit on the CPU
and casts each onto the GPU when it runs (lowvram). :func:`pmg_core.llm_placement.plan_placement`
decides between that and a full load from the free VRAM ComfyUI reports.

A prompt whose keywords and soft embeddings are all cached never reaches
:func:`llm_on_compute_device`, so it loads no weights and moves nothing.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import comfy.utils
import torch

from ..pmg_core.llm_placement import plan_placement
from ..pmg_core.llm_precision import choose_auto_dtype, dtype_name

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "gpu")


@dataclass
class LLMRuntimeState:
    """ComfyUI-side bookkeeping of one LLM handle: its device choice, its ModelPatcher, counters."""

    device: torch.device | None = None
    patcher: comfy.model_patcher.ModelPatcher | None = None
    device_loads: int = 0  # load_models_gpu calls that had to (re)load the LLM onto its device
    placement: str = ""  # the last plan_placement answer: "full", "partial" or "cpu"


# ComfyUI's bookkeeping per LLM handle, beside it rather than in it (the library knows nothing of
# ComfyUI); an entry goes when its handle is collected.
_STATES: weakref.WeakKeyDictionary[object, LLMRuntimeState] = weakref.WeakKeyDictionary()


def runtime_state(llm) -> LLMRuntimeState:
    state = _STATES.get(llm)
    if state is None:
        state = _STATES[llm] = LLMRuntimeState()
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


def auto_dtype(device: torch.device) -> str:
    """``auto``: the half precision ComfyUI picks for a text encoder on ``device``, fp32 on the CPU.

    ComfyUI's command-line choice for text encoders (``--bf16-text-enc``, ``--fp16-text-enc``,
    ``--fp32-text-enc``) wins; fp8 choices do not apply to an LLM and fall back to the rule.
    """
    if device.type == "cpu":
        return "fp32"
    chosen = mm.text_encoder_dtype(device)
    flags = mm.args
    if flags.bf16_text_enc or flags.fp16_text_enc or flags.fp32_text_enc:
        return dtype_name(chosen)
    return choose_auto_dtype(
        device.type,
        mm.should_use_bf16(device, prioritize_performance=False),
        mm.should_use_fp16(device, prioritize_performance=False),
    )


def resolve_dtype_choice(choice: str, device: torch.device) -> str:
    """The loader's ``dtype`` combo value as a concrete precision on ``device``."""
    return auto_dtype(device) if choice == "auto" else dtype_name(choice)


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


# transformers' layer classes → ComfyUI's castable ones (same parameters, same forward unless cast).
_CASTABLE = {torch.nn.Linear: comfy.ops.disable_weight_init.Linear,
             torch.nn.Embedding: comfy.ops.disable_weight_init.Embedding}


def make_castable(model: torch.nn.Module) -> int:
    """Give ``model``'s plain Linear/Embedding layers ComfyUI's castable classes; how many changed.

    ModelPatcher can leave a layer on the CPU and cast it per forward only if the layer
    has ``comfy_cast_weights``; until it sets that flag the layer computes as before.
    """
    changed = 0
    for module in model.modules():
        castable = _CASTABLE.get(type(module))
        if castable is not None:
            module.__class__ = castable
            changed += 1
    return changed


def finish_partial_load(model: torch.nn.Module, device: torch.device) -> int:
    """Move the small layers partial loading left behind (norms, rotary tables) onto ``device``.

    ModelPatcher casts only layers with ``comfy_cast_weights`` per forward; any other layer must
    sit on the compute device. Returns how many tensors moved.
    """
    moved = 0
    for module in model.modules():
        if hasattr(module, "comfy_cast_weights"):
            continue
        for tensor in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            if tensor.device != device:
                tensor.data = tensor.data.to(device)
                moved += 1
    return moved


def llm_patcher(llm) -> comfy.model_patcher.ModelPatcher:
    """The ModelPatcher of ``llm``'s weights (created once per handle; reading them loads them)."""
    state = runtime_state(llm)
    if state.patcher is None:
        weights = LLMWeights(llm.model)  # the first cache miss: this is where the weights are read
        make_castable(weights.llm)
        state.patcher = comfy.model_patcher.ModelPatcher(
            weights, load_device=compute_device(llm), offload_device=torch.device("cpu"),
            # Tied embeddings count once (module_size would sum the state dict, counting them twice).
            size=sum(p.numel() * p.element_size() for p in weights.parameters()),
        )
    return state.patcher


def llm_placement(patcher) -> str:
    """``full``, ``partial`` or ``cpu``: whether the LLM fits its device at all.

    Measured against the whole device memory less ComfyUI's inference reserve, because
    ``load_models_gpu`` unloads other models to make room: an LLM that fits evicts them and
    loads fully (as before); only one bigger than the device loads partially.
    """
    device = patcher.load_device
    reserve = mm.minimum_inference_memory() + mm.extra_reserved_memory()
    return plan_placement(patcher.model_size(), mm.get_total_memory(device), device.type,
                          partial_available=True, reserve_bytes=reserve)


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
        "dtype": str(getattr(llm, "dtype", "")),
        "placement": runtime_state(llm).placement,
    }


def _loaded_entry(patcher) -> mm.LoadedModel | None:
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
    llm.compute_on(None)  # back on the CPU: inputs follow the weights again
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
    device = patcher.load_device
    try:
        if _loaded_entry(patcher) is None:
            state.device_loads += 1
        state.placement = llm_placement(patcher)
        # Partial: ComfyUI loads what fits and casts the rest per forward (lowvram).
        mm.load_models_gpu([patcher], force_full_load=state.placement != "partial")
        if state.placement == "partial":
            finish_partial_load(patcher.model, device)
            llm.compute_on(device)  # inputs go to the GPU although the embedding may stay on the CPU
    except BaseException:
        unload_llm(llm)  # a load that failed part-way (out of GPU memory) is undone
        raise
    try:
        yield device
    finally:
        if not keep_loaded:
            unload_llm(llm)
