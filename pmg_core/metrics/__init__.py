"""Image and text metrics for PMG, and the choice of the best generated candidate.

- :class:`LPIPS` (v0.1, AlexNet/VGG, official values reproduced), :func:`ssim`,
  :func:`ssim_pairwise` (Wang et al., grayscale, 11×11 Gaussian);
- :class:`TextSimilarity` (all-MiniLM-L6-v2), :class:`CLIPScorer` (local CLIP weights);
- :func:`score_candidates`, :func:`select_by_tradeoff`, :func:`tradeoff_plot`;
- image helpers: :func:`load_image`, :func:`pil_to_tensor`, :func:`tensor_to_pil`,
  :func:`from_comfy`, :func:`to_comfy`.

Images are float tensors ``[N, 3, H, W]`` in [0, 1]. Command line:
``python -m pmg_core.metrics REF.png DIST.png [--net alex|vgg]``.
"""

from __future__ import annotations

from .clip_score import CLIPScorer
from .images import from_comfy, load_image, pil_to_tensor, tensor_to_pil, to_comfy
from .lpips import LPIPS
from .plot import tradeoff_plot
from .selection import CandidateScore, ScoreReport, score_candidates, select_by_tradeoff
from .ssim import ssim, ssim_pairwise
from .text_similarity import TextSimilarity

__all__ = [
    "CLIPScorer",
    "CandidateScore",
    "LPIPS",
    "ScoreReport",
    "TextSimilarity",
    "from_comfy",
    "load_image",
    "pil_to_tensor",
    "score_candidates",
    "select_by_tradeoff",
    "ssim",
    "ssim_pairwise",
    "tensor_to_pil",
    "to_comfy",
    "tradeoff_plot",
]
