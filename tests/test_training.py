"""Soft-prompt training on tiny random models: these tests check mechanics, never learning quality.

The LLM is the tiny random Llama, the generator the tiny random SD pipeline (32-wide
text encoder); images are small generated PNGs. What is checked: the loss goes
down on a fixed batch, only the adapter changes, checkpoints resume the same
curve, the negative term acts on the gradient, bad inputs are refused.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image

from pmg_core.errors import AdapterMismatchError, InvalidSettingError, MissingImageError, TrainingError
from pmg_core.soft_prompt import SoftPromptAdapter, load_adapter
from pmg_core.training.components import (
    DiffusersLatentEncoder,
    DiffusersNoisePredictor,
    FlowMatchingSchedule,
    FrozenGenerator,
    NoiseSchedule,
)
from pmg_core.training.examples import TrainingExample
from pmg_core.training.run import train_adapter
from pmg_core.training.step_plan import checkpoint_interval
from pmg_core.training.trainer import SoftPromptTrainer, TrainConfig, read_loss_csv

RESOLUTION = 32


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six distinct small RGBA images (gradients with a coloured disc), like stickers."""
    folder = tmp_path_factory.mktemp("train-images")
    paths = []
    for i in range(6):
        image = Image.new("RGBA", (40, 40), (255, 255, 255, 0))
        pixels = image.load()
        for y in range(40):
            for x in range(40):
                inside = (x - 20) ** 2 + (y - 20) ** 2 < (8 + 2 * i) ** 2
                disc = ((37 * i) % 256, (90 + 25 * i) % 256, (200 - 30 * i) % 256, 255)
                pixels[x, y] = disc if inside else (x * 6, y * 6, 128, 255)
        path = folder / f"item{i}.png"
        image.save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def examples(images):
    names = ["grinning face", "red heart", "sleeping cat", "rocket", "sun with face", "green apple"]
    out = []
    for i in range(6):
        neg = (i + 3) % 6
        out.append(
            TrainingExample(
                user_id=f"u{i}",
                soft_prompt_text=(f"A person sent the stickers {names[i]}, {names[(i + 1) % 6]}. "
                                  "Please describe the stickers they like."),
                target_caption=f"a cute emoji, sticker, white background, {names[i]}",
                target_image=images[i],
                negative_caption=f"a cute emoji, sticker, white background, {names[neg]}",
                negative_image=images[neg],
            )
        )
    return out


def _trainer(tiny_llm, tiny_sd, tiny_text_encoder, adapter=None, **settings):
    defaults = dict(batch_size=2, grad_accum=1, resolution=RESOLUTION, learning_rate=1e-2, checkpoint_every=2, seed=3)
    defaults.update(settings)
    adapter = adapter or SoftPromptAdapter.untrained(tiny_llm, tiny_text_encoder.width, num_image_tokens=2, num_prefix=2, seed=0)
    return SoftPromptTrainer(
        tiny_llm,
        adapter,
        tiny_text_encoder,
        DiffusersNoisePredictor(tiny_sd.unet),
        DiffusersLatentEncoder(tiny_sd.vae),
        NoiseSchedule.from_scheduler(tiny_sd.scheduler),
        TrainConfig(**defaults),
        generator_identity="tiny-sd@test",
    )


def _digest(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_loss_decreases_on_a_fixed_batch(tiny_llm, tiny_sd, tiny_text_encoder, examples):
    """Mechanics: with fixed noise and timesteps, repeated steps on one batch lower the target loss."""
    trainer = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, negative_weight=0.0, learning_rate=1e-1)
    optimizer = torch.optim.AdamW(trainer.adapter.parameters(), lr=1e-1, weight_decay=0.0)
    batch = examples[:2]
    losses = []
    for _ in range(20):
        rng = torch.Generator().manual_seed(0)  # same noise and timesteps every step: a fixed batch
        loss, target_loss, _ = trainer.micro_batch_loss(batch, rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(target_loss.item())
    # The soft tokens are 2 of 79 cross-attention tokens of a random UNet: their reach is limited,
    # so the check is a clear, steady decrease rather than a large one.
    assert losses[-1] < 0.95 * losses[0], losses
    assert max(losses[-5:]) < min(losses[:3]), losses


def test_only_the_adapter_changes(tiny_llm, tiny_sd, tiny_text_encoder, examples, tmp_path):
    """Mechanics: frozen LLM/UNet/VAE/text-encoder tensors are bit-identical after training; the adapter moved."""
    frozen = {
        "llm": tiny_llm.model,
        "unet": tiny_sd.unet,
        "vae": tiny_sd.vae,
        "text_encoder": tiny_sd.text_encoder,
    }
    before = {name: _digest(module) for name, module in frozen.items()}
    trainer = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=2)
    adapter_before = {k: v.clone() for k, v in trainer.adapter.state_dict().items()}
    result = trainer.train(examples, tmp_path / "run")

    assert {name: _digest(module) for name, module in frozen.items()} == before
    assert all(not p.requires_grad for p in tiny_llm.model.parameters())
    for name, value in trainer.adapter.state_dict().items():
        assert not torch.equal(value, adapter_before[name]), f"adapter tensor {name} did not train"
    assert result.steps == 2 and len(result.losses) == 2


