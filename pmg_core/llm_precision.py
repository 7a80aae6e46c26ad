"""Which floating-point precision the local LLM's weights use.

Names the user can choose (``auto``, ``bf16``, ``fp16``, ``fp32``), their torch dtypes,
and the pure rule that turns ``auto`` into one of them from what a device supports. The
ComfyUI node asks ComfyUI's model management for those facts; the library asks torch.
"""

from __future__ import annotations

import torch

from .errors import InvalidSettingError

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_NAMES = {dtype: name for name, dtype in _TORCH_DTYPES.items()}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a concrete precision name (``bf16``, ``fp16``, ``fp32``)."""
    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise InvalidSettingError(
            f"Unknown LLM precision {name!r}; choose one of {', '.join(DTYPE_CHOICES)}."
        ) from None


def dtype_name(dtype: torch.dtype | str) -> str:
    """``bf16``/``fp16``/``fp32`` for a torch dtype or an already concrete name."""
    if isinstance(dtype, str):
        torch_dtype(dtype)  # validates
        return dtype
    try:
        return _NAMES[dtype]
    except KeyError:
        raise InvalidSettingError(
            f"The LLM runs in {dtype}, which PMG does not support; load it in bf16, fp16 or fp32."
        ) from None


def choose_auto_dtype(device_type: str, bf16_supported: bool, fp16_supported: bool) -> str:
    """``auto``: the half precision a GPU supports (bf16 first), fp32 on the CPU.

    bf16 keeps fp32's exponent range, so activations of large LLMs do not overflow
    as they can in fp16; half precision on a CPU is slow, so the CPU stays fp32.
    """
    if device_type == "cpu":
        return "fp32"
    if bf16_supported:
        return "bf16"
    if fp16_supported:
        return "fp16"
    return "fp32"


def resolve_dtype(choice: str, device: torch.device | str = "cpu") -> str:
    """A concrete precision name for ``choice`` on ``device`` (``auto`` asks torch what it supports)."""
    if choice != "auto":
        return dtype_name(choice)
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return choose_auto_dtype(device.type, cuda and torch.cuda.is_bf16_supported(), cuda)


def bytes_per_parameter(name: str) -> int:
    """Bytes one weight takes at this precision (what memory planning multiplies by)."""
    return torch.tensor([], dtype=torch_dtype(name)).element_size()
