"""Where an LLM's weights go when it may not fit the GPU: the pure decision and its loader options.

:func:`plan_placement` picks one of:

- ``cpu``: the model computes on the CPU (nothing to plan);
- ``full``: the weights plus a working reserve fit the free VRAM, so they all go there;
- ``partial``: they do not, and the caller has ComfyUI's own partial loading (lowvram:
  the layers that do not fit stay on the CPU and are cast onto the GPU per forward);
- ``offload``: they do not, without ComfyUI: accelerate's ``device_map="auto"`` fills the
  GPU up to ``max_memory`` and keeps the rest on the CPU;
- ``quantized``: bitsandbytes 8-bit or 4-bit on the GPU (asked for explicitly).

Kept free of torch device queries so tests can feed it any free-VRAM figure.
"""

from __future__ import annotations

import importlib.util

import torch
import transformers

from .errors import InvalidSettingError, ModelLoadError

QUANTIZATIONS = ("int8", "nf4")
# Room left on the GPU for activations and the KV cache beside the weights.
DEFAULT_RESERVE_BYTES = 1 << 30


def plan_placement(
    weight_bytes: int,
    free_bytes: int,
    device_type: str,
    partial_available: bool = False,
    quantization: str | None = None,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
) -> str:
    """``cpu``, ``full``, ``partial``, ``offload`` or ``quantized`` (see the module docstring)."""
    if quantization is not None:
        check_quantization(quantization, device_type)
        return "quantized"
    if device_type == "cpu":
        return "cpu"
    if weight_bytes + reserve_bytes <= free_bytes:
        return "full"
    return "partial" if partial_available else "offload"


def check_quantization(quantization: str, device_type: str) -> None:
    """Raise naming the fix unless bitsandbytes can quantise on ``device_type``."""
    if quantization not in QUANTIZATIONS:
        raise InvalidSettingError(
            f"Unknown LLM quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)} or none."
        )
    if device_type != "cuda":
        raise InvalidSettingError(
            f"{quantization} quantization (bitsandbytes) runs on a CUDA GPU only, and this LLM computes on "
            f"{device_type}; use dtype bf16/fp16/fp32 instead, or run on a GPU."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            f"{quantization} quantization needs the optional bitsandbytes package, which is not installed; "
            "install it (pip install bitsandbytes) or load the LLM in bf16/fp16."
        )


def loader_options(
    plan: str,
    device: torch.device,
    dtype: torch.dtype,
    free_bytes: int = 0,
    quantization: str | None = None,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
) -> dict:
    """``from_pretrained`` keyword arguments that carry out ``plan`` on ``device``."""
    if plan == "cpu":
        return {}
    if plan == "full":
        return {"device_map": {"": str(device)}}
    if plan == "offload":
        index = device.index if device.index is not None else 0
        return {"device_map": "auto", "max_memory": {index: max(int(free_bytes - reserve_bytes), 0), "cpu": "1024GiB"}}
    if plan == "quantized":
        config = (
            transformers.BitsAndBytesConfig(load_in_8bit=True) if quantization == "int8"
            else transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                 bnb_4bit_compute_dtype=dtype)
        )
        return {"device_map": {"": str(device)}, "quantization_config": config}
    raise InvalidSettingError(f"No loader options for the placement {plan!r}; it is planned by ComfyUI.")


def parameter_count(config: transformers.PretrainedConfig) -> int:
    """How many weights a model of ``config`` has (built on the meta device: no memory used)."""
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in skeleton.parameters())  # tied weights count once
