"""Plain charts drawn with PIL only (no matplotlib in the pack): canvas, fonts, a gridded plot area.

Used by the trade-off scatter (:mod:`pmg_core.metrics.plot`) and the training loss
curve (:mod:`pmg_core.training.plot`); each draws its own marks inside the area.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)


def font(size: int) -> ImageFont.ImageFont:
    """PIL's default font at ``size`` px, or its fixed-size bitmap font on old Pillow."""
    try:  # Pillow >= 10.1 ships a scalable default font
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def canvas(width: int, height: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    """A white RGB image and its drawing context."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    return image, ImageDraw.Draw(image)


def padded_range(low: float, high: float, fraction: float) -> tuple[float, float]:
    """``[low, high]`` widened by ``fraction`` of its span on each side (by 0.05 when the span is 0)."""
    pad = (high - low) * fraction if high > low else 0.05
    return low - pad, high + pad


@dataclass(frozen=True)
class PlotArea:
    """A rectangle of pixels showing data in ``[x_low, x_high] x [y_low, y_high]`` (y grows upwards)."""

    left: float
    top: float
    right: float
    bottom: float
    x_low: float
    x_high: float
    y_low: float
    y_high: float

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        px = self.left + (x - self.x_low) / (self.x_high - self.x_low) * (self.right - self.left)
        py = self.bottom - (y - self.y_low) / (self.y_high - self.y_low) * (self.bottom - self.top)
        return px, py

    def draw_frame(self, draw: ImageDraw.ImageDraw, label_font, x_format: str, y_format: str, ticks: int = 5) -> None:
        """Grid lines, tick labels (``format(value, x_format)``) below and left of the area, and its border."""
        for k in range(ticks + 1):
            fraction = k / ticks
            gx = self.left + fraction * (self.right - self.left)
            gy = self.bottom - fraction * (self.bottom - self.top)
            draw.line([(gx, self.top), (gx, self.bottom)], fill=GRID)
            draw.line([(self.left, gy), (self.right, gy)], fill=GRID)
            x_value = self.x_low + fraction * (self.x_high - self.x_low)
            y_value = self.y_low + fraction * (self.y_high - self.y_low)
            draw.text((gx, self.bottom + 6), format(x_value, x_format), fill=INK, font=label_font, anchor="mt")
            draw.text((self.left - 6, gy), format(y_value, y_format), fill=INK, font=label_font, anchor="rm")
        draw.rectangle([self.left, self.top, self.right, self.bottom], outline=INK)
