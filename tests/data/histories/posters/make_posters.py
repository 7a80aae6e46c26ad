"""Draw the tiny invented 'posters' of the example histories (run once; the PNGs are committed).

Each poster is a 64x64 gradient with a shape, so that image metrics see
different pictures for different movies. Nothing here comes from a real film.
"""

from pathlib import Path

from PIL import Image, ImageDraw

POSTERS = {
    # file name: (top colour, bottom colour, shape colour, shape)
    "clockwork_lighthouse.png": ((20, 30, 80), (200, 160, 60), (250, 240, 200), "tower"),
    "orbit_of_ashes.png": ((5, 5, 20), (90, 20, 40), (255, 120, 40), "circle"),
    "paper_moon_cafe.png": ((250, 220, 200), (240, 150, 160), (120, 60, 90), "circle"),
    "midnight_tram.png": ((10, 20, 40), (40, 60, 90), (240, 220, 120), "box"),
    "the_salt_garden.png": ((200, 230, 220), (60, 140, 120), (30, 70, 50), "tower"),
}


def draw(top, bottom, ink, shape) -> Image.Image:
    image = Image.new("RGB", (64, 64))
    pixels = image.load()
    for y in range(64):
        t = y / 63
        colour = tuple(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True))
        for x in range(64):
            pixels[x, y] = colour
    pen = ImageDraw.Draw(image)
    if shape == "circle":
        pen.ellipse((16, 12, 48, 44), fill=ink)
    elif shape == "tower":
        pen.rectangle((28, 14, 36, 56), fill=ink)
        pen.polygon([(24, 16), (40, 16), (32, 6)], fill=ink)
    else:
        pen.rectangle((12, 26, 52, 44), fill=ink)
    return image


if __name__ == "__main__":
    here = Path(__file__).parent
    for name, spec in POSTERS.items():
        draw(*spec).save(here / name, optimize=True)
