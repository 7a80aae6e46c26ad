"""What a finished training run leaves in its folder: the adapter with its metadata, and the loss curve."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..soft_prompt import SoftPromptAdapter, save_adapter
from .loss_log import read_loss_csv
from .plot import loss_curve_image, save_loss_curve

__all__ = ["ADAPTER_FILE", "LOSS_CSV", "LOSS_CURVE", "draw_loss_curve", "save_trained_adapter"]

LOSS_CSV = "loss.csv"
LOSS_CURVE = "loss_curve.png"
ADAPTER_FILE = "adapter.safetensors"


def save_trained_adapter(
    adapter: SoftPromptAdapter, out_dir: Path, config, steps: int, losses: list[float], examples, generator_identity: str
) -> Path:
    """``out_dir/adapter.safetensors`` with the run's settings and final loss in its header."""
    if generator_identity:
        adapter.config.generator = generator_identity
    metadata = {
        "trained_steps": str(steps),
        "final_loss": f"{losses[-1]:.6g}" if losses else "nan",
        "final_loss_mean10": f"{np.mean(losses[-10:]):.6g}" if losses else "nan",
        "llm_hidden_size": str(adapter.config.llm_hidden_size),
        "generator": generator_identity,
        "training_examples": str(len(examples)),
        "training_users": str(len({e.user_id for e in examples})),
        "learning_rate": str(config.learning_rate),
        "batch_size": str(config.batch_size),
        "grad_accum": str(config.grad_accum),
        "negative_weight": str(config.negative_weight),
        "resolution": str(config.resolution),
        "seed": str(config.seed),
    }
    path = Path(out_dir) / ADAPTER_FILE
    save_adapter(adapter, path, extra_metadata=metadata)
    return path


def draw_loss_curve(out_dir: Path, with_negative: bool) -> Path:
    """``out_dir/loss_curve.png`` from ``out_dir/loss.csv`` (the negative's curve only when it was trained)."""
    rows = read_loss_csv(Path(out_dir) / LOSS_CSV)
    steps = [int(r["step"]) for r in rows]
    series = {"loss": [r["loss"] for r in rows], "target_loss": [r["target_loss"] for r in rows]}
    if with_negative:
        series["negative_loss"] = [r["negative_loss"] for r in rows]
    return save_loss_curve(loss_curve_image(steps, series), Path(out_dir) / LOSS_CURVE)
