"""Image generation from PMG conditions.

All tests run the tiny random Stable Diffusion pipeline at 64x64 with 2 steps:
they check mechanics (seeding, one image per alpha, progress, folder loading),
never image quality.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmg_core.conditioning import ConditionWeights, PMGConditions, build_conditions
from pmg_core.errors import EmbeddingValueError, InvalidSettingError, ModelLoadError
from pmg_core.sd_runner import SDRunner

TARGET = "movie poster, Heat, named 'Heat', crime, heist"
PREFERENCE = "noir, detective, thriller"
SMALL = dict(steps=2, height=64, width=64)


@pytest.fixture(scope="module")
def generator(tiny_sd) -> SDRunner:
    return SDRunner(tiny_sd)


@pytest.fixture(scope="module")
def conditions(generator) -> PMGConditions:
    soft = torch.randn(4, generator.width, generator=torch.Generator().manual_seed(0))
    return build_conditions(generator.text_encoder, TARGET, PREFERENCE, soft, ConditionWeights(), [0.2, 0.5, 0.8])


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in images]


def test_one_image_per_alpha_same_seed_identical(generator, conditions):
    first = generator.generate(conditions, negative_prompt="broken text", seed=7, **SMALL)
    again = generator.generate(conditions, negative_prompt="broken text", seed=7, **SMALL)
    assert len(first) == 3
    assert all(image.size == (64, 64) and image.mode == "RGB" for image in first)
    for a, b in zip(pixels(first), pixels(again), strict=True):
        assert np.array_equal(a, b)


def test_alphas_and_seeds_change_the_images(generator, conditions):
    images = pixels(generator.generate(conditions, seed=7, **SMALL))
    assert not np.array_equal(images[0], images[1]) and not np.array_equal(images[1], images[2])
    other_seed = pixels(generator.generate(conditions, seed=8, **SMALL))
    assert not np.array_equal(images[0], other_seed[0])


def test_every_alpha_starts_from_the_same_latent(generator, conditions):
    """Identical condition rows under different alphas give identical images: only alpha may differ."""
    row = conditions.embeddings[1:2]
    same = PMGConditions(row.expand(3, -1, -1).clone(), None, (0.1, 0.5, 0.9))
    images = pixels(generator.generate(same, seed=3, **SMALL))
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])


def test_tensor_output_matches_library_layout(generator, conditions):
    images = generator.generate_tensor(conditions, seed=7, **SMALL)
    assert images.shape == (3, 3, 64, 64)
    assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1


def test_progress_is_reported_and_can_interrupt(generator, conditions):
    calls = []
    generator.generate(conditions, seed=1, progress=lambda done, total: calls.append((done, total)), **SMALL)
    assert calls == [(0, 2), (1, 2), (2, 2)]

    class Interrupted(Exception):
        pass

    def stop(done, total):
        if done == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        generator.generate(conditions, seed=1, progress=stop, **SMALL)


def test_guidance_off_needs_no_negative(generator, conditions):
    images = generator.generate(conditions, guidance_scale=1.0, seed=2, **SMALL)
    assert len(images) == 3


def test_from_folder_loads_the_saved_pipeline(tiny_sd_folder, generator, conditions):
    loaded = SDRunner.from_folder(tiny_sd_folder)
    assert loaded.width == generator.width
    ours = pixels(generator.generate(conditions, seed=5, **SMALL))
    theirs = pixels(loaded.generate(conditions, seed=5, **SMALL))
    for a, b in zip(ours, theirs, strict=True):
        assert np.array_equal(a, b)


def test_from_folder_rejects_non_pipeline_folders(tmp_path):
    with pytest.raises(ModelLoadError, match="model_index.json"):
        SDRunner.from_folder(tmp_path)
    (tmp_path / "model_index.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelLoadError, match="Could not load"):
        SDRunner.from_folder(tmp_path)


def test_conditions_of_another_width_are_rejected(generator):
    wide = PMGConditions(torch.zeros(1, 81, 768), None, (0.5,))
    with pytest.raises(EmbeddingValueError) as excinfo:
        generator.generate(wide, **SMALL)
    assert "768" in str(excinfo.value) and "32" in str(excinfo.value)


@pytest.mark.parametrize("settings", [dict(steps=0), dict(height=60), dict(width=0), dict(guidance_scale=float("nan"))])
def test_bad_settings_are_rejected(generator, conditions, settings):
    with pytest.raises(InvalidSettingError):
        generator.generate(conditions, **{**SMALL, **settings})
