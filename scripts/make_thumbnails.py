"""Template-browser thumbnails for the sticker workflows, drawn by the shipped sticker generator.

ComfyUI's template browser shows ``workflows/<name>.jpg`` as a custom pack's card
image. This draws them from a real run of ``models/pmg-sticker-generator.safetensors``
(the same sampler as the workflows: euler, normal, 20 steps, cfg 5):

    .venv/bin/python scripts/make_thumbnails.py
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pmg_core.evaluation.report import image_strip  # noqa: E402
from pmg_core.evaluation.sticker_eval import StickerPipeline  # noqa: E402
from pmg_core.generator.text_encoder import MiniLMTextEncoder  # noqa: E402
from pmg_core.generator.weights import load_generator  # noqa: E402

log = logging.getLogger("make_thumbnails")
CARDS = {
    "pmg_sticker": ["grinning face", "cat face", "red heart", "pizza", "smiling face with heart-eyes", "dog face"],
    "pmg_alpha_sweep": ["grinning face", "grinning face, cat face", "cat face, animal mammal",
                        "red apple", "red apple, food fruit", "food fruit, food & drink"],
}


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(2)
    pipeline = StickerPipeline(load_generator(REPO / "models" / "pmg-sticker-generator.safetensors"), MiniLMTextEncoder())
    for name, prompts in CARDS.items():
        images = torch.cat([pipeline.generate(pipeline.encoder.encode([p]).embeddings, 5, 1, 20, 5.0) for p in prompts])
        card = image_strip(images, per_row=3).resize((384, 256))
        path = REPO / "workflows" / f"{name}.jpg"
        card.save(path, quality=90)
        log.info("wrote %s", path)


if __name__ == "__main__":
    main()
