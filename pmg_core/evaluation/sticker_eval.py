"""Does PMG personalise? The sticker evaluation on the generator trained here.

For each user, every method builds one condition from the same keywords, and
the generator draws ``images_per_user`` stickers from the same seed (so the
methods differ only in their condition). Each sticker is measured against the
user's history images (LPIPS-alex and SSIM: personalisation), against the target
item's image (LPIPS, SSIM: accuracy) and by the category judge (does it show the
target's category?). Per-user means are compared with bootstrap intervals over
users; the LPIPS change to history is paired against "target only".

Methods (:data:`METHODS`):

* ``target only`` — the plain target prompt, no personalisation;
* ``history names`` — the no-LLM baseline: PMG's condition with the history items'
  own names as the preference text (what a user could type without any LLM);
* ``keywords`` — PMG's condition with the preference keywords;
* ``keywords + soft (untrained)`` / ``(trained)`` — plus the soft embeddings of an
  untrained or a trained adapter (when an LLM and an adapter are given);
* ``image prompt`` — the target prompt and the history images' tokens
  (:mod:`pmg_core.image_prompt`, IP-Adapter's idea) in the soft prompt's place;
* ``PMG + image prompt`` — the keywords, the trained adapter's soft tokens (when
  given) and the image tokens in one condition, weighted like PMG's parts;
* ``PMG sweep + z`` — one sticker per alpha of the sweep for every seed, the best kept by
  ``z = a·log d_p + (1-a)·log d_t`` with d_p = 1 - LPIPS to history and d_t the
  judge's probability of the target's category (never the held-back target image).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..conditioning import build_conditions
from ..sticker_model.sampling import sample_euler
from ..sticker_model.text_encoder import MiniLMTextEncoder
from ..sticker_model.weights import StickerModel
from ..history import UserHistory
from ..keywords import Preference
from ..metrics.lpips import LPIPS
from ..metrics.selection import select_by_tradeoff
from ..metrics.ssim import ssim_pairwise
from .judge import CategoryJudge
from .stats import Estimate, bootstrap_mean, bootstrap_relative_change

logger = logging.getLogger(__name__)

BASELINE = "target only"
HISTORY_NAMES = "history names"
IMAGE_PROMPT, PMG_AND_IMAGE = "image prompt", "PMG + image prompt"
# Methods every other one is compared with, paired by user: (metric suffix, baseline).
COMPARED_WITH = (("change", BASELINE), ("vs_names", HISTORY_NAMES))


def history_names_text(history: UserHistory) -> str:
    """The no-LLM preference text: the history items' names, each once, oldest first (as the LLM reads them)."""
    return ", ".join(dict.fromkeys(item.title for item in history.items))


@dataclass
class EvalSettings:
    """What every method shares; fixed before looking at held-out users."""

    steps: int = 20
    cfg: float = 5.0
    images_per_user: int = 4
    alpha: float = 0.5
    sweep: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.8)
    weighting: str = "scale"
    negative: str = ""
    seed: int = 0


class StickerPipeline:
    """Text conditions in, 64x64 stickers out, exactly as the stock KSampler (euler, normal) draws them."""

    def __init__(self, generator: StickerModel, encoder: MiniLMTextEncoder):
        self.generator = generator
        self.encoder = encoder

    @torch.no_grad()
    def generate(
        self, condition: torch.Tensor, seed: int, count: int, steps: int, cfg: float, negative: str = ""
    ) -> torch.Tensor:
        """``count`` images ``[count, 3, 64, 64]`` for one condition ``[1, T, D]`` (one latent batch, one seed)."""
        channels = self.generator.autoencoder.latent_channels
        side = self.generator.image_size // 8
        uncond = self.encoder.encode([negative]).embeddings
        latents = sample_euler(
            self.generator.denoiser, condition.expand(count, -1, -1), uncond, (count, channels, side, side), seed, steps, cfg
        )
        return self.generator.autoencoder.decode(latents)


@dataclass
class UserCase:
    """One evaluation user: the history, its keywords, and the images it is measured against."""

    history: UserHistory
    preference: Preference
    history_images: torch.Tensor  # [H, 3, 64, 64]
    target_image: torch.Tensor  # [1, 3, 64, 64]
    target_category: int
    soft: dict[str, torch.Tensor] = field(default_factory=dict)  # method suffix -> [1, k, 384]

    @property
    def seed(self) -> int:
        return zlib.crc32(self.history.user_id.encode("utf-8"))


@dataclass
class MethodResult:
    """Per-user means of every metric for one method (lists in user order) and its sample images."""

    name: str
    metrics: dict[str, list[float]] = field(default_factory=dict)
    samples: list[torch.Tensor] = field(default_factory=list)  # one [3, 64, 64] per user

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.metrics.setdefault(key, []).append(value)


