"""Training checkpoints and the trainer's precision choice: mechanics on tiny tensors, no models.

What is checked: a damaged checkpoint is refused with the library's TrainingError
(a message naming the fix), a save that is interrupted while a previous save's
swap was also interrupted never leaves the run without a readable checkpoint, and
bf16 autocast is only chosen on GPUs with native bf16 (not emulated).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pmg_core.errors import TrainingError
from pmg_core.training.checkpoint import (
    TrainingState,
    find_checkpoint,
    load_state,
    save_state,
)
from pmg_core.training.trainer import TrainConfig, autocast_for


def _state(step: int) -> TrainingState:
    weight = torch.full((2, 3), float(step))
    optimizer = {
        "state": {0: {"step": torch.tensor(float(step)), "exp_avg": weight.clone(), "exp_avg_sq": weight.clone()}},
        "param_groups": [{"lr": 1e-3, "betas": [0.9, 0.999], "params": [0]}],
    }
    rng = torch.Generator().manual_seed(step).get_state()
    return TrainingState(step=step, weights={"bridge.weight": weight}, optimizer=optimizer, noise_rng=rng, fingerprint={"k": 1})


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


def _fake_cuda(monkeypatch, major: int) -> None:
    """Make torch report one CUDA device of compute capability ``major``.x whose bf16 works by emulation."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major, minor=0))
    monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True, raising=False)


def _precision_of(mode: str):
    return autocast_for(TrainConfig(mixed_precision=mode).mixed_precision, torch.device("cuda", 0))


def test_auto_precision_skips_emulated_bf16(monkeypatch):
    """Mechanics: on a pre-Ampere GPU (bf16 only emulated) 'auto' trains in fp32 and 'bf16' is refused."""
    _fake_cuda(monkeypatch, major=7)
    assert isinstance(_precision_of("auto"), contextlib.nullcontext)
    with pytest.raises(TrainingError, match="bf16"):
        _precision_of("bf16")


def test_auto_precision_uses_native_bf16(monkeypatch):
    """Mechanics: on an Ampere-or-newer GPU 'auto' and 'bf16' autocast to bfloat16; 'no' stays fp32."""
    _fake_cuda(monkeypatch, major=8)
    for mode in ("auto", "bf16"):
        context = _precision_of(mode)
        assert isinstance(context, torch.autocast) and context.fast_dtype == torch.bfloat16
    assert isinstance(_precision_of("no"), contextlib.nullcontext)
