"""Deterministic safetensors files, written one tensor at a time: the tools' checkpoint builders.

``safetensors.save_file`` needs every tensor in memory at once (a full-size SDXL is 6.9 GB) and orders
its metadata map at random, so two builds of the same weights would differ in bytes and in the cache
keys built from them. Here the header (sorted names, sorted JSON) comes from shapes and dtypes alone
and each value is made only when its turn comes, so memory holds one tensor.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

_DTYPE_NAMES = {"torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float32": "F32", "torch.int64": "I64"}


def write_safetensors(path, layout: Mapping, make: Callable, metadata: dict[str, str],
                      progress: Callable[[int], None] | None = None) -> None:
    """Write ``path`` from ``layout`` (name -> a tensor of the stored shape and dtype; ``meta`` tensors do)
    and ``make(name)`` (the value stored under that name, made when it is written)."""
    import torch

    names = sorted(layout)
    header: dict = {"__metadata__": metadata}
    offset = 0
    for name in names:
        like = layout[name]
        size = like.numel() * torch.empty((), dtype=like.dtype).element_size()
        header[name] = {"dtype": _DTYPE_NAMES[str(like.dtype)], "shape": list(like.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name in names:
            value = make(name).contiguous()
            if value.dtype != layout[name].dtype or value.shape != layout[name].shape:
                raise ValueError(f"{name}: made {value.dtype} {tuple(value.shape)}, but the header says "
                                 f"{layout[name].dtype} {tuple(layout[name].shape)}")
            # Bytes as stored (little-endian, like every machine this runs on); bf16 has no numpy type.
            handle.write(value.reshape(-1).view(torch.uint8).numpy().tobytes())
            if progress is not None:
                progress(value.numel())