def test_outputs_and_saved_adapter_round_trip(tiny_llm, tiny_sd, tiny_text_encoder, examples, tmp_path):
    """Mechanics: the run writes loss.csv, loss_curve.png and an adapter whose embeddings reload identically."""
    trainer = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=3)
    result = trainer.train(examples, tmp_path / "run")

    rows = read_loss_csv(result.loss_csv)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["loss"] == pytest.approx(r["target_loss"] - 0.5 * r["negative_loss"], rel=1e-5) for r in rows)
    with Image.open(result.loss_curve) as curve:
        assert curve.format == "PNG" and curve.size[0] > 100
    loaded = load_adapter(result.adapter_path, llm=tiny_llm, text_dim=tiny_text_encoder.width)
    meta = loaded.config.metadata
    assert meta["trained_steps"] == "3" and meta["generator"] == "tiny-sd@test"
    assert float(meta["final_loss"]) == pytest.approx(rows[-1]["loss"], rel=1e-4)
    assert loaded.config.generator == "tiny-sd@test"
    texts = [examples[0].soft_prompt_text, examples[1].soft_prompt_text]
    with torch.no_grad():
        assert torch.equal(trainer.adapter.encode(tiny_llm, texts), loaded.encode(tiny_llm, texts))


def test_resume_continues_the_same_loss_curve(tiny_llm, tiny_sd, tiny_text_encoder, examples, tmp_path):
    """Mechanics: a run stopped by its progress callback (after step 3) or by Ctrl-C inside step 4's
    UNet call, then resumed, writes the same loss.csv and ends with the same adapter as an uninterrupted run."""
    full = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=6, checkpoint_every=4)
    full_result = full.train(examples, tmp_path / "full")
    expected_csv = (tmp_path / "full" / "loss.csv").read_text()

    class Stop(Exception):
        pass

    def stop_after_three(done, total):
        if done == 3:
            raise Stop

    first = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=6, checkpoint_every=4)
    with pytest.raises(Stop):
        first.train(examples, tmp_path / "by_progress", progress=stop_after_three)

    ctrl_c = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=6, checkpoint_every=4)
    unet_call = ctrl_c.noise_predictor
    calls = []

    def interrupting(*args):
        calls.append(1)
        if len(calls) == 4:  # one UNet call per step here: this is inside step 4
            raise KeyboardInterrupt
        return unet_call(*args)

    ctrl_c.noise_predictor = interrupting
    with pytest.raises(KeyboardInterrupt):
        ctrl_c.train(examples, tmp_path / "by_ctrl_c")

    for name in ("by_progress", "by_ctrl_c"):
        assert (tmp_path / name / "checkpoint" / "state.safetensors").is_file()
        resumed = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=6, checkpoint_every=4)
        result = resumed.train(examples, tmp_path / name)
        assert result.start_step == 3 and result.steps == 6, name
        assert (tmp_path / name / "loss.csv").read_text() == expected_csv, name
        for key, value in full.adapter.state_dict().items():
            assert torch.equal(value, resumed.adapter.state_dict()[key]), (name, key)
        assert result.final_loss == full_result.final_loss


