"""A picture of the preference/target trade-off, drawn with PIL only.

Each candidate is a point at (d_p, d_t), labelled with its index; the selected
one is drawn larger, in red, with a ring. Axis titles say how d_p and d_t were
measured (``ScoreReport.measure``).
"""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from .selection import ScoreReport

_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)
_GRID = (225, 225, 225)
_POINT = (60, 110, 200)
_SELECTED = (215, 40, 40)


def _font(size: int) -> ImageFont.ImageFont:
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _axis_range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.12 if high > low else 0.05
    return low - pad, high + pad


def tradeoff_plot(report: ScoreReport, width: int = 640, height: int = 480) -> Image.Image:
    """Scatter of d_p (x) against d_t (y) per candidate with the selected one highlighted."""
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)
    left, right, top, bottom = 70, width - 20, 40, height - 60

    xs = [score.d_pref for score in report.candidates]
    ys = [score.d_target for score in report.candidates]
    x_low, x_high = _axis_range(xs)
    y_low, y_high = _axis_range(ys)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x_low) / (x_high - x_low) * (right - left)
        py = bottom - (y - y_low) / (y_high - y_low) * (bottom - top)
        return px, py

    ticks = 5
    for k in range(ticks + 1):
        fraction = k / ticks
        gx = left + fraction * (right - left)
        gy = bottom - fraction * (bottom - top)
        draw.line([(gx, top), (gx, bottom)], fill=_GRID)
        draw.line([(left, gy), (right, gy)], fill=_GRID)
        draw.text((gx, bottom + 6), f"{x_low + fraction * (x_high - x_low):.3f}", fill=_INK, font=small, anchor="mt")
        draw.text((left - 6, gy), f"{y_low + fraction * (y_high - y_low):.3f}", fill=_INK, font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=_INK)

    title = f"PMG trade-off  alpha = {report.alpha:.3f}   selected: #{report.selected}"
    draw.text((width / 2, 12), title, fill=_INK, font=font, anchor="mt")
    x_title = "d_p: " + report.measure.get("d_pref", "preference similarity")
    draw.text(((left + right) / 2, height - 24), x_title, fill=_INK, font=small, anchor="mt")
    y_title = Image.new("RGB", (bottom - top, 18), _BACKGROUND)
    ImageDraw.Draw(y_title).text(
        ((bottom - top) / 2, 2),
        "d_t: " + report.measure.get("d_target", "target similarity"),
        fill=_INK,
        font=small,
        anchor="mt",
    )
    image.paste(y_title.rotate(90, expand=True), (4, top))

    def label(px: float, py: float, text: str, colour, label_font, gap: float) -> None:
        # Labels go right of the point unless they would leave the picture.
        text_width = draw.textlength(text, font=label_font)
        x = px + gap if px + gap + text_width < width - 4 else px - gap - text_width
        draw.text((x, py), text, fill=colour, font=label_font, anchor="lm")

    for score in report.candidates:
        if score.index == report.selected:
            continue
        px, py = to_pixel(score.d_pref, score.d_target)
        draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=_POINT)
        label(px, py, f"#{score.index}", _INK, small, 8)
    best = report.candidates[report.selected]
    px, py = to_pixel(best.d_pref, best.d_target)
    draw.ellipse([px - 11, py - 11, px + 11, py + 11], outline=_SELECTED, width=2)
    draw.ellipse([px - 7, py - 7, px + 7, py + 7], fill=_SELECTED)
    label(px, py, f"#{best.index} (z = {best.z:.3f})", _SELECTED, font, 14)
    return image
