"""``train_adapter``: one training run assembled once, for the ComfyUI node, ``pmg train`` and scripts.

The callers bring what differs between them (the frozen generator parts from
diffusers or from ComfyUI, the LLM, the examples, a progress callback); the
library builds the untrained adapter, the trainer, and applies the checkpoint
policy (:mod:`.run_state`: resume / restart / refuse an existing checkpoint;
:func:`.step_plan.checkpoint_interval` when ``checkpoint_every`` is not set).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..soft_prompt import SoftPromptAdapter
from .components import FrozenGenerator
from .examples import TrainingExample
from .run_state import check_existing_checkpoint
from .trainer import SoftPromptTrainer, TrainConfig, TrainResult

__all__ = ["train_adapter"]


def train_adapter(
    llm,
    generator: FrozenGenerator,
    examples: list[TrainingExample],
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    num_image_tokens: int = 4,
    num_prefix: int = 4,
    existing: str = "resume",
    progress: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train a fresh soft-prompt adapter for ``generator`` on ``examples`` into ``out_dir``.

    The adapter starts untrained from ``config.seed`` (k = ``num_image_tokens``,
    m = ``num_prefix``, as wide as the generator's text encoder). ``existing`` says
    what a checkpoint already in ``out_dir`` means: ``"resume"`` continues it (same
    run only), ``"restart"`` discards it, ``"refuse"`` raises before training.
    ``progress(done, total)`` runs after each step and may raise to stop (the last
    complete step is checkpointed). The result carries the trained adapter.
    """
    config = config or TrainConfig()
    config.validate()
    check_existing_checkpoint(out_dir, existing)
    adapter = SoftPromptAdapter.untrained(
        llm, generator.text_encoder.width, num_image_tokens=num_image_tokens, num_prefix=num_prefix, seed=config.seed
    ).to(llm.device)
    trainer = SoftPromptTrainer(
        llm,
        adapter,
        generator.text_encoder,
        generator.noise_predictor,
        generator.latent_encoder,
        generator.schedule,
        config,
        generator_identity=generator.identity,
    )
    return trainer.train(examples, out_dir, progress=progress, resume=existing == "resume")