def test_resume_refuses_other_settings_and_resume_false_starts_over(tiny_llm, tiny_sd, tiny_text_encoder, examples, tmp_path):
    """Mechanics: a checkpoint from other settings is refused; resume=False discards it."""
    _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=2).train(examples, tmp_path / "run")
    other = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=2, learning_rate=5e-3)
    with pytest.raises(TrainingError, match="settings"):
        other.train(examples, tmp_path / "run")
    result = other.train(examples, tmp_path / "run", resume=False)
    assert result.start_step == 0 and result.steps == 2


def test_negative_term_changes_the_gradient(tiny_llm, tiny_sd, tiny_text_encoder, examples):
    """Mechanics: with negative_weight 0.5 the bridge gradient differs from the plain loss's, by the negative part."""
    grads = {}
    for weight in (0.0, 0.5):
        trainer = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, negative_weight=weight)
        loss, target_loss, negative_loss = trainer.micro_batch_loss(examples[:2], torch.Generator().manual_seed(0))
        loss.backward()
        grads[weight] = trainer.adapter.bridge.weight.grad.clone()
        if weight:
            assert negative_loss.item() > 0
            assert loss.item() == pytest.approx(target_loss.item() - 0.5 * negative_loss.item(), rel=1e-5)
    assert not torch.allclose(grads[0.0], grads[0.5])


def test_wrong_width_adapter_is_refused(tiny_llm, tiny_sd, tiny_text_encoder):
    """Mechanics: an adapter built for a 768-wide text encoder cannot train against a 32-wide one."""
    wide = SoftPromptAdapter.untrained(tiny_llm, 768, num_image_tokens=2, num_prefix=2)
    with pytest.raises(AdapterMismatchError, match="768"):
        _trainer(tiny_llm, tiny_sd, tiny_text_encoder, adapter=wide)


def test_bad_examples_are_refused(tiny_llm, tiny_sd, tiny_text_encoder, examples, tmp_path):
    """Mechanics: no examples -> TrainingError; a missing image -> MissingImageError before any step."""
    trainer = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=1)
    with pytest.raises(TrainingError, match="No training examples"):
        trainer.train([], tmp_path / "a")
    broken = [examples[0].__class__(**{**examples[0].__dict__, "target_image": tmp_path / "gone.png"})]
    with pytest.raises(MissingImageError, match="gone.png"):
        trainer.train(broken, tmp_path / "b")
    assert not (tmp_path / "b" / "loss.csv").exists()


def test_image_encoding_before_the_first_step_reports_progress_and_can_be_interrupted(
    tiny_llm, tiny_sd, tiny_text_encoder, examples, tmp_path
):
    """Mechanics: while the images are encoded (minutes on a CPU at 512 px) the progress callback is
    called with "0 steps done" after each image, so a Cancel stops training before any UNet step."""

    class Stop(Exception):
        pass

    calls = []

    def cancel_during_encoding(done, total):
        calls.append((done, total))
        if len(calls) == 2:
            raise Stop

    trainer = _trainer(tiny_llm, tiny_sd, tiny_text_encoder, max_steps=3)
    unet_calls = []
    unet = trainer.noise_predictor
    trainer.noise_predictor = lambda *args: unet_calls.append(1) or unet(*args)
    with pytest.raises(Stop):
        trainer.train(examples, tmp_path / "cancelled", progress=cancel_during_encoding)
    assert calls == [(0, 3), (0, 3)]
    assert unet_calls == [], "no training step may start after a Cancel during encoding"


