"""One PNG that shows a batch at a glance: per user, the history, the candidates per α, the pick, the keywords."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TILE = 96
PAD = 8
LABEL_WIDTH = 150
TEXT_WIDTH = 420
BACKGROUND = (250, 250, 250)
INK = (30, 30, 30)
MUTED = (120, 120, 120)
SELECTED = (20, 160, 60)
FAILED = (200, 40, 40)


@dataclass
class SheetRow:
    """One user's line of the sheet.

    ``history`` holds images, or strings for items without one (a movie title);
    ``candidates`` are in α order; ``selected`` is the index of the chosen candidate;
    ``placeholder`` is said where the candidates would be when a row has none (and why).
    """

    user_id: str
    scene: str = ""
    history: Sequence[Image.Image | str] = ()
    candidates: Sequence[Image.Image] = ()
    alphas: Sequence[float] = ()
    selected: int | None = None
    keywords: Sequence[str] = ()
    target_text: str = ""
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    placeholder: str | None = None


def contact_sheet(rows: Sequence[SheetRow], title: str = "", max_history: int = 5, tile: int = TILE) -> Image.Image:
    """Draw the rows under a title; every image is shrunk into a ``tile``-pixel square."""
    font = ImageFont.load_default()
    # A row without candidates writes its placeholder there: give it at least three tiles of room.
    max_candidates = max([len(r.candidates) for r in rows] + [3 for r in rows if r.placeholder], default=0)
    history_width = max_history * (tile + PAD)
    candidate_x = LABEL_WIDTH + history_width + 3 * PAD
    text_x = candidate_x + max(max_candidates, 1) * (tile + PAD) + 2 * PAD
    width = text_x + TEXT_WIDTH
    row_height = tile + 4 * PAD + 14
    title_lines = textwrap.wrap(title, width=(width - 2 * PAD) // 6) if title else []
    header = PAD + 14 * len(title_lines) + (PAD + 14 if rows else 0)
    sheet = Image.new("RGB", (width, header + row_height * max(len(rows), 1) + PAD), BACKGROUND)
    draw = ImageDraw.Draw(sheet)

    y = PAD
    for line in title_lines:
        draw.text((PAD, y), line, fill=INK, font=font)
        y += 14
    if rows:
        y += PAD // 2
        draw.text((LABEL_WIDTH, y), "history", fill=MUTED, font=font)
        draw.text((candidate_x, y), "candidates per alpha (green: selected)", fill=MUTED, font=font)
        draw.text((text_x, y), "keywords", fill=MUTED, font=font)
        y += 14 + PAD // 2

    for row in rows:
        _draw_row(sheet, draw, font, row, y, candidate_x, text_x, max_history, tile)
        y += row_height
        draw.line([(PAD, y - PAD // 2), (width - PAD, y - PAD // 2)], fill=(220, 220, 220))
    return sheet


def _draw_row(sheet, draw, font, row: SheetRow, y: int, candidate_x: int, text_x: int, max_history: int, tile: int) -> None:
    draw.text((PAD, y + PAD), f"user {row.user_id}", fill=INK, font=font)
    if row.scene:
        draw.text((PAD, y + PAD + 14), row.scene, fill=MUTED, font=font)

    x = LABEL_WIDTH
    for item in list(row.history)[:max_history]:
        if isinstance(item, Image.Image):
            sheet.paste(_fit(item, tile), (x, y + PAD))
        else:
            draw.rectangle([x, y + PAD, x + tile - 1, y + PAD + tile - 1], outline=(200, 200, 200), fill=(238, 238, 238))
            for i, line in enumerate(textwrap.wrap(str(item), width=max(tile // 6, 4))[:6]):
                draw.text((x + 3, y + PAD + 3 + 12 * i), line, fill=INK, font=font)
        x += tile + PAD
    if len(row.history) > max_history:
        draw.text((x - PAD, y + PAD + tile + 2), f"+{len(row.history) - max_history}", fill=MUTED, font=font)

    x = candidate_x
    for index, image in enumerate(row.candidates):
        top = y + PAD
        sheet.paste(_fit(image, tile), (x, top))
        if index == row.selected:
            draw.rectangle([x - 3, top - 3, x + tile + 2, top + tile + 2], outline=SELECTED, width=3)
        if index < len(row.alphas):
            colour = SELECTED if index == row.selected else MUTED
            draw.text((x, top + tile + 4), f"a={row.alphas[index]:.2f}", fill=colour, font=font)
        x += tile + PAD
    if not row.candidates and row.placeholder:
        width = 3 * (tile + PAD) - PAD
        draw.rectangle([candidate_x, y + PAD, candidate_x + width - 1, y + PAD + tile - 1], outline=(200, 200, 200))
        for i, line in enumerate(textwrap.wrap(row.placeholder, width=max(width // 6 - 1, 8))[: tile // 12]):
            draw.text((candidate_x + 4, y + PAD + 4 + 12 * i), line, fill=MUTED, font=font)

    lines: list[str] = []
    if row.error:
        lines += textwrap.wrap(f"FAILED: {row.error}", width=TEXT_WIDTH // 6)
    if row.keywords:
        lines += textwrap.wrap("preference: " + ", ".join(row.keywords), width=TEXT_WIDTH // 6)
    if row.target_text:
        lines += textwrap.wrap("prompt: " + row.target_text, width=TEXT_WIDTH // 6)
    for note in row.notes:
        lines += textwrap.wrap(note, width=TEXT_WIDTH // 6)
    for i, line in enumerate(lines[: (tile + 2 * PAD) // 12]):
        draw.text((text_x, y + PAD + 12 * i), line, fill=FAILED if row.error and i == 0 else INK, font=font)


def _fit(image: Image.Image, tile: int) -> Image.Image:
    """The image scaled (nearest for small images, so noise stays visible as noise) into a square tile."""
    # Stickers are palette PNGs with transparency: flatten them onto white, not onto their key colour.
    rgba = image.convert("RGBA")
    image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    scale = tile / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    canvas = Image.new("RGB", (tile, tile), (255, 255, 255))
    resized = image.resize(size, resample)
    canvas.paste(resized, ((tile - size[0]) // 2, (tile - size[1]) // 2))
    return canvas


def save_contact_sheet(rows: Sequence[SheetRow], path: Path | str, title: str = "") -> Path:
    """Draw and save the sheet as PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, title=title).save(path)
    return path
