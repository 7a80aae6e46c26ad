"""Training checkpoints: mechanics on tiny tensors, no models.

What is checked: a damaged checkpoint is refused with the library's TrainingError
(a message naming the fix), and a save that is interrupted while a previous save's
swap was also interrupted never leaves the run without a readable checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pmg_core.errors import TrainingError
from pmg_core.training.checkpoint import TrainingState, find_checkpoint, load_state, save_state


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


def test_save_after_an_interrupted_swap_keeps_a_readable_checkpoint(tmp_path, monkeypatch):
    """Mechanics: with only checkpoint.old left by an interrupted swap, a second interrupted swap keeps it."""
    save_state(tmp_path, _state(2))
    (tmp_path / "checkpoint").rename(tmp_path / "checkpoint.old")  # a swap stopped between its two renames
    assert load_state(find_checkpoint(tmp_path)).step == 2

    real_rename = Path.rename

    def failing_rename(self, target):
        if self.name == "checkpoint.new":
            raise KeyboardInterrupt  # stopped again, before the new folder is in place
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_rename)
    with pytest.raises(KeyboardInterrupt):
        save_state(tmp_path, _state(4))
    monkeypatch.setattr(Path, "rename", real_rename)

    folder = find_checkpoint(tmp_path)
    assert folder is not None, "no readable checkpoint left"
    assert load_state(folder).step == 2
    assert save_state(tmp_path, _state(4)) == tmp_path / "checkpoint"
    assert load_state(find_checkpoint(tmp_path)).step == 4
    assert not (tmp_path / "checkpoint.old").exists()