def test_train_adapter_assembles_the_run_and_owns_the_checkpoint_policy(
    tiny_llm, tiny_sd, tiny_text_encoder, examples, tmp_path
):
    """Mechanics: the one entry point of the node and `pmg train` builds the adapter (k, m, seed) and the trainer;
    an existing checkpoint is continued ('resume'), discarded ('restart') or refused before training ('refuse')."""
    generator = FrozenGenerator(
        tiny_text_encoder, DiffusersNoisePredictor(tiny_sd.unet), DiffusersLatentEncoder(tiny_sd.vae),
        NoiseSchedule.from_scheduler(tiny_sd.scheduler), "tiny-sd@test",
    )
    settings = dict(batch_size=2, grad_accum=1, resolution=RESOLUTION, learning_rate=1e-2, seed=3)
    run = tmp_path / "run"
    first = train_adapter(tiny_llm, generator, examples, run, TrainConfig(max_steps=2, **settings),
                          num_image_tokens=3, num_prefix=2, existing="refuse")
    assert (first.start_step, first.steps) == (0, 2)
    assert first.adapter.config.num_image_tokens == 3 and first.adapter.config.generator == "tiny-sd@test"
    assert load_adapter(first.adapter_path, llm=tiny_llm, text_dim=tiny_text_encoder.width).config.num_prefix == 2
    # the same run, longer: continued from its checkpoint
    resumed = train_adapter(tiny_llm, generator, examples, run, TrainConfig(max_steps=3, **settings),
                            num_image_tokens=3, num_prefix=2, existing="resume")
    assert (resumed.start_step, resumed.steps) == (2, 3)
    with pytest.raises(TrainingError, match="already holds a training checkpoint"):
        train_adapter(tiny_llm, generator, examples, run, TrainConfig(max_steps=3, **settings), existing="refuse")
    restarted = train_adapter(tiny_llm, generator, examples, run, TrainConfig(max_steps=1, **settings),
                              num_image_tokens=3, num_prefix=2, existing="restart")
    assert (restarted.start_step, restarted.steps) == (0, 1)
    assert len(read_loss_csv(run / "loss.csv")) == 1
    with pytest.raises(InvalidSettingError, match="'resume'"):
        train_adapter(tiny_llm, generator, examples, run, TrainConfig(max_steps=1, **settings), existing="continue")


def test_default_checkpoint_interval_is_a_quarter_of_the_run_at_most_50():
    """The library's checkpoint policy (was the node's): every quarter of the run, between 1 and 50 steps."""
    assert [checkpoint_interval(n) for n in (1, 3, 8, 200, 10_000)] == [1, 1, 2, 50, 50]
    TrainConfig(checkpoint_every=None).validate()
    with pytest.raises(InvalidSettingError):
        TrainConfig(checkpoint_every=0).validate()


def test_flow_matching_schedule_mixes_image_and_noise_and_targets_the_velocity():
    """Rectified flow: x_t = (1 - s) x0 + s eps along the given sigma table, target eps - x0; bad tables refused."""
    schedule = FlowMatchingSchedule(torch.tensor([0.25, 0.5, 1.0]))
    x0, eps = torch.full((2, 1, 2, 2), 2.0), torch.full((2, 1, 2, 2), -1.0)
    noisy = schedule.add_noise(x0, eps, torch.tensor([0, 2]))
    assert noisy[0].unique().tolist() == [0.75 * 2 - 0.25] and noisy[1].unique().tolist() == [-1.0]
    assert schedule.target(x0, eps, torch.tensor([0, 1])).unique().tolist() == [-3.0]
    assert schedule.num_train_timesteps == 3
    for bad in ([0.5], [0.0, 0.5], [0.5, 1.5]):
        with pytest.raises(InvalidSettingError):
            FlowMatchingSchedule(torch.tensor(bad))


def test_a_family_without_pooled_text_trains_with_a_three_argument_predictor(
    tiny_llm, tiny_sd, tiny_text_encoder, examples, tmp_path
):
    """Mechanics: a text encoder without a pooled output (the sticker generator's MiniLM) and a predictor that takes
    (noisy, timesteps, cond) only (the sticker denoiser's) still train: the pooled vector is passed only when there is one."""
    from pmg_core.conditioning import EncodedText

    class NoPooled:
        width = tiny_text_encoder.width

        def encode(self, texts):
            return EncodedText(tiny_text_encoder.encode(texts).embeddings, None)

    unet = DiffusersNoisePredictor(tiny_sd.unet)

    class ThreeArguments:
        device = unet.device

        def __call__(self, noisy, timesteps, cond):
            return unet(noisy, timesteps, cond)

    adapter = SoftPromptAdapter.untrained(tiny_llm, tiny_text_encoder.width, num_image_tokens=2, num_prefix=2, seed=0)
    trainer = SoftPromptTrainer(
        tiny_llm, adapter, NoPooled(), ThreeArguments(), DiffusersLatentEncoder(tiny_sd.vae),
        NoiseSchedule.from_scheduler(tiny_sd.scheduler),
        TrainConfig(batch_size=2, grad_accum=1, resolution=RESOLUTION, learning_rate=1e-2, max_steps=1),
    )
    result = trainer.train(examples, tmp_path / "run")
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.final_loss))
