"""Assemble PMG's diffusion condition: target text + soft embeddings + preference text.

PMG conditions the image model on one token sequence made of three parts,
concatenated along the token axis::

    [ target-keyword embeddings | soft preference embeddings | preference-keyword embeddings ]
      scaled w_t * 2(1 - a)        scaled w_i * 2a              scaled w_p * 2a

The balance ``a`` (alpha, in [0, 1]) trades accuracy to the target for
personalisation: a = 0.5 is the plain concatenation, a = 0 ignores the user,
a = 2/3 reproduces the reference's preference weight W_P = 2. One condition row
is built per alpha, so an alpha sweep is one batch of ``[A, T_total, D]``.

The text encoder is injected through the small :class:`TextEncoder` protocol:
:class:`DiffusersTextEncoder` wraps a diffusers/transformers CLIP text model and
the ComfyUI nodes wrap ComfyUI's CLIP object the same way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from .alphas import MAX_ALPHAS, parse_alphas, validate_alphas
from .errors import AdapterMismatchError, EmbeddingValueError, InvalidSettingError

logger = logging.getLogger(__name__)

__all__ = [
    "MAX_ALPHAS",
    "MAX_TEXT_WINDOWS",
    "MAX_TEXT_WINDOWS_LIMIT",
    "WEIGHTINGS",
    "WINDOW_TOKENS",
    "ConditionWeights",
    "DiffusersTextEncoder",
    "EncodedText",
    "PMGConditions",
    "TextEncoder",
    "build_conditions",
    "check_finite",
    "check_text_length",
    "negative_conditions",
    "parse_alphas",
    "tile_to_length",
    "validate_alphas",
]


class EncodedText(NamedTuple):
    """A text encoder's output for a batch of texts."""

    embeddings: Tensor  # [B, T, D]: per-token hidden states (what the UNet cross-attends to)
    pooled: Tensor | None  # [B, P]: one vector per text (SDXL needs it; SD1.x/2.x ignore it)


@runtime_checkable
class TextEncoder(Protocol):
    """What PMG needs from a diffusion model's text encoder."""

    width: int  # D: 768 SD1.x, 1024 SD2.x, 2048 SDXL, 4096 SD3 / Flux (T5-XXL)

    def encode(self, texts: list[str]) -> EncodedText: ...


class DiffusersTextEncoder:
    """A :class:`TextEncoder` over a transformers CLIP text model, as diffusers' SD pipelines use it.

    Texts are padded/truncated to the tokenizer's ``model_max_length`` (77 for
    CLIP), and the condition is the last hidden state, exactly as
    ``StableDiffusionPipeline.encode_prompt`` computes it without ``clip_skip``.
    """

    def __init__(self, tokenizer, text_encoder: torch.nn.Module):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        # The width comes from the model itself: never assume 768 (the reference's SD2.1 bug).
        self.width: int = int(text_encoder.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: list[str]) -> EncodedText:
        if isinstance(texts, str):
            raise TypeError("DiffusersTextEncoder.encode takes a list of texts, not a single string.")
        tokens = self.tokenizer(
            list(texts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.text_encoder.parameters()).device
        attention_mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            attention_mask = tokens.attention_mask.to(device)
        output = self.text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)
        pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            pooled = getattr(output, "text_embeds", None)
        return EncodedText(output.last_hidden_state, pooled)


