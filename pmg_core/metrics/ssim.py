"""SSIM (Wang et al., 2004) as the official MATLAB code computes it, batched in torch.

- grayscale: 8-bit luma ``(19595 R + 38470 G + 7471 B + 32768) >> 16`` of the 8-bit
  RGB values, which is PIL's ``convert("L")`` exactly and MATLAB's ``rgb2gray``
  (0.2989/0.5870/0.1140, rounded) to within rounding;
- an 11×11 Gaussian window with σ = 1.5, statistics over the 'valid' region
  only (no padding: the same region scikit-image keeps after cropping);
- ``data_range = 255``, K1 = 0.01, K2 = 0.03, population (not sample) covariance;
- no automatic downsampling (the calibration values are for full resolution).

Higher = more similar; 1 means identical. Computed in float64 because the
variances are differences of large sums; returned as float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
import torch.nn.functional as F

from .images import as_batch, check_images, check_pair, resize

WINDOW_SIZE = 11
SIGMA = 1.5
DATA_RANGE = 255.0
_C1 = (0.01 * DATA_RANGE) ** 2
_C2 = (0.03 * DATA_RANGE) ** 2
# Pairs convolved in one call of ssim_pairwise: bounds memory for long histories.
_PAIR_CHUNK = 32


@lru_cache(maxsize=4)
def _window(device: str) -> torch.Tensor:
    """The normalised 1-D Gaussian (11 taps, σ = 1.5) as a ``[1, 1, 1, 11]`` float64 kernel.

    The 11×11 window is its outer product; filtering rows then columns is the
    same operation at a fifth of the cost.
    """
    offsets = torch.arange(WINDOW_SIZE, dtype=torch.float64) - (WINDOW_SIZE - 1) / 2
    line = torch.exp(-(offsets**2) / (2 * SIGMA**2))
    return (line / line.sum())[None, None, None].to(device)


def to_gray8(images: torch.Tensor) -> torch.Tensor:
    """``[N, 3, H, W]`` in [0, 1] → ``[N, 1, H, W]`` 8-bit luma values (as float64)."""
    rgb = (images.clamp(0, 1) * 255.0).round().to(torch.int32)
    luma = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 32768) >> 16
    return luma.unsqueeze(1).to(torch.float64)


def _blur(x: torch.Tensor) -> torch.Tensor:
    """Gaussian-weighted local average over the 'valid' region (no padding)."""
    line = _window(str(x.device))
    return F.conv2d(F.conv2d(x, line), line.transpose(-1, -2))


def _ssim_from_stats(mu_x, mu_y, xx, yy, xy) -> torch.Tensor:
    """Mean SSIM per image from the local means and local second moments."""
    var_x = xx - mu_x**2
    var_y = yy - mu_y**2
    cov = xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + _C1) * (2 * cov + _C2)
    denominator = (mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2)
    return (numerator / denominator).mean(dim=(1, 2, 3))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM of the pairs ``(a[i], b[i])`` → ``Tensor[N]``; a batch of 1 broadcasts.

    ``b`` is resized to ``a``'s size when they differ (bilinear, antialiased).
    """
    a, b = check_pair(a, b, min_size=WINDOW_SIZE, pairwise="ssim_pairwise")
    x = to_gray8(a)
    y = to_gray8(resize(b, tuple(a.shape[-2:])))
    x, y = torch.broadcast_tensors(x, y)
    return _ssim_from_stats(_blur(x), _blur(y), _blur(x * x), _blur(y * y), _blur(x * y)).float().cpu()


def ssim_pairwise(candidates: torch.Tensor, references: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """SSIM of every candidate against every reference → ``Tensor[N, M]``.

    Each image's local mean and energy are filtered once; only the cross term
    is filtered per pair (in chunks). References may be a tensor or a list of
    images of any size: they are resized to the candidates' size.
    """
    candidates = check_images(candidates, "candidates", min_size=WINDOW_SIZE)
    references = as_batch(references, "references", size=tuple(candidates.shape[-2:]), min_size=1)
    x, y = to_gray8(candidates), to_gray8(references)
    mu_x, mu_y = _blur(x), _blur(y)
    xx, yy = _blur(x * x), _blur(y * y)
    n, m = x.shape[0], y.shape[0]
    pairs = [(i, j) for i in range(n) for j in range(m)]
    scores = torch.empty(n * m, dtype=torch.float64)
    for start in range(0, len(pairs), _PAIR_CHUNK):
        rows = torch.tensor([i for i, _ in pairs[start : start + _PAIR_CHUNK]])
        cols = torch.tensor([j for _, j in pairs[start : start + _PAIR_CHUNK]])
        xy = _blur(x[rows] * y[cols])
        scores[start : start + len(rows)] = _ssim_from_stats(mu_x[rows], mu_y[cols], xx[rows], yy[cols], xy).cpu()
    return scores.view(n, m).float()
