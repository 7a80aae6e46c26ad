"""The sticker generator's data and training loop: fixed split, captions, deterministic resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pmg_core.errors import InvalidSettingError, TrainingError
from pmg_core.sticker_model import dataset
from pmg_core.sticker_model.stages import StageConfig, StageRun
from pmg_core.training.loss_log import read_loss_csv

SHIPPED_GENERATOR = Path(__file__).resolve().parents[1] / "models" / "generators" / "pmg-sticker-generator.safetensors"


def test_split_is_fixed_by_base_emoji_and_holds_out_about_a_tenth():
    trained, held_out = dataset.split()
    assert 0.07 < len(held_out) / (len(trained) + len(held_out)) < 0.14
    held_bases = {image.base for image in held_out}
    assert held_bases.isdisjoint({image.base for image in trained})  # skin tones never leak across
    assert all(dataset.is_held_out(base) for base in held_bases)
    assert {image.category for image in held_out} <= set(dataset.CATEGORIES)


def test_skin_tone_variants_are_named_by_their_tone():
    images = dataset.emoji_images()
    toned = [image for image in images if image.unified != image.base]
    assert toned and all("skin tone" in image.name for image in toned)
    assert len({image.png for image in images}) == len(images)


def test_captions_carry_the_name_the_sticker_prompt_and_the_theme():
    image = next(i for i in dataset.emoji_images() if i.name == "cat face")
    captions = dataset.captions(image)
    assert captions[0] == "cat face"
    assert captions[1].startswith(dataset.STICKER_PREFIX) and captions[1].endswith("cat face")
    assert captions[2] == "cat face, animal mammal" and captions[3] == "animal mammal, animals & nature"
    texts, index = dataset.caption_table([image, image])
    assert index.shape == (2, 4) and torch.equal(index[0], index[1]) and len(texts) == len(set(captions))


def test_images_are_on_white_at_the_asked_size():
    image = dataset.emoji_images()[0]
    pixels = dataset.image_tensor([image], 64)
    assert pixels.shape == (1, 3, 64, 64)
    assert torch.allclose(pixels[0, :, 0, 0], torch.ones(3))  # a transparent corner becomes white
    with pytest.raises(InvalidSettingError, match="multiple of 8"):
        dataset.image_tensor([image], 60)


class _Interrupt(Exception):
    pass


def _toy_run(folder, steps=6):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    data = torch.randn(32, 3)
    config = StageConfig(steps=steps, batch_size=4, learning_rate=0.05, warmup_steps=2)
    return StageRun("toy", folder, model, config, {"data": "toy"}), data


def _loss(data, stop_after=None, calls=None):
    def loss(model, rng):
        if stop_after is not None and calls is not None:
            calls.append(1)
            if len(calls) > stop_after:
                raise _Interrupt()
        rows = torch.randint(0, data.shape[0], (4,), generator=rng)
        return (model(data[rows]) - data[rows].sum(1, keepdim=True)).pow(2).mean()

    return loss


def test_an_interrupted_run_resumes_into_the_same_loss_curve_and_weights(tmp_path):
    straight, data = _toy_run(tmp_path / "straight")
    straight.restore()
    straight.run(_loss(data), deadline=None, checkpoint_seconds=1e9)

    first, data = _toy_run(tmp_path / "resumed")
    first.restore()
    with pytest.raises(_Interrupt):
        first.run(_loss(data, stop_after=3, calls=[]), deadline=None, checkpoint_seconds=1e9)
    assert first.step == 3  # the checkpoint written on the way out
    second, data = _toy_run(tmp_path / "resumed")
    second.restore()
    assert second.step == 3
    second.run(_loss(data), deadline=None, checkpoint_seconds=1e9)

    rows_a = read_loss_csv(tmp_path / "straight" / "loss.csv")
    rows_b = read_loss_csv(tmp_path / "resumed" / "loss.csv")
    assert [r["step"] for r in rows_b] == list(range(1, 7))
    assert [r["loss"] for r in rows_a] == pytest.approx([r["loss"] for r in rows_b], rel=1e-6)
    for a, b in zip(straight.ema.parameters(), second.ema.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert (tmp_path / "resumed" / "loss.png").is_file()


def test_a_checkpoint_of_another_run_is_refused(tmp_path):
    run, data = _toy_run(tmp_path)
    run.restore()
    run.run(_loss(data), deadline=None, checkpoint_seconds=1e9)
    other, _ = _toy_run(tmp_path, steps=9)
    with pytest.raises(TrainingError, match="steps"):
        other.restore()


def test_a_deadline_in_the_past_stops_before_any_step(tmp_path):
    run, data = _toy_run(tmp_path)
    run.restore()
    run.run(_loss(data), deadline=0.0, checkpoint_seconds=1e9)
    assert run.step == 0 and not run.done


def test_stage_settings_are_checked():
    with pytest.raises(InvalidSettingError, match="steps"):
        StageConfig(steps=0, batch_size=1, learning_rate=0.1).validate("toy")
    with pytest.raises(InvalidSettingError, match="learning rate"):
        StageConfig(steps=1, batch_size=1, learning_rate=3.0).validate("toy")


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    config = StageConfig(steps=100, batch_size=1, learning_rate=1.0, warmup_steps=10)
    assert config.lr_at(0) == pytest.approx(0.1)
    assert config.lr_at(9) == pytest.approx(1.0)
    assert config.lr_at(99) == pytest.approx(0.1, abs=1e-3)


def test_min_snr_weights_are_one_at_high_noise_and_gamma_over_snr_below_it():
    from pmg_core.sticker_model.sampling import alphas_cumprod
    from pmg_core.sticker_model.stages import min_snr_weights

    acp = alphas_cumprod()
    snr = (acp / (1 - acp)).float()
    weights = min_snr_weights(5.0)
    assert weights.shape == (1000,)
    noisy = snr <= 5
    assert noisy.any() and (~noisy).any()  # the schedule crosses γ: both branches are exercised
    assert torch.equal(weights[noisy], torch.ones(int(noisy.sum())))
    assert torch.allclose(weights[~noisy], 5 / snr[~noisy])
    with pytest.raises(InvalidSettingError, match="γ"):
        min_snr_weights(0.0)


def test_min_snr_loss_only_ever_lowers_a_samples_weight():
    """Same draw of rows, captions, noise and timesteps: γ above every SNR is the uniform loss; γ = 5 is below it."""
    from pmg_core.sticker_model.stages import denoiser_loss

    torch.manual_seed(0)
    latents, states, empty = torch.randn(6, 16, 8, 8), torch.randn(3, 4, 384), torch.randn(4, 384)
    index = torch.randint(0, 3, (6, 2))  # two of the three captions for each latent
    model = _ConstantDenoiser()

    def loss(gamma):
        return denoiser_loss(latents, states, index, empty, 32, min_snr_gamma=gamma)(model, torch.Generator().manual_seed(1))

    uniform = loss(None).item()
    assert loss(1e9).item() == pytest.approx(uniform, rel=1e-5)
    assert loss(5.0).item() < uniform


class _ConstantDenoiser(nn.Module):
    """Predicts a learned constant: enough for the loss to have a value and a gradient."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.full((1, 16, 1, 1), 0.5))

    def forward(self, x, timesteps, context):
        return torch.zeros_like(x) + self.bias


