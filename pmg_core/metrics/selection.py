"""Score generated candidates and pick the best by PMG's preference/target trade-off.

PMG generates several images per condition and keeps the one that maximises
``z = α·log d_p + (1 − α)·log d_t`` where d_p measures closeness to the user's
preference and d_t closeness to the target (higher = closer for both).

Where d_p and d_t come from, per side, first available wins (recorded in
``ScoreReport.measure``):

1. a CLIP scorer and the side's text: CLIP image–text cosine similarity of the
   candidate with the preference / target text (the paper's definition), mapped
   from [-1, 1] into [0, 1] as ``d = (1 + cos) / 2`` before the log. CLIP cosines
   are often <= 0 (always so for a random CLIP), where log is undefined: without
   the mapping every such candidate would be clamped to the same value and the
   pick would be arbitrary. The mapping keeps the order of cosines on each side;
   the report keeps the raw cosines in ``clip_target`` / ``clip_preference``;
2. images: ``d_p = 1 − mean LPIPS to the history images``,
   ``d_t = 1 − LPIPS to the target image`` (an image-side proxy);
3. candidate captions and the side's text: MiniLM text cosine similarity
   between each candidate's caption and the preference / target text;
4. the candidates' α and both texts (no CLIP, no image for the side, no captions:
   MovieLens targets have no image): MiniLM cosine similarity between the candidate's
   *prompt*, the mix ``(1 − α)·e(target_text) + α·e(preference_text)`` of the two text
   embeddings in the proportions PMG's condition weights them (``2(1 − α)``, ``2α``), and the
   side's text. It measures the prompt, not the image; a warning says so.

With none of these for a side, :func:`score_candidates` raises an error naming
what to supply.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..errors import ImageValueError, InvalidSettingError
from .clip_score import CLIPScorer
from .images import as_batch, check_images
from .lpips import LPIPS
from .ssim import ssim_pairwise
from .text_similarity import TextSimilarity

logger = logging.getLogger(__name__)

# d is clamped to at least this before the log: MiniLM cosine similarities can be
# <= 0 and 1 - LPIPS goes negative for LPIPS > 1, where log is undefined (CLIP
# cosines are mapped into [0, 1] first, see clip_closeness). The clamp
# ranks such a candidate last on that side while keeping z finite, so the other
# side still orders candidates that tie there.
D_EPSILON = 1e-6

Progress = Callable[[int, int], None]


def select_by_tradeoff(
    d_pref: Sequence[float] | torch.Tensor, d_target: Sequence[float] | torch.Tensor, alpha: float
) -> tuple[int, torch.Tensor]:
    """Index of the candidate maximising ``z = α·log d_p + (1 − α)·log d_t``, and z for all.

    ``d_pref`` and ``d_target`` are per-candidate similarities (higher = closer),
    each clamped to ``D_EPSILON`` before the log. α = 1 considers only the
    preference, α = 0 only the target; ties go to the lowest index.
    """
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= float(alpha) <= 1.0:
        raise InvalidSettingError(
            f"alpha must be a number in [0, 1], got {alpha!r}; 2/3 reproduces PMG's preference weight W_P = 2."
        )
    d_p = torch.as_tensor(d_pref, dtype=torch.float64).flatten()
    d_t = torch.as_tensor(d_target, dtype=torch.float64).flatten()
    if d_p.numel() == 0 or d_p.shape != d_t.shape:
        raise InvalidSettingError(
            "d_pref and d_target need one value per candidate and the same length, "
            f"got {d_p.numel()} and {d_t.numel()}."
        )
    if not (torch.isfinite(d_p).all() and torch.isfinite(d_t).all()):
        raise InvalidSettingError(
            "d_pref or d_target holds NaN or infinite values; check the images and models that produced them."
        )
    alpha = float(alpha)
    z = alpha * d_p.clamp(min=D_EPSILON).log() + (1.0 - alpha) * d_t.clamp(min=D_EPSILON).log()
    return int(torch.argmax(z).item()), z


@dataclass
class CandidateScore:
    """Every measurement of one candidate image (``None`` where not computed)."""

    index: int
    d_pref: float
    d_target: float
    z: float
    lpips_history: float | None = None
    ssim_history: float | None = None
    lpips_target: float | None = None
    ssim_target: float | None = None
    clip_target: float | None = None
    clip_preference: float | None = None
    text_target: float | None = None
    text_preference: float | None = None
    prompt_target: float | None = None
    prompt_preference: float | None = None


@dataclass
class ScoreReport:
    """Scores of all candidates, the selected index and how d_p / d_t were measured."""

    candidates: list[CandidateScore]
    selected: int
    alpha: float
    measure: dict[str, str] = field(default_factory=dict)
    lpips_net: str | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict (plain floats, ``None`` for what was not computed)."""
        return {
            "alpha": float(self.alpha),
            "selected": int(self.selected),
            "measure": dict(self.measure),
            "lpips_net": self.lpips_net,
            "candidates": [{key: _plain(value) for key, value in asdict(score).items()} for score in self.candidates],
        }


