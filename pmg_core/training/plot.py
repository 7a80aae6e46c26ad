"""The training loss curve as a PNG, drawn with PIL only (no matplotlib in the pack)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image

from ..atomic import atomic_path
from ..charts import INK, PlotArea, canvas, font, padded_range

_SERIES = {"loss": (40, 90, 200), "target_loss": (40, 160, 80), "negative_loss": (210, 80, 40)}


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
    """Lines of each series (one value per step) against the optimizer step, smoothed when there are many steps.

    Raw per-step losses of diffusion training are very noisy (a random timestep
    per sample), so with more than 20 steps a trailing mean over ~5% of the run
    is drawn instead; the legend says which window was used.
    """
    image, draw = canvas(width, height)
    big, small = font(15), font(12)
    draw.text((width / 2, 12), title, fill=INK, font=big, anchor="mt")
    if not steps:
        draw.text((width / 2, height / 2), "no steps recorded", fill=INK, font=big, anchor="mm")
        return image

    window = max(1, len(steps) // 20) if len(steps) > 20 else 1
    smoothed = {name: moving_average(values, window) for name, values in series.items() if values}
    finite = [v for values in smoothed.values() for v in values if math.isfinite(v)]
    low, high = padded_range(*((min(finite), max(finite)) if finite else (0.0, 1.0)), 0.08)
    area = PlotArea(80, 40, width - 20, height - 55, steps[0], max(steps[-1], steps[0] + 1), low, high)
    area.draw_frame(draw, small, x_format=".0f", y_format=".4g")
    draw.text(((area.left + area.right) / 2, height - 18), "optimizer step", fill=INK, font=small, anchor="mm")

    legend_y, right = area.top + 8, area.right
    for name, values in smoothed.items():
        colour = _SERIES.get(name, INK)
        points = [area.to_pixel(s, v) for s, v in zip(steps, values, strict=True) if math.isfinite(v)]
        if len(points) == 1:
            x, y = points[0]
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        elif points:
            draw.line(points, fill=colour, width=2)
        label = name if window == 1 else f"{name} (mean of {window})"
        draw.line([(right - 190, legend_y), (right - 170, legend_y)], fill=colour, width=3)
        draw.text((right - 165, legend_y), label, fill=INK, font=small, anchor="lm")
        legend_y += 16
    return image


def save_loss_curve(image: Image.Image, path: Path) -> Path:
    """Save the loss-curve PNG atomically; returns its path."""
    path = Path(path)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path
