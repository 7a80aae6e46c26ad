"""A tiny random CLIP folder: what PMG Scorer measures with when no real CLIP can be installed.

No registry package ships CLIP weights, and MovieLens has no posters: without a CLIP the
scorer has nothing to compare a movie user's images with. ``install_default_models``
(``pmg serve``, the demo, the test server) therefore installs this one into ``models/pmg/``. Its similarities are
meaningless (random weights); loading, preprocessing and batching go through the same
code as a real CLIP (``openai/clip-vit-base-patch32`` folder layout, real tokenizer).
"""

from __future__ import annotations

from pathlib import Path

TINY_CLIP_NAME = "pmg-tiny-clip"


def save_tiny_clip(folder: Path | str, seed: int = 0) -> Path:
    """Write a seeded tiny ``CLIPModel`` (32-px images, 16-d joint space) and the CLIP tokenizer to ``folder``.

    Written into a temporary sibling and renamed, so a reader never sees half a folder.
    Returns ``folder``; an existing complete folder is kept as it is.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from pmg_core.assets import clip_tokenizer_dir
    from pmg_core.atomic import atomic_path

    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    config = CLIPConfig(text_config=small, vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16)
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's global RNG
        torch.manual_seed(seed)
        model = CLIPModel(config)
    with atomic_path(folder) as temporary:  # another process that finished first wins
        model.save_pretrained(temporary, safe_serialization=True)
        CLIPTokenizer.from_pretrained(clip_tokenizer_dir(), local_files_only=True).save_pretrained(temporary)
    return folder
