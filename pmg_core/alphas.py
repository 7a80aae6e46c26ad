"""The α sweep: the one reader of alpha values, for PMG Conditioning, PMG Scorer and the CLI.

An alpha sweep arrives as text typed by a user (``"0.3, 0.5, 0.7"``: PMG Conditioning's
``alphas`` string, ``pmg generate --alphas``, an API script's value for PMG Scorer's
``alphas``) or as numbers (PMG Conditioning's ``alphas`` output, library callers). Both
go through :func:`validate_alphas`, so a string is never iterated character by character.

Each α is one image, and candidate i of a sweep is matched to α number ``i mod A``; an
empty entry (``"0.5,,0.5"``) and a repeated α are refused rather than dropped, because
dropping one would silently change the number of images and that matching.
"""

from __future__ import annotations

import math
import re

from .errors import InvalidSettingError

__all__ = ["MAX_ALPHAS", "parse_alphas", "validate_alphas"]

MAX_ALPHAS = 16  # one image per alpha: a sweep longer than this is a typo, not a plan
EXAMPLE = "'0.3, 0.5, 0.7'"

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# Values are separated by a comma or semicolon (spaces around it allowed) or by spaces alone.
_SEPARATOR = re.compile(r"\s*[,;]\s*|\s+")


def _check_count(count: int) -> None:
    if count > MAX_ALPHAS:
        raise InvalidSettingError(
            f"{count} alpha values given; at most {MAX_ALPHAS} are allowed (each one is a whole image). "
            f"Give {MAX_ALPHAS} or fewer values in [0, 1], e.g. {EXAMPLE}, and queue several prompts "
            "for a longer sweep."
        )


def validate_alphas(alphas) -> tuple[float, ...]:
    """Check an alpha sweep and return it as a tuple of floats.

    ``alphas`` is one number, a sequence of numbers, or text for :func:`parse_alphas`.
    A sweep holds 1 to :data:`MAX_ALPHAS` distinct finite numbers in [0, 1].
    """
    if isinstance(alphas, str):
        return tuple(parse_alphas(alphas))
    if isinstance(alphas, (int, float)) and not isinstance(alphas, bool):
        alphas = [alphas]
    if not isinstance(alphas, (list, tuple)):
        raise InvalidSettingError(
            f"Alphas must be numbers in [0, 1] or text like {EXAMPLE}, got {type(alphas).__name__}; "
            "connect PMG Conditioning's alphas output or type the values as comma-separated text."
        )
    values = tuple(alphas)
    if not values:
        raise InvalidSettingError(
            f"No alpha given; pass at least one balance value in [0, 1], e.g. '0.5' or {EXAMPLE}."
        )
    _check_count(len(values))
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidSettingError(f"Alpha {value!r} is not a finite number; use values in [0, 1].")
        if not 0.0 <= value <= 1.0:
            raise InvalidSettingError(
                f"Alpha {value} is outside [0, 1]; use values from 0 to 1: 0 ignores the user's preference, "
                f"1 ignores the target, 0.5 balances both."
            )
    _check_distinct(values)
    return tuple(float(v) for v in values)


def _check_distinct(values: tuple) -> None:
    seen: set[float] = set()
    for value in values:
        if float(value) in seen:
            raise InvalidSettingError(
                f"Alpha {value} is given more than once in {', '.join(map(str, values))}; give each alpha once "
                "(remove the repeat). For several images at one alpha, raise Empty Latent Image's batch_size to a "
                "multiple of the number of alphas: image i gets alpha number i mod that number."
            )
        seen.add(float(value))


def parse_alphas(text: str) -> list[float]:
    """Parse an alpha sweep typed by a user: ``"0.3, 0.5,0.7"`` -> ``[0.3, 0.5, 0.7]``.

    Values are separated by commas, semicolons or whitespace. An empty entry
    (``"0.5,,0.7"``, a leading or trailing comma), anything that is not a plain
    decimal number, a value outside [0, 1], a repeated value, or more than
    :data:`MAX_ALPHAS` values raises :class:`InvalidSettingError` naming it.
    """
    if not isinstance(text, str):
        raise InvalidSettingError(f"Alphas must be given as text like {EXAMPLE}, got {type(text).__name__}.")
    stripped = text.strip()
    pieces = _SEPARATOR.split(stripped) if stripped else []
    _check_count(len(pieces))
    if "" in pieces:
        raise InvalidSettingError(
            f"The alphas {text!r} hold an empty entry (two separators in a row, or one at the start or end); "
            f"remove the extra comma, e.g. {EXAMPLE}."
        )
    for piece in pieces:
        if not _NUMBER.fullmatch(piece):
            raise InvalidSettingError(
                f"Cannot read {piece!r} as an alpha in {text!r}; write decimal numbers in [0, 1] "
                f"separated by commas, e.g. {EXAMPLE}."
            )
    return list(validate_alphas([float(piece) for piece in pieces]))
