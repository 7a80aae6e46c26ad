"""A PMG weights file read whole: its tensors and its safetensors metadata, with errors a user can act on."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ModelLoadError


def read_weights(path: Path, missing: str, fix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file.

    ``missing`` is the whole message for a file that is not there; a damaged file's message
    names the reader's error and ends with ``fix``. The caller checks the metadata's format.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(missing)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not iterable
    except Exception as error:  # safetensors raises several types for a damaged file
        raise ModelLoadError(f"{path} cannot be read as safetensors ({error}); it may be truncated or of another "
                             f"format: {fix}") from error
    return tensors, metadata
