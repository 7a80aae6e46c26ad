"""The evaluation's outputs: a markdown table, the alpha trade-off curve and a sample grid (PIL only)."""

from __future__ import annotations

import re

import torch
from PIL import Image, ImageDraw

from ..charts import INK, PlotArea, canvas, font, padded_range
from .stats import Estimate, bootstrap_relative_change

COLUMNS = (
    ("lpips_history", "LPIPS→history ↓"),
    ("lpips_history_change", "Δ LPIPS→history vs target only"),
    ("lpips_history_vs_names", "Δ LPIPS→history vs history names"),
    ("ssim_history", "SSIM→history ↑"),
    ("lpips_target", "LPIPS→target ↓"),
    ("ssim_target", "SSIM→target ↑"),
    ("judge_target", "judge: target category ↑"),
)


def markdown_table(summary: dict[str, dict[str, Estimate]]) -> str:
    """One row per method, each cell a mean with its 95% bootstrap interval."""
    header = "| method | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for method, row in summary.items():
        cells = []
        for key, _ in COLUMNS:
            estimate = row.get(key)
            if estimate is None:
                cells.append("—")
            elif key.endswith(("_change", "_vs_names")):
                cells.append(f"{100 * estimate.mean:+.1f}% [{100 * estimate.low:+.1f}, {100 * estimate.high:+.1f}]")
            else:
                cells.append(f"{estimate.mean:.3f} [{estimate.low:.3f}, {estimate.high:.3f}]")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The comparisons the issue-17 note asks for beyond the table's two baselines.
PAIRED_COMPARISONS = (
    ("PMG + image prompt", "keywords + soft (trained)"),
    ("PMG + image prompt", "image prompt"),
    ("PMG sweep + z", "history names"),
    ("keywords + soft (trained)", "history names"),
    ("image prompt", "history names"),
)


def paired_changes_table(per_user: dict[str, dict[str, list[float]]], pairs=PAIRED_COMPARISONS, seed: int = 0) -> str:
    """Relative changes of LPIPS→history and →target between two methods, paired by user (pairs that both ran)."""
    lines = ["| comparison | Δ LPIPS→history | Δ LPIPS→target |", "|---|---|---|"]
    for method, baseline in pairs:
        if method not in per_user or baseline not in per_user:
            continue
        cells = []
        for metric in ("lpips_history", "lpips_target"):
            change = bootstrap_relative_change(per_user[method][metric], per_user[baseline][metric], seed)
            cells.append(f"{100 * change.mean:+.1f}% [{100 * change.low:+.1f}, {100 * change.high:+.1f}]")
        lines.append(f"| {method} vs {baseline} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tradeoff_curve(
    summary: dict[str, dict[str, Estimate]], accuracy: str = "judge_target", width: int = 640, height: int = 460
) -> Image.Image:
    """Closeness to history (1 - LPIPS) against accuracy for each alpha of the sweep, the baseline marked."""
    swept = sorted((float(m.group(1)), name) for name in summary if (m := re.fullmatch(r"keywords a=([\d.]+)", name)))
    points = [(1 - summary[name]["lpips_history"].mean, summary[name][accuracy].mean, f"a={alpha:g}") for alpha, name in swept]
    extra = [(1 - row["lpips_history"].mean, row[accuracy].mean, name) for name, row in summary.items()
             if name in ("target only", "history names", "PMG sweep + z")]
    everything = points + extra
    image, draw = canvas(width, height)
    big, small = font(15), font(12)
    draw.text((width / 2, 12), "PMG alpha trade-off (held-out users)", fill=INK, font=big, anchor="mt")
    if not everything:
        return image
    xs, ys = [p[0] for p in everything], [p[1] for p in everything]
    area = PlotArea(70, 40, width - 30, height - 60, *padded_range(min(xs), max(xs), 0.15), *padded_range(min(ys), max(ys), 0.15))
    area.draw_frame(draw, small, x_format=".3f", y_format=".3f")
    draw.text(((area.left + area.right) / 2, height - 24), "closeness to history: 1 - LPIPS (higher = more personal)",
              fill=INK, font=small, anchor="mt")
    draw.text((8, 24), f"accuracy: {accuracy}", fill=INK, font=small)
    line = [area.to_pixel(x, y) for x, y, _ in points]
    if len(line) > 1:
        draw.line(line, fill=(40, 90, 200), width=2)
    for (x, y, label), colour in [(p, (40, 90, 200)) for p in points] + [(p, (210, 80, 40)) for p in extra]:
        px, py = area.to_pixel(x, y)
        draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=colour)
        draw.text((px + 7, py), label, fill=colour, font=small, anchor="lm")
    return image


def sample_grid(rows: list[tuple[str, list[torch.Tensor]]], columns: list[str], cell: int = 64) -> Image.Image:
    """A labelled grid: one row per user, one column per entry (history images first, then methods)."""
    label_width, header = 150, 34
    image = Image.new("RGB", (label_width + cell * len(columns), header + cell * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    small = font(10)
    for j, title in enumerate(columns):
        draw.text((label_width + j * cell + cell / 2, header / 2), title, fill=INK, font=small, anchor="mm")
    for i, (label, images) in enumerate(rows):
        draw.text((6, header + i * cell + cell / 2), label, fill=INK, font=small, anchor="lm")
        for j, tensor in enumerate(images):
            pixels = (tensor.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(pixels)
            if tile.size != (cell, cell):
                tile = tile.resize((cell, cell), Image.Resampling.LANCZOS)
            image.paste(tile, (label_width + j * cell, header + i * cell))
    return image


def image_strip(images: torch.Tensor, per_row: int = 16) -> Image.Image:
    """Images ``[N, 3, H, W]`` tiled ``per_row`` across."""
    n, _, h, w = images.shape
    rows = (n + per_row - 1) // per_row
    out = Image.new("RGB", (w * min(n, per_row), h * rows), (255, 255, 255))
    for k in range(n):
        pixels = (images[k].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        out.paste(Image.fromarray(pixels), ((k % per_row) * w, (k // per_row) * h))
    return out
