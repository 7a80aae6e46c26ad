"""A picture of the preference/target trade-off, drawn with PIL only.

Each candidate is a point at (d_p, d_t), labelled with its index; the selected
one is drawn larger, in red, with a ring. Axis titles say how d_p and d_t were
measured (``ScoreReport.measure``).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from ..charts import BACKGROUND, INK, PlotArea, canvas, font, padded_range
from .selection import ScoreReport

_POINT = (60, 110, 200)
_SELECTED = (215, 40, 40)


def tradeoff_plot(report: ScoreReport, width: int = 640, height: int = 480) -> Image.Image:
    """Scatter of d_p (x) against d_t (y) per candidate with the selected one highlighted."""
    image, draw = canvas(width, height)
    big, small = font(15), font(12)
    xs = [score.d_pref for score in report.candidates]
    ys = [score.d_target for score in report.candidates]
    area = PlotArea(70, 40, width - 20, height - 60, *padded_range(min(xs), max(xs), 0.12),
                    *padded_range(min(ys), max(ys), 0.12))
    area.draw_frame(draw, small, x_format=".3f", y_format=".3f")
    left, right, top, bottom = area.left, area.right, area.top, area.bottom

    title = f"PMG trade-off  alpha = {report.alpha:.3f}   selected: #{report.selected}"
    draw.text((width / 2, 12), title, fill=INK, font=big, anchor="mt")
    x_title = "d_p: " + report.measure.get("d_pref", "preference similarity")
    draw.text(((left + right) / 2, height - 24), x_title, fill=INK, font=small, anchor="mt")
    y_title = Image.new("RGB", (int(bottom - top), 18), BACKGROUND)
    ImageDraw.Draw(y_title).text(
        ((bottom - top) / 2, 2),
        "d_t: " + report.measure.get("d_target", "target similarity"),
        fill=INK,
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
        px, py = area.to_pixel(score.d_pref, score.d_target)
        draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=_POINT)
        label(px, py, f"#{score.index}", INK, small, 8)
    best = report.candidates[report.selected]
    px, py = area.to_pixel(best.d_pref, best.d_target)
    draw.ellipse([px - 11, py - 11, px + 11, py + 11], outline=_SELECTED, width=2)
    draw.ellipse([px - 7, py - 7, px + 7, py + 7], fill=_SELECTED)
    label(px, py, f"#{best.index} (z = {best.z:.3f})", _SELECTED, big, 14)
    return image
