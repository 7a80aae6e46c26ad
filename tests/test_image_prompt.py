"""The image route (pmg_core/image_prompt.py): history images → frozen LPIPS features → k tokens.

Mechanics on the real LPIPS AlexNet backbone with a fresh projection and the shipped
generator's denoiser (frozen): shapes, the file round trip and its checks, the
tokens following the images, and training lowering the denoising loss on a few users.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pmg_core.errors import AdapterMismatchError, ModelLoadError
from pmg_core.image_prompt import (
    ImagePromptProjection,
    image_features,
    load_image_prompt,
    save_image_prompt,
    train_projection,
    validation_loss,
)
from pmg_core.metrics.lpips import LPIPS

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "image_prompts" / "pmg-sticker-image-prompt.safetensors"


@pytest.fixture(scope="module")
def lpips():
    return LPIPS("alex")


def _images(colour: tuple[float, float, float], n: int = 3) -> torch.Tensor:
    images = torch.ones(n, 3, 64, 64)
    images[:, :, 16:48, 16:48] = torch.tensor(colour)[:, None, None]
    return images


def test_projection_turns_history_images_into_tokens_that_follow_them(lpips, tmp_path):
    torch.manual_seed(0)
    projection = ImagePromptProjection(1152, tokens=4, width=384, scale=0.5)
    path = save_image_prompt(tmp_path / "p.safetensors", projection, {"image_size": 64})
    prompt = load_image_prompt(path, lpips, width=384)
    red, blue = prompt.encode(_images((1, 0, 0))), prompt.encode(_images((0, 0, 1)))
    assert red.shape == (1, 4, 384) and torch.isfinite(red).all()
    assert (red - blue).abs().mean() > 1e-3
    # A 256 px batch (what the history loader outputs) is read at the trained size: nearly the same tokens.
    big = torch.nn.functional.interpolate(_images((1, 0, 0)), size=256, mode="nearest")
    assert (prompt.encode(big) - red).abs().mean() < 0.25 * (red - blue).abs().mean()
    assert torch.allclose(projection(image_features(lpips, _images((1, 0, 0)))), red, atol=1e-5)


def test_projection_files_are_checked(lpips, tmp_path):
    path = save_image_prompt(tmp_path / "p.safetensors", ImagePromptProjection(1152, 2, 384), {})
    with pytest.raises(AdapterMismatchError, match="384-wide"):
        load_image_prompt(path, lpips, width=768)
    with pytest.raises(ModelLoadError, match="train-image-prompt"):
        load_image_prompt(tmp_path / "missing.safetensors", lpips)
    with pytest.raises(ModelLoadError, match="not an image prompt"):
        load_image_prompt(REPO / "models" / "judges" / "pmg-sticker-judge.safetensors", lpips)


def test_training_lowers_the_denoising_loss_on_train_users(lpips):
    from pmg_core.evaluation.cases import image_prompt_examples
    from pmg_core.sticker_model.sampling import add_noise
    from pmg_core.sticker_model.text_encoder import MiniLMTextEncoder
    from pmg_core.sticker_model.weights import load_sticker_model
    from pmg_core.loaders.stickers import build_sticker_histories

    generator = load_sticker_model(REPO / "models" / "generators" / "pmg-sticker-generator.safetensors")
    examples = image_prompt_examples(generator, MiniLMTextEncoder(), lpips, build_sticker_histories(n_users=4, seed=0))
    torch.manual_seed(0)
    projection = ImagePromptProjection(1152, 4, 384, scale=0.3)
    before = [p.detach().clone() for p in generator.denoiser.parameters()]
    denoiser = generator.denoiser.float()
    result = train_projection(projection, examples, denoiser, add_noise, steps=40, learning_rate=3e-3, batch_size=4,
                              validation=examples[:2], validate_every=10)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])
    assert [step for step, _ in result.validation] == [0, 10, 20, 30, 40]
    best_step, best_loss = min(result.validation, key=lambda row: row[1])
    assert result.best_step == best_step and best_loss < result.validation[0][1]
    # the projection ends with its best validated weights (the fixed-noise loss is reproducible)
    assert validation_loss(projection, examples[:2], denoiser, add_noise) == pytest.approx(best_loss, rel=1e-5)
    # the generator stays frozen
    assert all(torch.equal(a, b) for a, b in zip(before, generator.denoiser.parameters(), strict=True))


def test_the_shipped_projection_fits_the_sticker_generator(lpips):
    prompt = load_image_prompt(SHIPPED, lpips, width=384)
    assert prompt.metadata["split"] == "train" and prompt.projection.tokens >= 1
