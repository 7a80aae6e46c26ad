"""Draw the pack's icon, docs/icon.png (400x400, PNG), with PIL: no download, no font file.

The picture is the method in one glance: three history cards (the user's behaviours) on
the left feed a balance whose beam leans between a target square and a preference heart,
the alpha of PMG. Rerun after editing: ``.venv/bin/python -m scripts.make_icon``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from PIL import Image, ImageDraw

log = logging.getLogger("make_icon")

SIZE = 400
BACKGROUND = (24, 28, 48)
CARD = (86, 156, 214)
CARD_EDGE = (200, 225, 255)
BEAM = (240, 240, 240)
TARGET = (255, 183, 77)
HEART = (239, 83, 80)


def draw_icon(size: int = SIZE) -> Image.Image:
    """The icon at ``size`` x ``size`` (drawn at 4x and downsampled for smooth edges)."""
    scale = 4
    s = size * scale
    image = Image.new("RGB", (s, s), BACKGROUND)
    draw = ImageDraw.Draw(image)

    def box(x0, y0, x1, y1):  # coordinates in a 0..100 grid
        return [int(x0 * s / 100), int(y0 * s / 100), int(x1 * s / 100), int(y1 * s / 100)]

    draw.rounded_rectangle(box(3, 3, 97, 97), radius=int(s * 0.1), outline=(70, 80, 120), width=3 * scale)
    # three history cards, fanned
    for offset in (0, 7, 14):
        draw.rounded_rectangle(box(10 + offset, 22 + offset, 34 + offset, 52 + offset), radius=3 * scale,
                               fill=CARD, outline=CARD_EDGE, width=2 * scale)
        for line in range(3):
            y = 28 + offset + line * 6
            draw.line(box(14 + offset, y, 30 + offset - line * 3, y), fill=CARD_EDGE, width=2 * scale)
    # arrow from the cards to the balance
    draw.line(box(50, 64, 55, 64), fill=BEAM, width=3 * scale)
    draw.polygon([tuple(box(55, 60, 0, 0)[:2]), tuple(box(60, 64, 0, 0)[:2]), tuple(box(55, 68, 0, 0)[:2])], fill=BEAM)
    # the balance: post, tilted beam, two pans
    draw.line(box(78, 40, 78, 84), fill=BEAM, width=3 * scale)
    draw.polygon([tuple(box(70, 88, 0, 0)[:2]), tuple(box(86, 88, 0, 0)[:2]), tuple(box(78, 82, 0, 0)[:2])], fill=BEAM)
    draw.line(box(64, 36, 92, 44), fill=BEAM, width=3 * scale)
    draw.ellipse(box(76, 37, 80, 41), fill=BEAM)
    # target (square) on the left pan, preference (heart) on the right pan
    draw.line(box(64, 36, 64, 46), fill=BEAM, width=2 * scale)
    draw.rectangle(box(60, 46, 68, 54), fill=TARGET)
    draw.line(box(92, 44, 92, 54), fill=BEAM, width=2 * scale)
    draw.ellipse(box(87, 53, 92, 58), fill=HEART)
    draw.ellipse(box(91, 53, 96, 58), fill=HEART)
    draw.polygon([tuple(box(87.3, 56.5, 0, 0)[:2]), tuple(box(95.7, 56.5, 0, 0)[:2]),
                  tuple(box(91.5, 63, 0, 0)[:2])], fill=HEART)
    # "PMG" in block letters drawn from rectangles (no font file needed)
    _block_letters(draw, "PMG", x=12 * s / 100, y=70 * s / 100, cell=s * 0.022, color=BEAM)
    return image.resize((size, size), Image.LANCZOS)


_GLYPHS = {  # 5x7 bitmaps
    "P": ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    "M": ["10001", "11011", "10101", "10101", "10001", "10001", "10001"],
    "G": ["01110", "10001", "10000", "10111", "10001", "10001", "01110"],
}


def _block_letters(draw: ImageDraw.ImageDraw, text: str, x: float, y: float, cell: float, color) -> None:
    for index, letter in enumerate(text):
        left = x + index * 6 * cell
        for row, bits in enumerate(_GLYPHS[letter]):
            for col, bit in enumerate(bits):
                if bit == "1":
                    x0, y0 = left + col * cell, y + row * cell
                    draw.rectangle([int(x0), int(y0), int(x0 + cell) - 1, int(y0 + cell) - 1], fill=color)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "icon.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    draw_icon().save(args.out, format="PNG", optimize=True)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