def test_a_warm_start_keeps_the_autoencoder_and_trains_the_shipped_denoiser_further(tmp_path, monkeypatch):
    """``init_from``: the file's autoencoder (and its latent normalisation) is kept bit for bit, its denoiser
    goes on training from its own weights (not from a random start), and the new file says where it came from."""
    import json
    from dataclasses import replace

    from safetensors.torch import load_file

    from pmg_core.sticker_model import run
    from pmg_core.sticker_model.weights import read_sticker_model_file

    shipped = SHIPPED_GENERATOR
    trained, _ = dataset.split()
    monkeypatch.setattr(run, "split", lambda: (trained[:8], []))  # 8 images: seconds, not minutes
    config = run.StickerTrainingConfig()
    config.denoiser = replace(config.denoiser, steps=2, batch_size=4, warmup_steps=1)

    path = run.train_sticker_model(tmp_path / "warm", config, init_from=shipped)

    before, after = load_file(str(shipped)), load_file(str(path))
    autoencoder_keys = [k for k in before if k.startswith("autoencoder.")]
    assert autoencoder_keys and all(torch.equal(before[k], after[k]) for k in autoencoder_keys)
    first_loss = read_loss_csv(tmp_path / "warm" / "denoiser" / "loss.csv")[0]["loss"]
    assert first_loss < 0.3  # a random denoiser starts near 1.1 (docs/generator/denoiser_loss.csv)
    training = json.loads(read_sticker_model_file(path)[2]["training"])
    previous = json.loads(read_sticker_model_file(shipped)[2]["training"])["denoiser_steps"]
    assert training["warm_start"]["denoiser_steps"] == previous and training["denoiser_steps"] == previous + 2

    with pytest.raises(TrainingError, match="init_from"):  # the same folder without the warm start is another run
        run.train_sticker_model(tmp_path / "warm", replace(config, denoiser=replace(config.denoiser, steps=3)))


