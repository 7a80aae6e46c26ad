"""Training PMG's implicit soft preference embeddings (the reference never released this).

- :mod:`.components` — the frozen generator parts behind protocols, with diffusers adapters;
- :mod:`.examples` / :mod:`.data` — training examples from user histories with images;
- :mod:`.trainer` — :class:`SoftPromptTrainer` and :class:`TrainConfig`;
- :mod:`.run` — :func:`train_adapter`, one run assembled once (the node and ``pmg train`` call it);
- :mod:`.evaluate` — trained vs untrained vs keywords-only on held-out users;
- :mod:`.cli` — ``pmg train``.

Submodules load on first use, so ``import pmg_core.training`` stays cheap.
"""

from __future__ import annotations

from ..lazy import lazy_exports

_EXPORTS = {
    "NoisePredictor": "components",
    "LatentEncoder": "components",
    "NoiseSchedule": "components",
    "DiffusersNoisePredictor": "components",
    "DiffusersLatentEncoder": "components",
    "FlowMatchingSchedule": "components",
    "FrozenGenerator": "components",
    "TrainingExample": "examples",
    "build_examples": "data",
    "TrainConfig": "trainer",
    "TrainResult": "trainer",
    "SoftPromptTrainer": "trainer",
    "train_adapter": "run",
    "read_loss_csv": "loss_log",
    "evaluate_adapter": "evaluate",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
