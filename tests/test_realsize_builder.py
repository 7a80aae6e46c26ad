"""pmg_tools.realsize without building a file: the layouts ComfyUI detects, the seeded values, the streamed writer.

Fast (shapes on PyTorch's meta device): part of the default suite. The ``realsize`` tier
(tests/test_realsize.py) builds the files and loads them through the stock loader.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from pmg_core.errors import InvalidSettingError
from pmg_tools import realsize

# Published parameter counts of the real models (UNet; text encoders) the layouts must reproduce.
PUBLISHED = {
    "sd15": {"model.diffusion_model.": 859_520_964, "cond_stage_model.": 123_060_480},
    "sd21": {"model.diffusion_model.": 865_910_724},
    "sdxl": {"model.diffusion_model.": 2_567_463_684, "conditioner.embedders.0.": 123_060_480,
             "conditioner.embedders.1.": 694_659_840 + 1},  # + the logit_scale a real file keeps
}


@pytest.fixture(scope="module")
def comfy(comfy_source):
    return realsize.import_comfy(comfy_source)


@pytest.mark.parametrize("name", sorted(realsize.FAMILIES))
def test_layout_is_detected_as_its_family_with_the_real_sizes(comfy, name):
    """ComfyUI's own detection, fed the layout's shapes, names the family; the sizes are the published ones."""
    import comfy.model_detection

    spec = realsize.family(name)
    tensors = realsize.layout(comfy, spec)
    detected = comfy.model_detection.model_config_from_unet(tensors, "model.diffusion_model.")
    assert type(detected).__name__ == spec.model_class
    assert detected.unet_config["context_dim"] == spec.unet_config["context_dim"]
    for prefix, count in PUBLISHED[name].items():
        assert sum(t.numel() for k, t in tensors.items() if k.startswith(prefix) and t.is_floating_point()) == count
    assert any(k.startswith("first_stage_model.decoder.") for k in tensors)
    if spec.marker is not None:
        assert spec.marker[0] in tensors


def test_values_are_seeded_by_name_and_tame():
    like = torch.empty(320, 640, 3, 3, device="meta")
    a = realsize.draw("model.diffusion_model.x.weight", like, 0, torch.float16)
    assert torch.equal(a, realsize.draw("model.diffusion_model.x.weight", like, 0, torch.float16))
    assert not torch.equal(a, realsize.draw("model.diffusion_model.y.weight", like, 0, torch.float16))
    assert not torch.equal(a, realsize.draw("model.diffusion_model.x.weight", like, 1, torch.float16))
    assert a.dtype == torch.float16 and abs(a.float().std().item() * (640 * 9) ** 0.5 - 1) < 0.02
    norm = realsize.draw("norm.weight", torch.empty(64, device="meta"), 0, torch.bfloat16)
    assert norm.dtype == torch.bfloat16 and bool((norm == 1).all())
    ids = torch.arange(77).expand(1, -1)
    assert torch.equal(realsize.draw("position_ids", ids, 0, torch.bfloat16), ids)
    marked = realsize.draw("m.bias", torch.empty(4096, device="meta"), 0, torch.float16, marker=("m.bias", 0.12))
    assert marked.float().std() > 0.09  # what ComfyUI reads as SD2.x v-prediction


def test_streamed_file_reads_back_and_is_byte_identical(tmp_path):
    from pmg_tools.safetensors_stream import write_safetensors

    tensors = {"b.weight": torch.empty(3, 5, device="meta"), "a.bias": torch.empty(7, device="meta"),
               "ids": torch.arange(4).reshape(1, 4)}
    stored = {k: t.to(torch.bfloat16) if t.is_floating_point() else t for k, t in tensors.items()}

    def make(name):
        return realsize.draw(name, tensors[name], 3, torch.bfloat16)

    first, second = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    write_safetensors(first, stored, make, {"seed": "3"})
    write_safetensors(second, stored, make, {"seed": "3"})
    assert first.read_bytes() == second.read_bytes()
    with safe_open(str(first), framework="pt") as handle:
        assert handle.metadata() == {"seed": "3"}
        assert torch.equal(handle.get_tensor("b.weight"), make("b.weight"))
        assert handle.get_tensor("a.bias").dtype == torch.bfloat16
        assert torch.equal(handle.get_tensor("ids"), tensors["ids"])


def test_cache_is_keyed_by_comfyui_and_builder_version(tmp_path, comfy_source):
    path = realsize.cached_path("sdxl", 0, tmp_path, comfy_source)
    assert path.parent == tmp_path / f"comfyui-{realsize.comfy_version(comfy_source)}-builder-{realsize.BUILDER_VERSION}"
    assert path.name == "sdxl-seed0.safetensors"


def test_an_unknown_family_is_refused_naming_the_choices():
    with pytest.raises(InvalidSettingError, match="sd15, sd21, sdxl"):
        realsize.family("sd3")


def test_a_value_unlike_its_header_entry_is_refused(tmp_path):
    from pmg_tools.safetensors_stream import write_safetensors

    layout = {"w": torch.empty(2, 3, dtype=torch.float16, device="meta")}
    with pytest.raises(ValueError, match="w: made torch.float32"):
        write_safetensors(tmp_path / "x.safetensors", layout, lambda name: torch.zeros(2, 3), {})
