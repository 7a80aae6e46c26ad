"""The library's ``TextEncoder`` protocol over ComfyUI's ``CLIP`` object.

ComfyUI's CLIP wraps SD1.x (CLIP-L), SD2.x (OpenCLIP-H), SDXL (CLIP-L + CLIP-G),
SD3 (CLIP-L + CLIP-G padded to 4096, + T5-XXL) and Flux (T5-XXL tokens, CLIP-L
pooled) behind one ``tokenize`` / ``encode_from_tokens`` pair, so this adapter
works for all of them: the width is read from an encoded empty prompt, never
assumed (tests/test_model_families.py runs each family's real classes, shrunk).
"""

from __future__ import annotations

import weakref

import torch

from ..pmg_core.conditioning import EncodedText, tile_to_length
from ..pmg_core.errors import EmbeddingValueError


def escape_prompt_weights(text: str) -> str:
    """Escape ``(`` and ``)`` so ComfyUI reads LLM keywords literally.

    ComfyUI's tokenizer treats ``(word:1.2)`` and ``(word)`` as emphasis; a keyword
    the LLM wrote with brackets ("noir (1940s)") must not silently change weights,
    and the diffusers encoder of the library reads brackets literally too.
    """
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _check_extras(extras: dict, shape: tuple) -> None:
    """Refuse what a PMG condition cannot carry, in one message naming it and the way out.

    PMG's condition concatenates target | soft | preference tokens and keeps only the
    target's ``pooled_output``. An ``attention_mask`` of all ones (no padding masked,
    e.g. SD3's T5 mask of a full window, an LLM encoder's unpadded prompt) means the
    same as no mask and is dropped. A mask that hides padding cannot be dropped:
    families that read it (Chroma, HunyuanDiT, Lumina 2 / Z-Image...) would then
    attend to padding they were not trained to see.
    """
    mask = extras.pop("attention_mask", None)
    if mask is not None and not bool((mask != 0).all()):
        masked = int((mask == 0).sum())
        raise EmbeddingValueError(
            f"This text encoder returns an attention mask that hides {masked} padding token(s) of a "
            f"{shape[1] if len(shape) > 1 else '?'}-token prompt; PMG Conditioning concatenates target, soft and "
            "preference tokens and cannot carry per-token masks. Load the text encoder without attention masks "
            "(e.g. SD3's T5 without t5_attention_mask), or use a family PMG supports: SD1.x, SD2.x, SDXL, SD3, Flux."
        )
    unknown = sorted(key for key in extras if key not in _DROPPABLE)
    if unknown:
        raise EmbeddingValueError(
            f"This text encoder adds {', '.join(unknown)} to its condition, which PMG Conditioning cannot carry "
            "(its condition holds the concatenated tokens and the target's pooled_output only). Use a family "
            "PMG supports: SD1.x, SD2.x, SDXL, SD3, Flux."
        )


# Extra keys of ComfyUI's encode_from_tokens(return_dict=True) that carry nothing per prompt.
_DROPPABLE = frozenset({"hooks"})

# Token width of each loaded text-encoder module; weak keys, so an unloaded checkpoint's entry goes with it.
_WIDTHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ComfyTextEncoder:
    """A :class:`pmg_core.conditioning.TextEncoder` backed by a ComfyUI ``CLIP``.

    ``encode`` returns ``[B, T, D]`` token embeddings and ``[B, P]`` pooled vectors
    exactly as ComfyUI's own CLIPTextEncode computes them (prompts longer than one
    77-token window give ``T = 77·n``). Texts of a batch that end up with different
    lengths are brought to the longest by repeating whole windows, which leaves
    cross-attention unchanged.
    """

    def __init__(self, clip, escape_weights: bool = True):
        if clip is None or not hasattr(clip, "tokenize") or not hasattr(clip, "encode_from_tokens"):
            raise EmbeddingValueError(
                "The clip input is not a ComfyUI CLIP model; connect the CLIP output of a checkpoint loader."
            )
        self.clip = clip
        self.escape_weights = escape_weights
        self._width: int | None = None

    @property
    def width(self) -> int:
        """D, the width of the text encoder's token embeddings (768, 1024, 2048...)."""
        if self._width is None:
            model = getattr(self.clip, "cond_stage_model", None)
            self._width = _WIDTHS.get(model) if model is not None else None
            if self._width is None:
                self._width = int(self._encode_one("")[0].shape[-1])
                self._remember_width()
        return self._width

    def _remember_width(self) -> None:
        # A returning user's Soft Prompt Encoder needs only the width (its embeddings are cached):
        # reading it from the loaded text encoder's last encoding saves a whole CLIP pass per prompt.
        model = getattr(self.clip, "cond_stage_model", None)
        if model is not None and self._width is not None:
            _WIDTHS[model] = self._width

    def _encode_one(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        prompt = escape_prompt_weights(text) if self.escape_weights else text
        # return_dict: what CLIPTextEncode puts in the condition (pooled_output and any extra keys).
        out = self.clip.encode_from_tokens(self.clip.tokenize(prompt), return_pooled=True, return_dict=True)
        cond, pooled = out.pop("cond"), out.pop("pooled_output", None)
        _check_extras(out, tuple(cond.shape))
        if cond.ndim != 3 or cond.shape[0] != 1:
            raise EmbeddingValueError(
                f"ComfyUI's CLIP returned a condition of shape {tuple(cond.shape)} for one prompt; "
                "expected [1, T, D]. This CLIP model is not supported by PMG (use an SD1.x, SD2.x, SDXL, SD3 or Flux "
                "text encoder)."
            )
        if pooled is not None:
            pooled = pooled.reshape(1, -1)
        return cond, pooled

    @torch.no_grad()
    def encode(self, texts: list[str]) -> EncodedText:
        if isinstance(texts, str):
            raise TypeError("ComfyTextEncoder.encode takes a list of texts, not a single string.")
        encoded = [self._encode_one(text) for text in texts]
        if not encoded:
            raise EmbeddingValueError("ComfyTextEncoder.encode needs at least one text; pass a list of one or more prompts.")
        self._width = int(encoded[0][0].shape[-1])
        self._remember_width()
        longest = max(cond.shape[1] for cond, _ in encoded)
        embeddings = torch.cat([tile_to_length(cond.float(), longest) for cond, _ in encoded], dim=0)
        pooled = None
        if all(p is not None for _, p in encoded):
            pooled = torch.cat([p.float() for _, p in encoded], dim=0)
        return EncodedText(embeddings, pooled)
