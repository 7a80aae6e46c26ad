"""CLIP image–text similarity from user-supplied local CLIP weights.

No CLIP weights ship in any registry package, so there is no default model:
the user points :meth:`CLIPScorer.from_folder` at a Hugging Face CLIP folder
(``config.json`` of ``model_type: clip``, ``model.safetensors``, tokenizer files,
optionally ``preprocessor_config.json``), for example a download of
``openai/clip-vit-large-patch14``. Nothing is fetched; ``local_files_only=True``.

Images are preprocessed in torch the way ``CLIPImageProcessor`` does it (resize
the shorter side bicubically, centre crop, normalise with the processor's mean
and std), so a batch stays one tensor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from .images import check_images
from .text_similarity import _check_texts

logger = logging.getLogger(__name__)

# OpenAI CLIP's normalisation, used when the folder has no preprocessor_config.json.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class CLIPScorer:
    """Cosine similarity between images and texts in a CLIP model's joint space."""

    def __init__(
        self,
        model,
        tokenizer,
        image_size: int,
        crop_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        source: Path | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_size = int(image_size)
        self.crop_size = int(crop_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.source = source
        self.max_tokens = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def from_folder(
        cls, path: str | Path, device: str | torch.device = "cpu", tokenizer_dir: str | Path | None = None
    ) -> CLIPScorer:
        """Load a local Hugging Face CLIP folder (safetensors weights only).

        ``tokenizer_dir`` supplies the tokenizer when the model folder has none
        (all OpenAI CLIP models share one vocabulary:
        :func:`pmg_core.assets.clip_tokenizer_dir` rebuilds it offline).
        Raises :class:`ModelLoadError` for a missing folder, a non-CLIP config,
        missing or non-safetensors weights, or a missing tokenizer.
        """
        from transformers import CLIPModel

        folder = Path(path)
        config = _read_config(folder)
        if config.get("model_type") != "clip":
            raise ModelLoadError(
                f"{folder}/config.json describes a {config.get('model_type')!r} model, not a CLIP model "
                "(model_type 'clip'); point this at a full CLIP folder such as openai/clip-vit-large-patch14."
            )
        if not any(folder.glob("*.safetensors")):
            raise ModelLoadError(
                f"{folder} has no .safetensors weights; only safetensors are loaded (pickled .bin files can run code). "
                "Download the model's model.safetensors or convert the .bin once in a trusted environment."
            )
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        except Exception as exc:  # corrupt files raise many kinds (OSError, SafetensorError, ...)
            reason = " ".join(str(exc).split())
            raise ModelLoadError(
                f"Cannot load the CLIP weights in {folder}: {reason}. Re-download the folder; it may be incomplete."
            ) from exc
        tokenizer = _load_tokenizer(
            Path(tokenizer_dir) if tokenizer_dir is not None else folder, model.config.text_config.vocab_size
        )
        image_size, crop_size, mean, std = _preprocessing(folder, int(model.config.vision_config.image_size))
        return cls(model, tokenizer, image_size, crop_size, mean, std, device=device, source=folder)

    def _pixels(self, images: torch.Tensor) -> torch.Tensor:
        """``[N, 3, H, W]`` in [0, 1] → normalised ``[N, 3, crop, crop]`` CLIP input."""
        height, width = images.shape[-2:]
        scale = self.image_size / min(height, width)
        size = (max(self.crop_size, round(height * scale)), max(self.crop_size, round(width * scale)))
        resized = F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        top = (size[0] - self.crop_size) // 2
        left = (size[1] - self.crop_size) // 2
        cropped = resized[..., top : top + self.crop_size, left : left + self.crop_size]
        return (cropped - self.mean) / self.std

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Unit-length image embeddings ``Tensor[N, D]`` (CPU, float32)."""
        images = check_images(images, "images")
        chunks = []
        for start in range(0, images.shape[0], batch_size):
            pixels = self._pixels(images[start : start + batch_size]).to(self.device)
            chunks.append(_pooled(self.model.get_image_features(pixel_values=pixels)))
        return F.normalize(torch.cat(chunks).float().cpu(), dim=-1)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-length text embeddings ``Tensor[M, D]`` (CPU, float32); texts over 77 tokens are truncated."""
        texts = _check_texts(texts, "texts")
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        features = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return F.normalize(_pooled(features).float().cpu(), dim=-1)

    def image_text(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of every image with every text → ``Tensor[N, M]`` in [-1, 1]."""
        return self.embed_images(images) @ self.embed_texts(texts).T

    def clip_score(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """CLIP score (Hessel et al., 2021, with w = 100): ``100 · max(cos, 0)`` → ``Tensor[N, M]``."""
        return 100.0 * self.image_text(images, texts).clamp(min=0)


def _pooled(output) -> torch.Tensor:
    """transformers ≥ 5 returns a model output whose pooler_output is the projection; 4.x a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _load_tokenizer(source: Path, vocab_size: int):
    """The tokenizer in ``source``, refusing folders without tokenizer files.

    transformers builds an empty two-token tokenizer from a bare config.json
    instead of failing, which would silently turn every text into padding.
    """
    from transformers import AutoTokenizer, CLIPTokenizer

    hint = (
        "add tokenizer.json (or vocab.json and merges.txt) to the folder, or pass "
        "tokenizer_dir=pmg_core.assets.clip_tokenizer_dir() (the vocabulary all OpenAI CLIP models share)."
    )
    has_files = (source / "tokenizer.json").is_file() or (
        (source / "vocab.json").is_file() and (source / "merges.txt").is_file()
    )
    if not has_files:
        raise ModelLoadError(f"No CLIP tokenizer files in {source}; {hint}")
    # Without tokenizer_config.json nothing names the class; bare vocab.json + merges.txt are CLIP's BPE.
    loader = AutoTokenizer if (source / "tokenizer_config.json").is_file() else CLIPTokenizer
    try:
        tokenizer = loader.from_pretrained(source, local_files_only=True)
    except Exception as exc:  # malformed tokenizer files raise many kinds
        reason = " ".join(str(exc).split())
        raise ModelLoadError(f"The CLIP tokenizer in {source} cannot be loaded ({reason}); {hint}") from exc
    if not 256 < len(tokenizer) <= vocab_size:
        raise ModelLoadError(
            f"The tokenizer in {source} has {len(tokenizer)} tokens but the CLIP text model expects up to "
            f"{vocab_size}; it belongs to another model: {hint}"
        )
    return tokenizer


def _read_config(folder: Path) -> dict:
    if not folder.is_dir():
        raise ModelLoadError(
            f"CLIP folder {folder} does not exist; download a CLIP model "
            "(config.json, model.safetensors, tokenizer) into it."
        )
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"{folder} has no config.json, so it is not a Hugging Face model folder; point this at a CLIP model folder."
        ) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{config_path} is not valid JSON ({exc}); re-download the model folder.") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} does not hold a JSON object; re-download the model folder.")
    return config


def _preprocessing(folder: Path, model_image_size: int) -> tuple[int, int, tuple[float, ...], tuple[float, ...]]:
    """(resize target of the shorter side, crop size, mean, std) from preprocessor_config.json or defaults."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        logger.info(
            "%s has no preprocessor_config.json; using OpenAI CLIP preprocessing at %d px", folder, model_image_size
        )
        return model_image_size, model_image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        size = config.get("size", model_image_size)
        crop = config.get("crop_size", size)
        size = size.get("shortest_edge", size.get("height")) if isinstance(size, dict) else size
        crop = crop.get("height", crop.get("shortest_edge")) if isinstance(crop, dict) else crop
        mean = tuple(float(v) for v in config.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(float(v) for v in config.get("image_std", OPENAI_CLIP_STD))
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("image_mean and image_std need three values")
        return int(size), int(crop), mean, std
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{path} is malformed ({exc}); delete it to use the OpenAI CLIP defaults, or re-download it."
        ) from exc
