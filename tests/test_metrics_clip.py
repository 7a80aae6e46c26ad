"""CLIPScorer mechanics on a tiny random CLIP saved to a folder.

No CLIP weights exist offline, so these tests check loading, preprocessing,
batching, shapes and errors only; the similarities of a random model mean nothing.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from pmg_core.assets import clip_tokenizer_dir
from pmg_core.errors import ImageValueError, ModelLoadError
from pmg_core.metrics import CLIPScorer


def test_from_folder_uses_the_real_clip_tokenizer(tiny_clip):
    assert tiny_clip.tokenizer("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tiny_clip.crop_size == 32


def test_image_text_shapes_range_and_consistency(tiny_clip):
    images = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    texts = ["a cat", "a movie poster of a spaceship", "a cute emoji sticker"]
    table = tiny_clip.image_text(images, texts)
    assert table.shape == (3, 3)
    assert float(table.abs().max()) <= 1.0 + 1e-5
    expected = tiny_clip.embed_images(images) @ tiny_clip.embed_texts(texts).T
    assert torch.allclose(table, expected, atol=1e-6)
    # One image scored alone gets the same row as in the batch.
    assert torch.allclose(tiny_clip.image_text(images[1:2], texts)[0], table[1], atol=1e-5)
    score = tiny_clip.clip_score(images, texts)
    assert torch.allclose(score, 100 * table.clamp(min=0), atol=1e-4)


def test_preprocessing_resizes_short_side_and_centre_crops(tiny_clip):
    pixels = tiny_clip._pixels(torch.ones(2, 3, 30, 90))
    assert pixels.shape == (2, 3, 32, 32)
    expected = (1 - tiny_clip.mean) / tiny_clip.std
    assert torch.allclose(pixels, expected.expand_as(pixels), atol=1e-4)


def test_bad_images_are_refused(tiny_clip):
    with pytest.raises(ImageValueError):
        tiny_clip.image_text(torch.rand(3, 32, 32), ["x"])


def test_folder_errors_are_clear(tmp_path, tiny_clip_dir):
    with pytest.raises(ModelLoadError, match="does not exist"):
        CLIPScorer.from_folder(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        CLIPScorer.from_folder(empty)
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        CLIPScorer.from_folder(garbage)
    (garbage / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not a CLIP model"):
        CLIPScorer.from_folder(garbage)
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(tiny_clip_dir / "config.json", no_weights / "config.json")
    (no_weights / "pytorch_model.bin").write_bytes(b"pickled")
    with pytest.raises(ModelLoadError, match="safetensors"):
        CLIPScorer.from_folder(no_weights)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(tiny_clip_dir / "config.json", corrupt / "config.json")
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="Cannot load the CLIP weights"):
        CLIPScorer.from_folder(corrupt)


def test_missing_tokenizer_and_the_tokenizer_dir_fallback(tmp_path, tiny_clip_dir):
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_clip_dir / name, weights_only / name)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        CLIPScorer.from_folder(weights_only)
    scorer = CLIPScorer.from_folder(weights_only, tokenizer_dir=clip_tokenizer_dir())
    assert scorer.embed_texts(["a dog"]).shape == (1, 16)
