"""Does the trained adapter personalise? Trained vs untrained vs keywords only, on held-out users.

For each held-out user three images are generated with the same seed, the same
target caption and the same sampler settings; only the soft part differs:

* ``trained``   — the condition holds the trained adapter's soft embeddings;
* ``untrained`` — the same adapter architecture at its untrained initialisation;
* ``keywords``  — no soft part at all (target keywords, plus preference text if given).

Each triple is scored with :func:`pmg_core.metrics.score_candidates` against the
user's history images (personalisation: LPIPS/SSIM to history) and the target
image (accuracy: LPIPS/SSIM to target). The result is a JSON-ready dict with
per-user rows and per-variant means.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..conditioning import PMGConditions, build_conditions
from ..errors import TrainingError
from ..history import Item, UserHistory
from ..metrics.images import load_image
from ..metrics.lpips import LPIPS
from ..metrics.selection import score_candidates
from ..prompts import soft_prompt_text
from ..render import negative_prompt, render_history, render_target_text
from ..soft_prompt import SoftPromptAdapter

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "VARIANTS", "evaluate_adapter"]

VARIANTS = ("trained", "untrained", "keywords")
METRICS = ("lpips_history", "ssim_history", "lpips_target", "ssim_target")


def evaluate_adapter(
    generator,
    llm,
    trained: SoftPromptAdapter,
    histories: Sequence[UserHistory],
    untrained: SoftPromptAdapter | None = None,
    seed: int = 0,
    steps: int = 20,
    guidance_scale: float = 7.5,
    size: int = 512,
    alpha: float = 0.5,
    target_keywords: Callable[[Item], Sequence[str]] | None = None,
    preference_text: Callable[[UserHistory], str | None] | None = None,
    lpips=None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Generate and score the three variants for every user in ``histories``.

    ``generator`` is a :class:`pmg_core.sd_runner.SDRunner`; ``untrained``
    defaults to ``SoftPromptAdapter.untrained`` with the trained adapter's shape
    and seed 0 (the trainer's starting point when it used seed 0).
    """
    users = _scorable_users(histories)
    config = trained.config
    untrained = untrained or SoftPromptAdapter.untrained(
        llm, config.text_dim, num_image_tokens=config.num_image_tokens, num_prefix=config.num_prefix, seed=0
    )
    adapters = {"trained": trained, "untrained": untrained}
    keywords_of = target_keywords or (lambda item: item.keywords)
    lpips = lpips if lpips is not None else LPIPS("alex")  # built once for all users; score_candidates takes it
    # Every variant of every user is sampled alike: one seed, one sampler setting.
    sample = functools.partial(
        generator.generate_tensor, seed=seed, steps=steps, guidance_scale=guidance_scale, height=size, width=size
    )
    rows = []
    for done, history in enumerate(users):
        caption = render_target_text(history.target, tuple(keywords_of(history.target)), history.scene)
        preference = preference_text(history) if preference_text else None
        conditions = _variant_conditions(generator.text_encoder, llm, adapters, history, caption, preference, alpha)
        candidates = torch.cat([sample(c, negative_prompt=negative_prompt(history.scene)) for c in conditions])
        rows.append(_score_row(history, caption, candidates, lpips))
        if progress is not None:
            progress(done + 1, len(users))
    return {
        "users": rows,
        "summary": {v: {m: float(np.mean([r["variants"][v][m] for r in rows])) for m in METRICS} for v in VARIANTS},
        "settings": {
            "seed": seed,
            "steps": steps,
            "guidance_scale": guidance_scale,
            "size": size,
            "alpha": alpha,
            "held_out_users": len(rows),
            "lower_is_closer": ["lpips_history", "lpips_target"],
        },
    }


def _scorable_users(histories: Sequence[UserHistory]) -> list[UserHistory]:
    """The users with a target image and history images, what each variant is measured against."""
    users = [h for h in histories if h.target is not None and h.target.image_path is not None and h.images]
    if not users:
        raise TrainingError(
            "No held-out user has a target image and history images to score against; "
            "evaluation needs users like the sticker set's (pmg train --stickers N --eval-users M)."
        )
    return users


def _variant_conditions(
    encoder,
    llm,
    adapters: dict[str, SoftPromptAdapter],
    history: UserHistory,
    caption: str,
    preference: str | None,
    alpha: float,
) -> list[PMGConditions]:
    """One user's conditions in :data:`VARIANTS` order: the same caption and preference, only the soft part differs."""
    soft_text = soft_prompt_text(history.scene, render_history(history))
    with torch.no_grad():
        soft = {name: adapter.encode(llm, [soft_text])[0] for name, adapter in adapters.items()}
    soft["keywords"] = None
    return [build_conditions(encoder, caption, preference, soft[variant], alphas=(alpha,)) for variant in VARIANTS]


def _score_row(history: UserHistory, caption: str, candidates: torch.Tensor, lpips) -> dict:
    """One user's JSON row: each variant's image measured against the user's history images and target image."""
    report = score_candidates(
        candidates,
        history_images=[load_image(p)[0] for p in history.images],
        target_image=load_image(history.target.image_path)[0],
        lpips=lpips,
    )
    scores = dict(zip(VARIANTS, report.candidates, strict=True))
    return {
        "user_id": history.user_id,
        "target_caption": caption,
        "variants": {v: {m: float(getattr(scores[v], m)) for m in METRICS} for v in VARIANTS},
    }


def format_table(result: dict) -> str:
    """The summary as a small fixed-width text table (for logs and reports)."""
    header = f"{'variant':<10}" + "".join(f"{m:>15}" for m in METRICS)
    lines = [header]
    for variant, values in result["summary"].items():
        lines.append(f"{variant:<10}" + "".join(f"{values[m]:>15.4f}" for m in METRICS))
    return "\n".join(lines)
