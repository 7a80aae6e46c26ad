"""One training step with the REAL SmolLM2-135M and the tiny random SD1.5 checkpoint (768-wide CLIP-L).

Checks real behaviour of the LLM side: gradients flow through all 30 SmolLM2 layers
into the adapter's image tokens, prefix and bridge while SmolLM2 itself stays
bit-identical; the generator is random, so the loss value means nothing. The time
and memory of the step are recorded as test properties (and logged).
"""

from __future__ import annotations

import logging
import resource
import time

import pytest
import torch

from pmg_core.conditioning import DiffusersTextEncoder
from pmg_core.loaders.stickers import build_sticker_histories
from pmg_core.sd_checkpoint import load_sd_components
from pmg_core.soft_prompt import SoftPromptAdapter
from pmg_core.training.components import DiffusersLatentEncoder, DiffusersNoisePredictor, NoiseSchedule
from pmg_core.training.data import build_examples
from pmg_core.training.trainer import SoftPromptTrainer, TrainConfig

pytestmark = pytest.mark.real_model
logger = logging.getLogger(__name__)


def test_one_training_step_with_smollm2(smollm2, tiny_checkpoint, tmp_path, record_property):
    """Real SmolLM2: one optimizer step (batch 2, 64 px) updates every adapter tensor and no LLM weight."""
    generator = load_sd_components(tiny_checkpoint)
    examples = build_examples(build_sticker_histories(n_users=4, seed=0), seed=0)
    adapter = SoftPromptAdapter.untrained(smollm2, generator.text_width, seed=0)
    trainer = SoftPromptTrainer(
        smollm2,
        adapter,
        DiffusersTextEncoder(generator.tokenizer, generator.text_encoder),
        DiffusersNoisePredictor(generator.unet),
        DiffusersLatentEncoder(generator.vae, generator.latent_scaling, generator.latent_shift),
        NoiseSchedule.from_scheduler(generator.scheduler),
        TrainConfig(batch_size=2, grad_accum=1, resolution=64, learning_rate=1e-4, max_steps=1),
        generator_identity=generator.identity,
    )
    llm_before = {name: tensor.clone() for name, tensor in list(smollm2.model.state_dict().items())[:: 40]}
    adapter_before = {name: tensor.clone() for name, tensor in adapter.state_dict().items()}
    trainer._encode_all(examples)  # the one-time VAE/CLIP work is not part of the step
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    result = trainer.train(examples, tmp_path / "run")
    seconds = time.perf_counter() - began
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    assert result.steps == 1 and torch.isfinite(torch.tensor(result.final_loss))
    for name, tensor in adapter.state_dict().items():
        assert not torch.equal(tensor, adapter_before[name]), f"{name} got no update"
    state = smollm2.model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in llm_before.items())
    record_property("seconds_per_step", round(seconds, 3))
    record_property("peak_rss_mb", round(rss_after / 1024, 1))
    record_property("peak_rss_growth_mb", round((rss_after - rss_before) / 1024, 1))
    logger.info("SmolLM2 + tiny SD1.5, batch 2 @64px: %.2f s/step, peak RSS %.0f MB (+%.0f MB during the step)",
                seconds, rss_after / 1024, (rss_after - rss_before) / 1024)
