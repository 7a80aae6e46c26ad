"""The training loss curve as a PNG, drawn with PIL only (no matplotlib in the pack)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_BACKGROUND = (255, 255, 255)
_INK = (30, 30, 30)
_GRID = (225, 225, 225)
_SERIES = {"loss": (40, 90, 200), "target_loss": (40, 160, 80), "negative_loss": (210, 80, 40)}


def _font(size: int) -> ImageFont.ImageFont:
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to ``window`` values (the first points average fewer)."""
    out, running = [], 0.0
    for i, value in enumerate(values):
        running += value
        if i >= window:
            running -= values[i - window]
        out.append(running / min(i + 1, window))
    return out


def loss_curve_image(
    steps: list[int], series: dict[str, list[float]], title: str = "PMG soft-prompt training", width: int = 720, height: int = 420
) -> Image.Image:
    """Lines of each series against the optimizer step, smoothed when there are many steps.

    Raw per-step losses of diffusion training are very noisy (a random timestep
    per sample), so with more than 20 steps a trailing mean over ~5% of the run
    is drawn instead; the legend says which window was used.
    """
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(12)
    left, right, top, bottom = 80, width - 20, 40, height - 55
    draw.text((width / 2, 12), title, fill=_INK, font=font, anchor="mt")
    if not steps:
        draw.text((width / 2, height / 2), "no steps recorded", fill=_INK, font=font, anchor="mm")
        return image

    window = max(1, len(steps) // 20) if len(steps) > 20 else 1
    smoothed = {name: moving_average(values, window) for name, values in series.items() if values}
    finite = [v for values in smoothed.values() for v in values if math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 1.0)
    pad = (high - low) * 0.08 if high > low else 0.05
    low, high = low - pad, high + pad
    first, last = steps[0], max(steps[-1], steps[0] + 1)

    def to_pixel(step: float, value: float) -> tuple[float, float]:
        x = left + (step - first) / (last - first) * (right - left)
        y = bottom - (value - low) / (high - low) * (bottom - top)
        return x, y

    ticks = 5
    for k in range(ticks + 1):
        fraction = k / ticks
        gx = left + fraction * (right - left)
        gy = bottom - fraction * (bottom - top)
        draw.line([(gx, top), (gx, bottom)], fill=_GRID)
        draw.line([(left, gy), (right, gy)], fill=_GRID)
        draw.text((gx, bottom + 6), f"{first + fraction * (last - first):.0f}", fill=_INK, font=small, anchor="mt")
        draw.text((left - 6, gy), f"{low + fraction * (high - low):.4g}", fill=_INK, font=small, anchor="rm")
    draw.rectangle([left, top, right, bottom], outline=_INK)
    draw.text(((left + right) / 2, height - 18), "optimizer step", fill=_INK, font=small, anchor="mm")

    legend_y = top + 8
    for name, values in smoothed.items():
        colour = _SERIES.get(name, _INK)
        points = [to_pixel(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        elif points:
            draw.line(points, fill=colour, width=2)
        label = name if window == 1 else f"{name} (mean of {window})"
        draw.line([(right - 190, legend_y), (right - 170, legend_y)], fill=colour, width=3)
        draw.text((right - 165, legend_y), label, fill=_INK, font=small, anchor="lm")
        legend_y += 16
    return image


def save_loss_curve(image: Image.Image, path: Path) -> Path:
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    image.save(temporary, format="PNG")
    temporary.replace(path)
    return path
