"""Image helpers (loading, ComfyUI layout) and SSIM's batched forms."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from pmg_core.errors import ImageValueError, MissingImageError
from pmg_core.metrics import from_comfy, load_image, pil_to_tensor, ssim, ssim_pairwise, tensor_to_pil, to_comfy


def _images(seed: int, count: int, size: int = 48) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_load_image_composites_alpha_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    path = tmp_path / "emoji.png"
    rgba.save(path)
    image = load_image(path)
    assert image.shape == (1, 3, 2, 4) and image.dtype == torch.float32
    assert torch.equal(image[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.equal(image[0, :, 1, 3], torch.ones(3))  # transparent → white, not red or black


def test_load_image_reads_a_real_twemoji():
    from pmg_core.assets import twemoji_png_dir

    path = next(iter(sorted(twemoji_png_dir().glob("*.png"))))
    image = load_image(path)
    assert image.shape == (1, 3, 72, 72)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image[0, :, 0, 0].min()) > 0.99  # the transparent corner shows white


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(MissingImageError, match="absent.png"):
        load_image(tmp_path / "absent.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(MissingImageError, match="broken.png"):
        load_image(broken)


def test_pil_round_trip_is_exact_on_8_bit_values():
    image = torch.randint(0, 256, (1, 3, 5, 7)).float() / 255
    pil = tensor_to_pil(image)[0]
    assert pil.size == (7, 5)
    assert torch.equal(pil_to_tensor(pil), image)
    assert isinstance(tensor_to_pil(image[0]), Image.Image)


def test_comfy_layout_round_trip():
    comfy = torch.rand(2, 10, 12, 3)
    ours = from_comfy(comfy)
    assert ours.shape == (2, 3, 10, 12)
    assert torch.equal(to_comfy(ours), comfy)
    with_alpha = torch.rand(1, 4, 4, 4)
    assert torch.equal(from_comfy(with_alpha), with_alpha[..., :3].permute(0, 3, 1, 2))
    assert from_comfy(torch.rand(1, 4, 4, 1)).shape == (1, 3, 4, 4)
    with pytest.raises(ImageValueError, match=r"\[B, H, W, C\]"):
        from_comfy(torch.rand(1, 4, 4, 5))


def test_ssim_identical_is_one_and_differs_for_other_images():
    a, b = _images(0, 2), _images(1, 2)
    assert torch.allclose(ssim(a, a), torch.ones(2), atol=1e-9)
    assert (ssim(a, b) < 0.5).all()
    assert ssim(a[:1], b).shape == (2,)


def test_ssim_pairwise_equals_pair_by_pair():
    candidates, references = _images(2, 3), _images(3, 4)
    references[1] = candidates[0]
    table = ssim_pairwise(candidates, references)
    assert table.shape == (3, 4) and table.dtype == torch.float32
    for i in range(3):
        assert torch.allclose(table[i], ssim(candidates[i : i + 1], references), atol=1e-6)
    assert float(table[0, 1]) == pytest.approx(1.0, abs=1e-6)


def test_ssim_resizes_history_images_of_other_sizes():
    smooth = torch.nn.functional.interpolate(_images(4, 1, size=6), size=(48, 48), mode="bicubic").clamp(0, 1)
    larger = torch.nn.functional.interpolate(smooth, size=(96, 80), mode="bilinear", antialias=True)
    table = ssim_pairwise(smooth, [larger[0], _images(5, 1)])
    assert float(table[0, 0]) > 0.9 > float(table[0, 1])


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), "at least 11x11"),
        (torch.rand(1, 4, 32, 32), torch.rand(1, 3, 32, 32), "4 channels"),
        (torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32), "Cannot pair"),
        (torch.rand(1, 3, 32, 32), torch.full((1, 3, 32, 32), float("inf")), "NaN or infinite"),
        (torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32), r"\(x \+ 1\) / 2"),
    ],
)
def test_ssim_bad_inputs(first, second, message):
    with pytest.raises(ImageValueError, match=message):
        ssim(first, second)
