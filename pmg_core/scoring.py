"""The scoring policy of an α sweep: which target, which measures, which α each candidate had.

PMG Scorer (the node) and ``pmg score`` both call :func:`score_sweep`; they only adapt
their inputs (ComfyUI tensors, files on disk) and outputs (saved files, JSON).
The metrics themselves are :func:`pmg_core.metrics.score_candidates`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import torch

from .alphas import validate_alphas
from .errors import InvalidSettingError
from .history import UserHistory
from .metrics import CLIPScorer, LPIPS, ScoreReport, TextSimilarity, score_candidates

logger = logging.getLogger(__name__)

# Opens the history's target image by its recorded path: (image [1, 3, H, W], the name to report).
OpenImage = Callable[[object], tuple[torch.Tensor, str]]


def candidate_alphas(alphas: Sequence[float], count: int) -> list[float]:
    """The α each of ``count`` candidates was generated with.

    KSampler matches a condition batch of A rows to a latent batch of N images by
    tiling (``comfy.utils.repeat_to_batch_size``): image i gets row ``i mod A``.
    """
    return [float(alphas[i % len(alphas)]) for i in range(count)]


def choose_target(
    target_image: torch.Tensor | None, history: UserHistory | None, open_image: OpenImage
) -> tuple[torch.Tensor | None, str | None]:
    """The target image and where it came from: the one given, else the history's target item's own image.

    Sticker targets have their own image (the emoji to generate); MovieLens targets do
    not, and then there is none (``(None, None)``). ``open_image`` reads the target
    item's ``image_path`` (the node keeps it inside ComfyUI's input folder).
    """
    if target_image is not None:
        if target_image.shape[0] > 1:
            logger.warning("target_image is a batch of %d; the first image is the target.", target_image.shape[0])
        return target_image[:1], "target_image input"
    target = history.target if history is not None else None
    if target is None or target.image_path is None:
        return None, None
    image, name = open_image(target.image_path)
    logger.info("no target image given; scoring user %s against the target item's image %s from the history.",
                history.user_id, name)
    return image, f"history target item: {name}"


def score_sweep(
    candidates: torch.Tensor,
    *,
    alphas: Sequence[float] | str | None = None,
    history_images: torch.Tensor | Sequence[torch.Tensor] | None = None,
    target_image: torch.Tensor | None = None,
    target_source: str | None = None,
    target_text: str | None = None,
    preference_text: str | None = None,
    user_id: str | None = None,
    alpha: float = 2 / 3,
    lpips: LPIPS | None = None,
    clip: CLIPScorer | None = None,
    text_similarity: TextSimilarity | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ScoreReport, dict]:
    """Score the candidates ``[N, 3, H, W]`` of one sweep and pick one; the report and its JSON record.

    Each side is measured by CLIP with its text when a CLIP is given, else by images
    (history images for the preference, the target image for the target), else by the
    MiniLM similarity of each candidate's prompt (its α's mix of both texts) to the side's
    text; a side with none of these is an error that names what to connect. ``alphas`` are the sweep's α in
    condition order (PMG Conditioning's ``alphas`` output, or the same values as text
    such as ``"0.33, 0.5, 0.67"``, what an API script sends); the record gives each
    candidate's and the selected one's.
    """
    alphas = validate_alphas(alphas) if alphas is not None else None
    count = candidates.shape[0]
    sweep = candidate_alphas(alphas, count) if alphas else None
    _check_sides(history_images, target_image, target_text, preference_text, clip, sweep is not None)
    if text_similarity is None and sweep and clip is None and (history_images is None or target_image is None):
        text_similarity = _default_text_similarity()  # a side without images is measured from the prompts
    if alphas and count != len(alphas):
        logger.warning("%d candidates for %d alphas; candidate i was generated with alpha number i mod %d.",
                       count, len(alphas), len(alphas))
    report = score_candidates(
        candidates,
        history_images=history_images,
        target_image=target_image,
        target_text=target_text,
        preference_text=preference_text,
        alpha=alpha,
        lpips=lpips,
        clip=clip,
        text_similarity=text_similarity,
        candidate_alphas=sweep,
        progress=progress,
    )
    record = _sweep_record(report, sweep, user_id, target_source)
    logger.info(
        "selected candidate index %d of %d%s (trade-off weight %.2f; %s)", report.selected, count,
        f", generated with alpha={record['selected_alpha']:.2f}" if sweep else "", alpha, report.measure,
    )
    return report, record


def _sweep_record(report: ScoreReport, sweep: list[float] | None, user_id: str | None, target_source: str | None) -> dict:
    """The report's JSON record with the sweep around it: whose it is, where its target came from, each candidate's α."""
    record = report.to_dict()
    record.update(
        user_id=user_id,
        target_image=target_source,  # where the target image came from (None: no image)
        candidate_alphas=sweep,
        selected_alpha=sweep[report.selected] if sweep else None,
    )
    return record


@functools.lru_cache(maxsize=1)
def _default_text_similarity() -> TextSimilarity:
    """The packaged MiniLM, loaded once per process."""
    return TextSimilarity()


def _check_sides(history_images, target_image, target_text, preference_text, clip, with_alphas: bool) -> None:
    """Both sides need a measure: CLIP with the side's text, the side's images, or both texts and the alphas."""
    prompts = with_alphas and bool(target_text) and bool(preference_text)
    if target_image is None and not (clip is not None and target_text) and not prompts:
        raise InvalidSettingError(
            "Cannot measure closeness to the target: connect a target_image (or give the history's target item "
            "an image), or give the target text together with a CLIP model (clip_model / --clip), or connect the "
            "preference (its target and preference texts) together with the alphas."
        )
    if history_images is None and not (clip is not None and preference_text) and not prompts:
        raise InvalidSettingError(
            "Cannot measure closeness to the user's preference: the history has no images. Add images to the "
            "history items, or give the preference text together with a CLIP model (clip_model / --clip), or "
            "connect the preference (its target and preference texts) together with the alphas."
        )
