"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder ``<out>/checkpoint/`` with

* ``state.safetensors`` — the trained weights (``weights.*``: a soft-prompt
  adapter, or the sticker generator's networks and their EMA), AdamW's
  per-parameter tensors (``optimizer.<param index>.<name>``) and the noise RNG
  state (``rng.noise``, the ``torch.Generator`` byte state);
* ``state.json`` — the step, the optimizer's hyper-parameters and scalar state,
  and the run fingerprint that must match to resume.

It is replaced atomically (written to a sibling folder, then swapped by rename),
so an interruption while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import TrainingError

FORMAT = "pmg-training-checkpoint"
VERSION = 2
CHECKPOINT_DIR = "checkpoint"
_TENSORS = "state.safetensors"
_META = "state.json"


@dataclass
class TrainingState:
    """What a resumed run needs to continue the same loss curve."""

    step: int
    weights: dict[str, torch.Tensor]  # every trained tensor, by name
    optimizer: dict  # torch.optim state_dict layout
    noise_rng: torch.Tensor  # uint8 byte state of the CPU torch.Generator
    fingerprint: dict


def save_state(out_dir: Path, state: TrainingState) -> Path:
    """Write ``state`` as ``out_dir/checkpoint`` atomically; returns the folder."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    final = out_dir / CHECKPOINT_DIR
    staging = out_dir / (CHECKPOINT_DIR + ".new")
    retired = out_dir / (CHECKPOINT_DIR + ".old")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)

    tensors = {f"weights.{name}": value.detach().to("cpu").contiguous() for name, value in state.weights.items()}
    scalars: dict[str, dict] = {}
    for index, per_param in state.optimizer["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    tensors["rng.noise"] = state.noise_rng.to("cpu").contiguous()
    save_file(tensors, str(staging / _TENSORS))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(state.step),
        "param_groups": state.optimizer["param_groups"],
        "optimizer_scalars": scalars,
        "fingerprint": state.fingerprint,
    }
    (staging / _META).write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")

    # Swap: the old checkpoint is only deleted once the new one is in place. Without
    # `final` (an earlier swap was interrupted) `retired` is the only complete one: keep it.
    if final.exists():
        shutil.rmtree(retired, ignore_errors=True)
        final.rename(retired)
    staging.rename(final)
    shutil.rmtree(retired, ignore_errors=True)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint folder in ``out_dir`` (also after a crash mid-swap)."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        folder = Path(out_dir) / name
        if (folder / _TENSORS).is_file() and (folder / _META).is_file():
            return folder
    return None


def load_state(folder: Path) -> TrainingState:
    """Read a checkpoint folder written by :func:`save_state`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / _TENSORS))
    except (OSError, ValueError, SafetensorError) as exc:  # SafetensorError (a damaged file) is neither
        raise TrainingError(
            f"The training checkpoint in {folder} cannot be read ({exc}); delete the folder to start over, "
            "or train without --resume."
        ) from exc
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise TrainingError(
            f"{folder} is not a PMG training checkpoint this version can read (format {meta.get('format')!r}, "
            f"version {meta.get('version')!r}); use another output folder or train without --resume."
        )
    weights = {k[len("weights.") :]: v for k, v in tensors.items() if k.startswith("weights.")}
    per_param: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            per_param.setdefault(int(index), {})[name] = value
    for index, values in meta.get("optimizer_scalars", {}).items():
        per_param.setdefault(int(index), {}).update(values)
    if "rng.noise" not in tensors:
        raise TrainingError(f"{folder} lacks the noise RNG state; the checkpoint is incomplete. Train without --resume.")
    return TrainingState(
        step=int(meta["step"]),
        weights=weights,
        optimizer={"state": per_param, "param_groups": meta["param_groups"]},
        noise_rng=tensors["rng.noise"],
        fingerprint=meta.get("fingerprint", {}),
    )


def remove_checkpoints(out_dir: Path) -> None:
    """Delete a run's resumable checkpoint folders (for --overwrite)."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old", CHECKPOINT_DIR + ".new"):
        shutil.rmtree(Path(out_dir) / name, ignore_errors=True)
