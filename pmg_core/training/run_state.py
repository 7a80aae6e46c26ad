"""A run's identity and what to do with a checkpoint already in its folder.

The library decides the checkpoint policy once, for the node and the CLI alike:
``existing="resume"`` continues a checkpoint of the same run (same settings,
examples, adapter shape and generator, checked by the fingerprint), ``"restart"``
discards it, ``"refuse"`` stops before any model work so nothing is overwritten by
accident.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..errors import InvalidSettingError, TrainingError
from .checkpoint import find_checkpoint, load_state, remove_checkpoints
from .examples import TrainingExample, examples_fingerprint
from .outputs import LOSS_CSV

logger = logging.getLogger(__name__)

__all__ = ["EXISTING_CHECKPOINT", "check_existing_checkpoint", "restore_run", "run_fingerprint"]

EXISTING_CHECKPOINT = ("resume", "restart", "refuse")


def check_existing_checkpoint(out_dir: str | Path, existing: str) -> None:
    """Refuse early when ``out_dir`` holds a checkpoint and ``existing`` is ``"refuse"``; check the word itself."""
    if existing not in EXISTING_CHECKPOINT:
        raise InvalidSettingError(
            f"existing={existing!r}: choose 'resume' (continue a checkpoint), 'restart' (discard it) or 'refuse'."
        )
    if existing == "refuse" and find_checkpoint(Path(out_dir)) is not None:
        raise TrainingError(
            f"{out_dir} already holds a training checkpoint; pass --resume to continue it, "
            "--overwrite to start over, or choose another --out."
        )


def run_fingerprint(config, adapter, examples: list[TrainingExample], generator_identity: str) -> dict:
    """What must match for a checkpoint to continue this run."""
    c = adapter.config
    return {
        "settings": config.curve_settings(),
        "examples": examples_fingerprint(examples),
        "adapter": {
            "llm_identity": c.llm_identity,
            "text_dim": c.text_dim,
            "num_image_tokens": c.num_image_tokens,
            "num_prefix": c.num_prefix,
        },
        "generator": generator_identity,
    }


def restore_run(
    out_dir: Path, resume: bool, fingerprint: dict, adapter, optimizer, noise_rng: torch.Generator, device
) -> int:
    """Load a matching checkpoint into ``adapter``/``optimizer``/``noise_rng``; returns the step to continue from.

    ``resume=False`` discards a checkpoint (and its loss log) and returns 0.
    """
    folder = find_checkpoint(out_dir)
    if folder is None:
        return 0
    if not resume:
        logger.info("resume=False: discarding the checkpoint in %s and starting over", out_dir)
        remove_checkpoints(out_dir)
        (out_dir / LOSS_CSV).unlink(missing_ok=True)
        return 0
    state = load_state(folder)
    if state.fingerprint != fingerprint:
        differing = sorted(k for k in fingerprint if state.fingerprint.get(k) != fingerprint[k])
        raise TrainingError(
            f"The checkpoint in {out_dir} comes from a run with other {', '.join(differing)}; resuming would not "
            "continue the same run. Train into another output (pmg train --out, or another adapter_name in ComfyUI), "
            "or start over (pmg train --overwrite, or resume off in ComfyUI)."
        )
    adapter.load_state_dict({k: v.to(device) for k, v in state.weights.items()})
    optimizer.load_state_dict(state.optimizer)
    noise_rng.set_state(state.noise_rng)
    logger.info("Resuming from step %d (%s)", state.step, folder)
    return state.step