class StickerEvaluation:
    """Runs the methods over users and summarises them."""

    def __init__(
        self, pipeline: StickerPipeline, judge: CategoryJudge, settings: EvalSettings | None = None, lpips: LPIPS | None = None
    ):
        self.pipeline = pipeline
        self.judge = judge
        self.settings = settings or EvalSettings()
        self.lpips = lpips or LPIPS("alex")

    # ------------------------------------------------------------------ measuring

    def measure(self, images: torch.Tensor, case: UserCase) -> dict[str, float]:
        """Means over ``images`` of the per-image metrics for ``case``."""
        lpips_history = self.lpips.pairwise(images, case.history_images).mean(dim=1)
        ssim_history = ssim_pairwise(images, case.history_images).mean(dim=1)
        lpips_target = self.lpips.pairwise(images, case.target_image)[:, 0]
        ssim_target = ssim_pairwise(images, case.target_image)[:, 0]
        probabilities = self.judge.probabilities(images)
        return {
            "lpips_history": float(lpips_history.mean()),
            "ssim_history": float(ssim_history.mean()),
            "lpips_target": float(lpips_target.mean()),
            "ssim_target": float(ssim_target.mean()),
            "judge_target": float((probabilities.argmax(-1) == case.target_category).float().mean()),
            "judge_target_p": float(probabilities[:, case.target_category].mean()),
        }

    # ------------------------------------------------------------------ methods

    def condition(self, case: UserCase, method: str, alpha: float | None = None) -> torch.Tensor:
        """The ``[1, T, 384]`` condition of ``method`` for ``case``."""
        preference = case.preference
        if method == BASELINE:
            return self.pipeline.encoder.encode([preference.target_text]).embeddings
        soft = case.soft.get(method.removeprefix("keywords + soft "), None) if "soft" in method else None
        preference_text = history_names_text(case.history) if method == HISTORY_NAMES else preference.preference_text
        if method == IMAGE_PROMPT:
            soft, preference_text = case.soft["image"], None
        elif method == PMG_AND_IMAGE:  # both token sets in the soft slot: [soft tokens | image tokens]
            soft = torch.cat([t for t in (case.soft.get("(trained)"), case.soft["image"]) if t is not None], dim=1)
        conditions = build_conditions(
            self.pipeline.encoder,
            preference.target_text,
            preference_text,
            soft,
            alphas=(self.settings.alpha if alpha is None else alpha,),
            weighting=self.settings.weighting,
        )
        return conditions.embeddings

    def images(self, case: UserCase, condition: torch.Tensor) -> torch.Tensor:
        s = self.settings
        return self.pipeline.generate(condition, case.seed + s.seed, s.images_per_user, s.steps, s.cfg, s.negative)

    def run(
        self, cases: list[UserCase], methods: list[str], progress: Callable[[int, int], None] | None = None
    ) -> dict[str, MethodResult]:
        """Every method on every user; ``sweep`` adds the alpha sweep with z-selection and one result per alpha."""
        results: dict[str, MethodResult] = {}
        total, done = len(cases) * len(methods), 0
        for case in cases:
            for method in methods:
                if method == "PMG sweep + z":
                    self._sweep(case, results)
                else:
                    images = self.images(case, self.condition(case, method))
                    result = results.setdefault(method, MethodResult(method))
                    result.add(self.measure(images, case))
                    result.samples.append(images[0])
                done += 1
                if progress is not None:
                    progress(done, total)
        return results

    def _sweep(self, case: UserCase, results: dict[str, MethodResult]) -> None:
        s = self.settings
        per_alpha = [self.images(case, self.condition(case, "keywords", alpha)) for alpha in s.sweep]
        for alpha, images in zip(s.sweep, per_alpha, strict=True):
            results.setdefault(f"keywords a={alpha:g}", MethodResult(f"keywords a={alpha:g}")).add(self.measure(images, case))
        chosen = []
        for seed_index in range(s.images_per_user):
            candidates = torch.stack([images[seed_index] for images in per_alpha])
            d_pref = 1 - self.lpips.pairwise(candidates, case.history_images).mean(dim=1)
            d_target = self.judge.probabilities(candidates)[:, case.target_category]
            best, _ = select_by_tradeoff(d_pref, d_target, s.alpha)
            chosen.append(candidates[best])
        images = torch.stack(chosen)
        result = results.setdefault("PMG sweep + z", MethodResult("PMG sweep + z"))
        result.add(self.measure(images, case))
        result.samples.append(images[0])


def summarise(results: dict[str, MethodResult], seed: int = 0) -> dict[str, dict[str, Estimate]]:
    """Per method: every metric's mean with its interval, and the LPIPS changes against each baseline run.

    ``<metric>_change`` is against ``target only``, ``<metric>_vs_names`` against ``history names``
    (each paired by user, present when that baseline ran and the method is another one).
    """
    summary: dict[str, dict[str, Estimate]] = {}
    for name, result in results.items():
        row = {metric: bootstrap_mean(values, seed) for metric, values in result.metrics.items()}
        for suffix, baseline_name in COMPARED_WITH:
            baseline = results.get(baseline_name)
            if baseline is None or name == baseline_name:
                continue
            for metric in ("lpips_history", "lpips_target"):
                row[f"{metric}_{suffix}"] = bootstrap_relative_change(result.metrics[metric], baseline.metrics[metric], seed)
        summary[name] = row
    return summary