def _plain(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return value


def score_candidates(
    candidates: torch.Tensor,
    history_images: torch.Tensor | Sequence[torch.Tensor] | None = None,
    target_image: torch.Tensor | None = None,
    target_text: str | None = None,
    preference_text: str | None = None,
    alpha: float = 2 / 3,
    lpips: LPIPS | None = None,
    clip: CLIPScorer | None = None,
    text_similarity: TextSimilarity | None = None,
    candidate_captions: Sequence[str] | None = None,
    candidate_alphas: Sequence[float] | None = None,
    progress: Progress | None = None,
) -> ScoreReport:
    """Score ``candidates`` ``[N, 3, H, W]`` against the user's history and the target; pick one.

    Image metrics (LPIPS, SSIM) are computed whenever history / target images
    are given; history images may differ in size (they are resized to the
    candidates'). The measures are passed in, never built here: ``lpips`` is
    needed when images are given, ``text_similarity`` when captions are compared,
    ``clip`` measures a side by its text; a needed one missing is an error naming
    it. See the module docstring for how d_p and d_t are chosen.
    ``progress(done, total)`` is called after each metric.
    """
    candidates = check_images(candidates, "candidates")
    history = _history_batch(history_images, candidates)
    target = _target_batch(target_image, candidates)
    captions = _captions(candidate_captions, candidates.shape[0])
    texts = _Texts(_text_or_none(target_text, "target_text"), _text_or_none(preference_text, "preference_text"))

    mixes = _mix_alphas(candidate_alphas, candidates.shape[0])
    plan = _plan_sides(history, target, texts.target, texts.preference, clip, captions, mixes)
    _check_measures(history, target, plan, lpips, text_similarity)
    steps = _Steps(
        [name for name, wanted in (
            ("history", history is not None),
            ("target", target is not None),
            ("clip", clip is not None and texts.any),
            ("text", "text" in plan.values()),
            ("prompt", "prompt" in plan.values()),
        ) if wanted],
        progress,
    )
    values = _image_values(candidates, history, target, lpips, steps)
    if "clip" in steps.names:
        values.update(_text_values(clip.image_text(candidates, texts.given), texts, "clip"))
        steps.done("clip")
    if "text" in steps.names:
        values.update(_text_values(text_similarity.similarity(captions, texts.given), texts, "text"))
        steps.done("text")
    if "prompt" in steps.names:
        values.update(_prompt_values(text_similarity, texts, mixes, plan))
        steps.done("prompt")
    return _report(values, plan, alpha, lpips)


@dataclass(frozen=True)
class _Texts:
    """The two sides' texts (None where not given), in the column order the similarity models get them."""

    target: str | None
    preference: str | None

    @property
    def given(self) -> list[str]:
        return [text for text in (self.target, self.preference) if text]

    @property
    def any(self) -> bool:
        return bool(self.given)


@dataclass
class _Steps:
    """The metrics to compute, reported to ``progress`` as each is done."""

    names: list[str]
    progress: Progress | None

    def done(self, name: str) -> None:
        if self.progress is not None:
            self.progress(self.names.index(name) + 1, len(self.names))


def _check_measures(history, target, plan: dict[str, str], lpips, text_similarity) -> None:
    """The injected measures the inputs need: LPIPS for images, a text model for captions."""
    if (history is not None or target is not None) and lpips is None:
        raise InvalidSettingError(
            "History or target images were given but no LPIPS network: pass lpips=LPIPS('alex') "
            "(pmg_core.metrics.LPIPS), or leave the images out."
        )
    if {"text", "prompt"} & set(plan.values()) and text_similarity is None:
        raise InvalidSettingError(
            "Captions or the candidates' prompts are compared with texts but no text model was given: pass "
            "text_similarity=TextSimilarity() (pmg_core.metrics.TextSimilarity)."
        )


def _image_values(candidates, history, target, lpips, steps: _Steps) -> dict[str, list[float]]:
    """LPIPS and SSIM of each candidate to the history (mean) and to the target, history and target in one pass."""
    references = [part for part in (history, target) if part is not None]
    if not references:
        return {}
    both = torch.cat(references)  # every image goes through the network once
    distances, similarities = lpips.pairwise(candidates, both), ssim_pairwise(candidates, both)
    split = history.shape[0] if history is not None else 0
    values: dict[str, list[float]] = {}
    if history is not None:
        values["lpips_history"] = distances[:, :split].mean(dim=1).tolist()
        values["ssim_history"] = similarities[:, :split].mean(dim=1).tolist()
        steps.done("history")
    if target is not None:
        values["lpips_target"] = distances[:, split].tolist()
        values["ssim_target"] = similarities[:, split].tolist()
        steps.done("target")
    return values


def _prompt_values(text_similarity, texts: _Texts, mixes: list[float], plan: dict[str, str]) -> dict[str, list[float]]:
    """MiniLM similarity of each candidate's prompt (its alpha's mix of both text embeddings) to each side's text."""
    target_vector, preference_vector = text_similarity.embed([texts.target, texts.preference])
    prompts = torch.nn.functional.normalize(
        torch.stack([(1 - a) * target_vector + a * preference_vector for a in mixes]), dim=-1
    )
    for side in [side for side, kind in plan.items() if kind == "prompt"]:
        missing = "target image" if side == "target" else "history image"
        logger.warning(
            "The %s side is measured from each candidate's prompt (its alpha's mix of the target and "
            "preference texts), not from its image: there is no %s and no CLIP. Give a %s or a CLIP model "
            "to measure the images.", side, missing, missing,
        )
    return {"prompt_target": (prompts @ target_vector).tolist(), "prompt_preference": (prompts @ preference_vector).tolist()}


def _text_values(similarity: torch.Tensor, texts: _Texts, kind: str) -> dict[str, list[float]]:
    """The columns of a candidates x texts similarity as ``<kind>_target`` / ``<kind>_preference``."""
    values = {}
    if texts.target:
        values[f"{kind}_target"] = similarity[:, 0].tolist()
    if texts.preference:
        values[f"{kind}_preference"] = similarity[:, -1].tolist()
    return values


def _report(values: dict[str, list[float]], plan: dict[str, str], alpha: float, lpips) -> ScoreReport:
    """d_p and d_t by the plan, the trade-off pick, and every measurement per candidate."""
    d_pref = _side_values(plan["preference"], "preference", values)
    d_target = _side_values(plan["target"], "target", values)
    selected, z = select_by_tradeoff(d_pref, d_target, alpha)
    scores = [
        CandidateScore(index=i, d_pref=d_pref[i], d_target=d_target[i], z=float(z[i]),
                       **{name: column[i] for name, column in values.items()})
        for i in range(len(d_pref))
    ]
    measure = {
        "d_pref": _MEASURE_TEXT[("preference", plan["preference"])],
        "d_target": _MEASURE_TEXT[("target", plan["target"])],
    }
    # The trade-off weight, not the candidate's alpha (pmg_core.scoring names that one).
    logger.debug("selected candidate %d of %d (trade-off weight %.3f; %s)", selected, len(scores), alpha, measure)
    return ScoreReport(scores, selected, float(alpha), measure, lpips.net if lpips is not None else None)


_MEASURE_TEXT = {
    ("preference", "clip"): "CLIP (1 + cosine(candidate image, preference_text)) / 2",
    ("preference", "image"): "1 - mean LPIPS(candidate, history images)",
    ("preference", "text"): "MiniLM cosine similarity(candidate caption, preference_text)",
    ("target", "clip"): "CLIP (1 + cosine(candidate image, target_text)) / 2",
    ("target", "image"): "1 - LPIPS(candidate, target image)",
    ("target", "text"): "MiniLM cosine similarity(candidate caption, target_text)",
    ("preference", "prompt"): "MiniLM cosine((1 - alpha) e(target_text) + alpha e(preference_text), preference_text): "
                              "the candidate's prompt, not its image",
    ("target", "prompt"): "MiniLM cosine((1 - alpha) e(target_text) + alpha e(preference_text), target_text): "
                          "the candidate's prompt, not its image",
}


def _plan_sides(history, target, target_text, preference_text, clip, captions, mixes=None) -> dict[str, str]:
    """Which measure gives d_p and d_t: 'clip', 'image', 'text' or 'prompt' (first available wins)."""
    plan = {}
    for side, text, image, image_hint in (
        ("preference", preference_text, history, "history_images"),
        ("target", target_text, target, "target_image"),
    ):
        if clip is not None and text:
            plan[side] = "clip"
        elif image is not None:
            plan[side] = "image"
        elif captions is not None and text:
            plan[side] = "text"
        elif mixes is not None and target_text and preference_text:
            plan[side] = "prompt"
        else:
            raise InvalidSettingError(
                f"Nothing to measure the {side} side with: supply {side}_text together with a CLIP scorer (clip=), "
                f"or {image_hint}, or {side}_text together with candidate_captions, or both texts together with "
                "candidate_alphas."
            )
    return plan


def clip_closeness(cosine: float) -> float:
    """A CLIP image–text cosine in [-1, 1] as a closeness d = (1 + cos) / 2 in [0, 1] (see the module docstring)."""
    return (1.0 + cosine) / 2.0


def _side_values(kind: str, side: str, values: dict[str, list[float]]) -> list[float]:
    if kind == "clip":
        return [clip_closeness(value) for value in values[f"clip_{side}"]]
    if kind in ("text", "prompt"):
        return values[f"{kind}_{side}"]
    column = values["lpips_history" if side == "preference" else "lpips_target"]
    return [1.0 - value for value in column]


def _history_batch(history_images, candidates: torch.Tensor) -> torch.Tensor | None:
    if history_images is None:
        return None
    if not isinstance(history_images, torch.Tensor) and len(history_images) == 0:
        raise ImageValueError(
            "history_images is an empty list; pass the user's history images, or None to score without them."
        )
    return as_batch(history_images, "history_images", size=tuple(candidates.shape[-2:]))


def _target_batch(target_image, candidates: torch.Tensor) -> torch.Tensor | None:
    if target_image is None:
        return None
    if isinstance(target_image, torch.Tensor) and target_image.dim() == 3:
        target_image = target_image.unsqueeze(0)
    target = check_images(target_image, "target_image")
    if target.shape[0] != 1:
        raise ImageValueError(
            f"target_image must be one image, got a batch of {target.shape[0]}; pass target_image[i:i+1]."
        )
    return as_batch(target, "target_image", size=tuple(candidates.shape[-2:]))


def _captions(candidate_captions, count: int) -> list[str] | None:
    if candidate_captions is None:
        return None
    if isinstance(candidate_captions, str):
        raise InvalidSettingError("candidate_captions must be a list with one caption per candidate, got one string.")
    captions = list(candidate_captions)
    if len(captions) != count or not all(isinstance(caption, str) for caption in captions):
        raise InvalidSettingError(
            f"candidate_captions needs one string per candidate ({count}), got {len(captions)} items; "
            "pass one caption per candidate image, or none."
        )
    return captions


def _mix_alphas(candidate_alphas, count: int) -> list[float] | None:
    if candidate_alphas is None:
        return None
    mixes = [float(a) for a in candidate_alphas]
    if len(mixes) != count or not all(0.0 <= a <= 1.0 for a in mixes):
        raise InvalidSettingError(
            f"candidate_alphas needs one alpha in [0, 1] per candidate ({count}), got {mixes}; pass the alpha each "
            "candidate was generated with (pmg_core.scoring.candidate_alphas), or none."
        )
    return mixes


def _text_or_none(text: str | None, name: str) -> str | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidSettingError(f"{name} must be a string, got {type(text).__name__}.")
    return text.strip() or None
