"""Cooperation with ComfyUI's runtime: progress bars, interruption, and where the LLM lives.

ComfyUI manages GPU memory for its own models (``comfy.model_management``); the
PMG language model is a plain torch module it does not know about. So the LLM is
moved to the compute device only while a node needs it, room is made for it
first (``free_memory`` unloads diffusion models if needed), and it goes back to
the CPU afterwards unless the user asks to keep it loaded.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import comfy.model_management as mm
import comfy.utils
import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cpu", "gpu")

# The device each loaded LLM should compute on, keyed by its torch module (weak, so
# that an LLM dropped from ComfyUI's cache is not kept alive by this table).
_COMPUTE_DEVICE: "weakref.WeakKeyDictionary[torch.nn.Module, torch.device]" = weakref.WeakKeyDictionary()


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
    _COMPUTE_DEVICE[llm.model] = torch.device(device)


def compute_device(llm) -> torch.device:
    """Where ``llm`` should compute: the recorded choice, else ComfyUI's compute device."""
    return _COMPUTE_DEVICE.get(llm.model, mm.get_torch_device())


def _model_bytes(llm) -> int:
    return sum(p.numel() * p.element_size() for p in llm.model.parameters())


@contextmanager
def llm_on_compute_device(llm, keep_loaded: bool) -> Iterator[torch.device]:
    """Run a block with ``llm`` on its compute device; offload it afterwards unless ``keep_loaded``."""
    device = compute_device(llm)
    try:
        # Inside the try: a move that fails part-way (out of GPU memory) is undone below too.
        if llm.device != device:
            if device.type != "cpu":
                # Make room the way ComfyUI's own loaders do: unload its models if needed.
                mm.free_memory(_model_bytes(llm) * 1.2, device)
            llm.to(device)
        yield device
    finally:
        if not keep_loaded and llm.device.type != "cpu":
            llm.to("cpu")
            mm.soft_empty_cache()