@dataclass
class ConditionWeights:
    """The fixed weights (w_t, w_i, w_p) of the three condition parts, before the alpha scaling."""

    target: float = 1.0
    soft: float = 1.0
    preference: float = 1.0

    def validate(self) -> None:
        for name, value in (("target", self.target), ("soft", self.soft), ("preference", self.preference)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidSettingError(
                    f"The {name} condition weight is {value!r}; weights must be finite numbers >= 0 "
                    f"(1.0 keeps the part as encoded, 0 removes its influence)."
                )


@dataclass
class PMGConditions:
    """One diffusion condition per alpha, ready for ``prompt_embeds=``."""

    embeddings: Tensor  # [A, T_total, D], one row per alpha
    pooled: Tensor | None  # [A, P]: the target text's pooled vector, repeated per alpha
    alphas: tuple[float, ...]
    # (part name, token count) in sequence order, e.g. (("target", 77), ("soft", 4), ("preference", 77)).
    segments: tuple[tuple[str, int], ...] = ()

    @property
    def num_tokens(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def width(self) -> int:
        return int(self.embeddings.shape[2])


def check_finite(tensor: Tensor, what: str, fix: str) -> None:
    """Raise :class:`EmbeddingValueError` if ``tensor`` holds NaN or inf."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).sum())
        raise EmbeddingValueError(f"{what} holds {bad} NaN/inf value(s); {fix}")


def _soft_as_batch(soft: Tensor, width: int) -> Tensor:
    """Normalise soft embeddings to ``[1, k, D]`` and check them against the encoder width."""
    if not isinstance(soft, Tensor):
        raise EmbeddingValueError(f"Soft embeddings must be a torch tensor, got {type(soft).__name__}.")
    if soft.ndim == 2:
        soft = soft.unsqueeze(0)
    if soft.ndim != 3 or soft.shape[0] != 1 or soft.shape[1] == 0:
        raise EmbeddingValueError(
            f"Soft embeddings have shape {tuple(soft.shape)}; expected [k, D] or [1, k, D] for one user "
            f"(the output of SoftPromptAdapter.encode for a single text)."
        )
    if soft.shape[-1] != width:
        raise AdapterMismatchError(
            f"The soft embeddings are {soft.shape[-1]}-wide but this checkpoint's text encoder is "
            f"{width}-wide; use a soft-prompt adapter trained for this checkpoint family "
            f"(768 SD1.x, 1024 SD2.x, 2048 SDXL, 4096 SD3 and Flux)."
        )
    check_finite(soft, "The soft embeddings", "re-run the adapter or retrain it; the adapter file may be corrupted.")
    return soft


WINDOW_TOKENS = 77  # one CLIP window: ComfyUI encodes a longer prompt as 77-token windows side by side
MAX_TEXT_WINDOWS = 8  # per text part: 616 tokens, far above any prompt, far below a stalled sampler
MAX_TEXT_WINDOWS_LIMIT = 64  # the most a caller may raise the bound to
# Checked before the tokenizer sees the text, so a megabyte is refused at once: no window of
# real text needs this many characters (CLIP's word pieces average about 4 characters).
_CHARS_PER_WINDOW = WINDOW_TOKENS * 16

# Called before each text encoding; raises to stop the build (ComfyUI's interrupt check).
CheckInterrupt = Callable[[], None]


def _check_windows(max_windows: int) -> None:
    whole = isinstance(max_windows, int) and not isinstance(max_windows, bool)
    if not whole or not 1 <= max_windows <= MAX_TEXT_WINDOWS_LIMIT:
        raise InvalidSettingError(
            f"max_text_windows is {max_windows!r}; use a whole number from 1 to {MAX_TEXT_WINDOWS_LIMIT} "
            f"(windows of {WINDOW_TOKENS} tokens per text part; {MAX_TEXT_WINDOWS} is the default)."
        )


def _too_long(what: str, length: str, max_windows: int) -> InvalidSettingError:
    return InvalidSettingError(
        f"The {what} text is {length} long; each text part of PMG's condition may span at most {max_windows} "
        f"encoder window(s) of {WINDOW_TOKENS} tokens ({max_windows * WINDOW_TOKENS} tokens, at most "
        f"{max_windows * _CHARS_PER_WINDOW:,} characters), so that one prompt cannot stall the sampler. "
        f"Shorten the {what} text ({_WHERE.get(what, 'the text given')}), or raise "
        f"PMG Conditioning's max_text_windows (connect an Int to that input, at most {MAX_TEXT_WINDOWS_LIMIT}; "
        "max_windows= in the library)."
    )


# Where each part's text comes from, for the fix in an error.
_WHERE = {
    "target": "PMG Conditioning's target_text, or the target item's title in the history file",
    "preference": "PMG Conditioning's preference_text, or the extracted preference keywords",
    "negative": "the preference's negative prompt",
}


def check_text_length(text: str, what: str, max_windows: int = MAX_TEXT_WINDOWS) -> None:
    """Refuse, before any tokenizing, a text too long to fit ``max_windows`` encoder windows."""
    _check_windows(max_windows)
    if len(text) > max_windows * _CHARS_PER_WINDOW:
        raise _too_long(what, f"{len(text):,} characters", max_windows)


def _check_text_lengths(target_text: str, preference_text: str | None, max_windows: int) -> bool:
    """Both texts measured before either is encoded (a refusal costs no encoder work); is there a preference part?"""
    _check_windows(max_windows)
    check_text_length(target_text, "target", max_windows)
    has_preference = preference_text is not None and bool(preference_text.strip())
    if has_preference:
        check_text_length(preference_text, "preference", max_windows)
    return has_preference


def _encode_one(
    encoder: TextEncoder,
    text: str,
    what: str,
    max_windows: int = MAX_TEXT_WINDOWS,
    check_interrupt: CheckInterrupt | None = None,
) -> EncodedText:
    check_text_length(text, what, max_windows)
    if check_interrupt is not None:
        check_interrupt()
    encoded = encoder.encode([text])
    embeddings = encoded.embeddings
    if embeddings.ndim != 3 or embeddings.shape[0] != 1 or embeddings.shape[-1] != encoder.width:
        raise EmbeddingValueError(
            f"The text encoder returned shape {tuple(embeddings.shape)} for the {what} text; "
            f"expected [1, T, {encoder.width}]. Check that the encoder wrapper reports the right width."
        )
    if embeddings.shape[1] > max_windows * WINDOW_TOKENS:
        raise _too_long(what, f"{embeddings.shape[1]} tokens", max_windows)
    check_finite(embeddings, f"The {what} text embedding", "check the text encoder weights and dtype (fp16 overflow?).")
    return encoded


def build_conditions(
    encoder: TextEncoder,
    target_text: str,
    preference_text: str | None,
    soft_embeddings: Tensor | None,
    weights: ConditionWeights | None = None,
    alphas=(0.5,),
    weighting: str = "scale",
    max_windows: int = MAX_TEXT_WINDOWS,
    check_interrupt: CheckInterrupt | None = None,
) -> PMGConditions:
    """Build one PMG condition per alpha.

    Args:
        encoder: the diffusion model's text encoder.
        target_text: the prompt describing the target item (always present).
        preference_text: the explicit preference keywords as text; ``None`` or blank
            leaves the preference part out (a soft-only or target-only condition).
        soft_embeddings: the adapter's output for this user, ``[k, D]`` or ``[1, k, D]``;
            ``None`` leaves the soft part out.
        weights: (w_t, w_i, w_p); defaults to all 1.
        alphas: the balance values, each in [0, 1].
        weighting: how a part's weight ``w * balance`` acts on it (see :data:`WEIGHTINGS`):
            ``"scale"`` multiplies the encoder states; ``"interpolate"`` moves them from the
            empty prompt's states towards (or past) the part's, as ComfyUI's ``(text:1.2)``
            prompt weighting does; ``"repeat"`` repeats the part ``round(2 * w * balance)``
            times, as the reference code repeats its preference keywords.
        max_windows: the most encoder windows of :data:`WINDOW_TOKENS` tokens each text part
            (target, preference) may span; a longer text is an :class:`InvalidSettingError`
            naming it, its length and the bound, so one prompt cannot stall the sampler.
        check_interrupt: called before each text encoding, raises to stop (the node passes ComfyUI's check).

    Returns:
        :class:`PMGConditions` with ``embeddings [A, T_total, D]``, the target's
        pooled vector repeated per alpha, and the part layout in ``segments``.
    """
    weights = weights or ConditionWeights()
    weights.validate()
    alpha_values = validate_alphas(alphas)
    if weighting not in WEIGHTINGS:
        raise InvalidSettingError(f"Unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}.")
    has_preference = _check_text_lengths(target_text, preference_text, max_windows)

    target = _encode_one(encoder, target_text, "target", max_windows, check_interrupt)
    embeddings = target.embeddings
    parts: list[tuple[str, Tensor, float]] = [("target", embeddings, weights.target)]
    if soft_embeddings is not None:
        soft = _soft_as_batch(soft_embeddings, encoder.width).to(embeddings.device, embeddings.dtype)
        parts.append(("soft", soft, weights.soft))
    if has_preference:
        preference = _encode_one(encoder, preference_text, "preference", max_windows, check_interrupt).embeddings
        parts.append(("preference", preference.to(embeddings.device, embeddings.dtype), weights.preference))
    else:
        logger.debug("No preference keywords: the condition holds no preference-text part.")
    empty = None
    if weighting == "interpolate":  # the empty prompt's states: where a part's weight interpolates from
        empty = _encode_one(encoder, "", "empty", max_windows, check_interrupt).embeddings.to(embeddings)
    pooled = None if target.pooled is None else target.pooled.reshape(1, -1).expand(len(alpha_values), -1).clone()
    segments = tuple((name, int(part.shape[1])) for name, part, _ in parts)
    return PMGConditions(_alpha_rows(parts, alpha_values, weighting, empty), pooled, alpha_values, segments)


WEIGHTINGS = ("scale", "interpolate", "repeat")


def _alpha_rows(parts: list[tuple[str, Tensor, float]], alphas: tuple[float, ...], weighting: str,
                empty: Tensor | None) -> Tensor:
    """``[A, T, D]``: per alpha, the parts side by side, the target scaled by 2(1 - a), the others by 2a."""
    rows = []
    for alpha in alphas:
        weighted = []
        for name, part, weight in parts:
            balance = 2.0 * (1.0 - alpha) if name == "target" else 2.0 * alpha
            weighted.extend(_weighted(part, weight * balance, weighting, None if name == "soft" else empty))
        rows.append(torch.cat(weighted or [parts[0][1]], dim=1))
    if weighting == "repeat":
        rows = _same_length(rows)
    return torch.cat(rows, dim=0)


def _weighted(part: Tensor, weight: float, weighting: str, empty: Tensor | None) -> list[Tensor]:
    """The pieces one part contributes to the sequence under ``weighting``."""
    if weighting == "repeat":
        return [part] * max(0, round(2 * weight))
    if weighting == "interpolate" and empty is not None:
        baseline = tile_to_length(empty, part.shape[1])
        return [baseline + weight * (part - baseline)]
    return [part * weight]  # "scale", and soft embeddings (which have no empty-prompt counterpart)


def _same_length(rows: list[Tensor]) -> list[Tensor]:
    """Rows of one sweep batched together: the shorter ones repeated whole up to the longest (same attention)."""
    longest = max(row.shape[1] for row in rows)
    return [row if row.shape[1] == longest else tile_to_length(row, longest) for row in rows]


def tile_to_length(embeddings: Tensor, length: int) -> Tensor:
    """Stretch ``[B, T, D]`` to ``[B, length, D]`` by repeating whole copies of the sequence.

    Cross-attention over a sequence repeated r times gives exactly the output
    of attention over one copy (every key appears r times, so the softmax
    weights are unchanged after normalisation). A remainder shorter than T is
    filled with the sequence's last position (CLIP's end-of-text padding
    output) rather than a partial copy, which would add an extra
    start-of-text token, the position that draws most attention in CLIP.
    Longer inputs are cut to ``length``.
    """
    if embeddings.ndim != 3:
        raise EmbeddingValueError(f"Expected embeddings [B, T, D], got shape {tuple(embeddings.shape)}.")
    tokens = embeddings.shape[1]
    if length <= tokens:
        return embeddings[:, :length]
    copies, remainder = divmod(length, tokens)
    pieces = [embeddings] * copies
    if remainder:
        pieces.append(embeddings[:, -1:].expand(-1, remainder, -1))
    return torch.cat(pieces, dim=1)


def negative_conditions(
    encoder: TextEncoder,
    text: str,
    like: PMGConditions,
    max_windows: int = MAX_TEXT_WINDOWS,
    check_interrupt: CheckInterrupt | None = None,
) -> PMGConditions:
    """The classifier-free-guidance condition for ``text``, shaped like ``like``.

    diffusers requires ``negative_prompt_embeds`` of the same shape as
    ``prompt_embeds``; PMG's positive condition is longer than one CLIP window
    (77 + k + 77 tokens), so the negative encoding is stretched with
    :func:`tile_to_length` and repeated once per alpha. It is not alpha-scaled:
    the negative prompt is the same for every image of a sweep. Its text is bounded
    like the condition's parts (``max_windows``), and ``check_interrupt`` runs before it is encoded.
    """
    encoded = _encode_one(encoder, text or "", "negative", max_windows, check_interrupt)
    count = len(like.alphas)
    embeddings = tile_to_length(encoded.embeddings, like.num_tokens)
    embeddings = embeddings.to(like.embeddings.device, like.embeddings.dtype).expand(count, -1, -1).clone()
    pooled = None
    if encoded.pooled is not None:
        pooled = encoded.pooled.reshape(1, -1).expand(count, -1).clone()
    return PMGConditions(embeddings, pooled, like.alphas, (("negative", like.num_tokens),))
