"""Image tensors for the metrics: loading, validation, resizing, ComfyUI layout.

The library's convention is float tensors ``[N, 3, H, W]`` in ``[0, 1]``;
ComfyUI's IMAGE is ``[B, H, W, C]``. Everything here is plain torch/PIL.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ImageValueError, MissingImageError

# Values a little outside [0, 1] (a VAE decode overshooting) are clamped; beyond
# this they mean a wrong convention (0-255 or [-1, 1]) and are refused.
_RANGE_SLACK = 0.02


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as a ``[1, 3, H, W]`` float tensor in ``[0, 1]``.

    Transparent images (Twemoji PNGs have alpha) are composited on white, the
    way they are shown to people. Raises :class:`MissingImageError` when the
    file is missing or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingImageError(
            f"Image {path} does not exist; check the path (relative paths are resolved from the working folder)."
        )
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_tensor(image)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MissingImageError(f"{path} cannot be read as an image ({exc}); re-export it as PNG or JPEG.") from exc


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as ``[1, 3, H, W]`` float in ``[0, 1]``; alpha composited on white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def tensor_to_pil(image: torch.Tensor) -> Image.Image | list[Image.Image]:
    """``[3, H, W]`` → one PIL image; ``[N, 3, H, W]`` → a list (values clamped to [0, 1])."""
    if image.dim() == 3:
        return _one_to_pil(image)
    if image.dim() == 4:
        return [_one_to_pil(one) for one in image]
    raise ImageValueError(f"Expected an image tensor [3, H, W] or [N, 3, H, W], got shape {tuple(image.shape)}.")


def _one_to_pil(image: torch.Tensor) -> Image.Image:
    if image.shape[0] != 3:
        raise ImageValueError(f"Expected 3 colour channels first ([3, H, W]), got shape {tuple(image.shape)}.")
    array = (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


def from_comfy(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` → ``[B, 3, H, W]`` (alpha dropped, grey repeated)."""
    if image.dim() != 4 or image.shape[-1] not in (1, 3, 4):
        raise ImageValueError(
            f"A ComfyUI IMAGE is [B, H, W, C] with C in 1/3/4, got shape {tuple(image.shape)}; "
            "connect an IMAGE output (not a LATENT or MASK)."
        )
    channels_first = image.permute(0, 3, 1, 2)
    if channels_first.shape[1] == 1:
        channels_first = channels_first.expand(-1, 3, -1, -1)
    return channels_first[:, :3].contiguous()


def to_comfy(image: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` → ComfyUI IMAGE ``[N, H, W, 3]``."""
    check_images(image, "image", clamp=False)
    return image.permute(0, 2, 3, 1).contiguous()


def check_images(images: torch.Tensor, name: str, min_size: int = 1, clamp: bool = True) -> torch.Tensor:
    """Validate a ``[N, 3, H, W]`` batch in [0, 1] and return it as float32 (clamped).

    Raises :class:`ImageValueError` naming ``name`` for a non-tensor, a wrong
    rank or channel count, an empty batch, a side under ``min_size``, NaN/inf,
    or values clearly outside [0, 1].
    """
    if not isinstance(images, torch.Tensor):
        raise ImageValueError(
            f"{name} must be a torch tensor [N, 3, H, W] in [0, 1], got {type(images).__name__}; "
            "load files with pmg_core.metrics.load_image."
        )
    if images.dim() != 4:
        raise ImageValueError(
            f"{name} must have shape [N, 3, H, W], got {tuple(images.shape)}; "
            "add a batch dimension with .unsqueeze(0), or convert ComfyUI [B, H, W, C] images with from_comfy."
        )
    if images.shape[1] != 3:
        raise ImageValueError(
            f"{name} has {images.shape[1]} channels (shape {tuple(images.shape)}); the metrics need RGB [N, 3, H, W]: "
            "convert grey or RGBA images to RGB first (load_image does this for files)."
        )
    if images.shape[0] == 0:
        raise ImageValueError(f"{name} is an empty batch; pass at least one image.")
    if min(images.shape[-2:]) < min_size:
        raise ImageValueError(
            f"{name} is {images.shape[-2]}x{images.shape[-1]} pixels; this metric needs at least "
            f"{min_size}x{min_size}. Upscale the images first."
        )
    images = images.float()
    if not torch.isfinite(images).all():
        raise ImageValueError(f"{name} holds NaN or infinite values; check the decoder or the file that produced it.")
    low, high = images.min().item(), images.max().item()
    if low < -_RANGE_SLACK or high > 1 + _RANGE_SLACK:
        raise ImageValueError(
            f"{name} has values in [{low:.3g}, {high:.3g}] but images must be in [0, 1]; "
            "divide 0-255 images by 255, or map [-1, 1] images with (x + 1) / 2."
        )
    return images.clamp(0, 1) if clamp else images



def check_pair(a: torch.Tensor, b: torch.Tensor, min_size: int, pairwise: str) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`check_images` on both sides of a paired metric, whose batches must match or one be a single image.

    ``pairwise`` names the metric's every-combination function, suggested when the batches differ.
    """
    a = check_images(a, "a", min_size=min_size)
    b = check_images(b, "b", min_size=min_size)
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ImageValueError(
            f"Cannot pair {a.shape[0]} images with {b.shape[0]}; pass equal batches, a batch of one on either "
            f"side, or use {pairwise}() for every combination."
        )
    return a, b

def as_batch(
    images: torch.Tensor | Sequence[torch.Tensor], name: str, size: tuple[int, int] | None, min_size: int = 1
) -> torch.Tensor:
    """Stack images (a tensor or a list of differently sized ones) into one batch.

    When ``size`` is given, every image of another size is resized to it
    (bilinear with antialiasing: the candidates' size rules, so history images
    of any size can be compared with generated ones).
    """
    if isinstance(images, torch.Tensor):
        parts = [check_images(images, name, min_size=min_size)]
    else:
        if len(images) == 0:
            raise ImageValueError(f"{name} is an empty list; pass at least one image.")
        parts = []
        for i, one in enumerate(images):
            if isinstance(one, torch.Tensor) and one.dim() == 3:  # a single [3, H, W] image
                one = one.unsqueeze(0)
            parts.append(check_images(one, f"{name}[{i}]", min_size=min_size))
    if size is None:
        size = tuple(parts[0].shape[-2:])
    resized = [resize(part, size) for part in parts]
    return torch.cat(resized, dim=0)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[N, 3, H, W]`` to ``size`` (bilinear, antialiased); a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
