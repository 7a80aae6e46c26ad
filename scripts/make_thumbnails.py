"""Template-browser thumbnails: ``workflows/<name>.jpg``, the card image ComfyUI shows for a pack's workflow.

* the sticker workflows: drawn from a real run of ``models/generators/pmg-sticker-generator.safetensors``
  (the same sampler as the workflows: euler, normal, 20 steps, cfg 5);
* the movie-poster workflows (SD1.5, SDXL): no Stable Diffusion checkpoint can be downloaded
  here, so their cards are drawn, not generated: a real MovieLens user's liked movies and
  target from the example history, and the path they take through the workflow.

    .venv/bin/python -m scripts.make_thumbnails [--only pmg_movie_poster_sdxl]
"""

from __future__ import annotations

import argparse
import logging
import textwrap
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from pmg_core.evaluation.report import image_strip
from pmg_core.evaluation.sticker_eval import StickerPipeline
from pmg_core.sticker_model.text_encoder import MiniLMTextEncoder
from pmg_core.sticker_model.weights import load_sticker_model

log = logging.getLogger("make_thumbnails")
CARDS = {
    "pmg_sticker": ["grinning face", "cat face", "red heart", "pizza", "smiling face with heart-eyes", "dog face"],
    "pmg_alpha_sweep": ["grinning face", "grinning face, cat face", "cat face, animal mammal",
                        "red apple", "red apple, food fruit", "food fruit, food & drink"],
}


CARD_SIZE = (384, 256)

REPO = Path(__file__).resolve().parents[1]
MOVIE_USER = "1"
# Each movie workflow's card: the family it is for and the checkpoint file it expects.
MOVIE_CARDS = {"pmg_movie_poster": ("SD1.5", "v1-5-pruned-emaonly", 512),
               "pmg_movie_poster_sdxl": ("SDXL", "sd_xl_base_1.0", 1024)}


def movie_card(family: str, checkpoint: str, size: int) -> Image.Image:
    """A movie-poster card: MovieLens user 1's liked movies -> keywords -> one poster per alpha."""
    from pmg_core.assets import movielens_dir
    from pmg_core.loaders import SplitRule, load_user

    history = load_user(movielens_dir(), MOVIE_USER, fmt="movielens", split=SplitRule.reference())
    card = Image.new("RGB", CARD_SIZE, (24, 28, 48))
    draw = ImageDraw.Draw(card)
    for y in range(CARD_SIZE[1]):  # a dark vertical gradient, like a cinema wall
        shade = int(24 + 30 * y / CARD_SIZE[1])
        draw.line([(0, y), (CARD_SIZE[0], y)], fill=(shade, shade // 2 + 14, 48 + shade))
    title, small, tiny = (ImageFont.load_default(size) for size in (22, 13, 11))
    draw.text((14, 10), f"PMG movie poster · {family}", font=title, fill=(250, 236, 200))
    draw.text((14, 38), f"MovieLens user {history.user_id} liked:", font=small, fill=(200, 210, 235))
    # Three "posters" of the liked movies, then the personalised candidates.
    for i, item in enumerate(history.items[:3]):
        x = 10 + i * 80
        draw.rounded_rectangle([x, 60, x + 76, 160], radius=6, fill=(60 + 40 * i, 44, 70), outline=(230, 200, 120))
        for j, line in enumerate(textwrap.wrap(item.title, 12)[:5]):
            draw.text((x + 5, 66 + 14 * j), line, font=tiny, fill=(255, 245, 225))
    # An arrow into the candidates (the built-in font has no arrow glyph).
    draw.line([(252, 110), (270, 110)], fill=(250, 236, 200), width=3)
    draw.polygon([(270, 103), (279, 110), (270, 117)], fill=(250, 236, 200))
    draw.rounded_rectangle([284, 60, 374, 160], radius=6, fill=(20, 20, 30), outline=(250, 236, 200), width=2)
    for j, line in enumerate(["one poster", "per alpha:", "your taste", "vs. the", "target"]):
        draw.text((292, 68 + 17 * j), line, font=small, fill=(250, 236, 200))
    target = history.target.title if history.target is not None else "the next movie"
    draw.text((14, 172), f"target: {target}", font=small, fill=(200, 210, 235))
    draw.text((14, 194), f"history > LLM keywords > PMG Conditioning > {family}", font=small, fill=(200, 210, 235))
    draw.text((14, 212), f"KSampler at {size} px > PMG Scorer keeps the best", font=small, fill=(200, 210, 235))
    draw.text((14, 234), f"needs your {family} checkpoint: {checkpoint}", font=tiny, fill=(150, 160, 190))
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=[*MOVIE_CARDS, *CARDS], help="draw just this card")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    for name, card in MOVIE_CARDS.items():
        if args.only in (None, name):
            path = REPO / "workflows" / f"{name}.jpg"
            movie_card(*card).save(path, quality=90)
            log.info("wrote %s", path)
    if args.only in MOVIE_CARDS:
        return
    torch.set_num_threads(2)
    sticker_model = load_sticker_model(REPO / "models" / "generators" / "pmg-sticker-generator.safetensors")
    pipeline = StickerPipeline(sticker_model, MiniLMTextEncoder())
    for name, prompts in CARDS.items():
        if args.only not in (None, name):
            continue
        images = torch.cat([pipeline.generate(pipeline.encoder.encode([p]).embeddings, 5, 1, 20, 5.0) for p in prompts])
        card = image_strip(images, per_row=3).resize((384, 256))
        path = REPO / "workflows" / f"{name}.jpg"
        card.save(path, quality=90)
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
