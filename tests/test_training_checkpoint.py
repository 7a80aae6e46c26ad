"""Training checkpoints: mechanics on tiny tensors, no models.

What is checked: a damaged checkpoint is refused with the library's TrainingError
(a message naming the fix).
"""

from __future__ import annotations


import pytest
import torch

from pmg_core.errors import TrainingError
from pmg_core.training.checkpoint import TrainingState, load_state, save_state


def _state(step: int) -> TrainingState:
    weight = torch.full((2, 3), float(step))
    optimizer = {
        "state": {0: {"step": torch.tensor(float(step)), "exp_avg": weight.clone(), "exp_avg_sq": weight.clone()}},
        "param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], "params": [0]}],
    }
    rng = torch.Generator().manual_seed(step).get_state()
    return TrainingState(step=step, adapter={"bridge.weight": weight}, optimizer=optimizer, noise_rng=rng, fingerprint={"k": 1})


def test_damaged_tensor_file_raises_training_error(tmp_path):
    """Mechanics: a checkpoint whose state.safetensors is garbage raises TrainingError naming the way out."""
    folder = save_state(tmp_path, _state(3))
    (folder / "state.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":1}garbage!!")
    with pytest.raises(TrainingError, match="cannot be read.*start over"):
        load_state(folder)