def test_the_validation_tenth_is_fixed_by_base_emoji_and_never_holds_held_out_emoji():
    trained, held_out = dataset.split()
    fit, validation = dataset.validation_slice(trained)
    assert len(fit) + len(validation) == len(trained) and 0.05 < len(validation) / len(trained) < 0.16
    assert {i.base for i in validation}.isdisjoint({i.base for i in fit})  # skin tones stay on one side
    assert {i.base for i in validation}.isdisjoint({i.base for i in held_out})
    assert dataset.validation_slice(trained) == (fit, validation)


def test_decoder_finetuning_trains_only_the_decoder_and_ships_the_best_validated_one(tmp_path):
    """--finetune-decoder: encoder, latent normalisation and denoiser stay bit for bit the file's; the decoder
    trains; the exported decoder is the validation's best (the starting decoder included), and a rerun resumes."""
    import csv
    import json

    from pmg_core.sticker_model.decoder_finetune import DecoderFinetuneConfig, finetune_decoder
    from pmg_core.sticker_model.weights import read_sticker_model_file

    shipped = SHIPPED_GENERATOR
    fit, validation = dataset.validation_slice(dataset.split()[0])
    emoji = (fit[:8], validation[:4])  # a few images: seconds, not minutes
    config = DecoderFinetuneConfig(stage=StageConfig(steps=4, batch_size=2, learning_rate=1e-3, warmup_steps=1))
    with pytest.raises(TrainingError, match="no validated decoder"):
        finetune_decoder(tmp_path, shipped, config, export_only=True)

    path = finetune_decoder(tmp_path, shipped, config, checkpoint_minutes=1e3, validate_every=2, emoji=emoji)

    old_autoencoder, old_denoiser, _ = read_sticker_model_file(shipped)
    new_autoencoder, new_denoiser, metadata = read_sticker_model_file(path)
    assert all(torch.equal(old_denoiser[k], new_denoiser[k]) for k in old_denoiser)
    frozen = [k for k in old_autoencoder if not k.startswith("taesd_decoder.")]
    assert "vae_scale" in frozen and all(torch.equal(old_autoencoder[k], new_autoencoder[k]) for k in frozen)
    with open(tmp_path / "decoder" / "validation.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(int(r["step"]), r["weights"]) for r in rows] == [(0, "live"), (2, "live"), (2, "ema"), (4, "live"), (4, "ema")]
    best = min(rows, key=lambda r: float(r["lpips_alex"]))
    chosen = json.loads(metadata["training"])["decoder_finetune"]["chosen"]
    assert (chosen["step"], chosen["weights"]) == (int(best["step"]), best["weights"])
    decoder_changed = any(not torch.equal(old_autoencoder[k], new_autoencoder[k]) for k in old_autoencoder if k not in frozen)
    assert decoder_changed == (chosen["step"] > 0)
    assert len(read_loss_csv(tmp_path / "decoder" / "loss.csv")) == 4

    again = finetune_decoder(tmp_path, shipped, config, validate_every=2, emoji=emoji)  # done: nothing retrains
    assert len(read_loss_csv(tmp_path / "decoder" / "loss.csv")) == 4 and again == path
