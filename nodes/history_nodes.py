"""PMGUserHistoryLoader: one user's behaviours from a file in ComfyUI's input folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from comfy_api.latest import io

from ..pmg_core.errors import MissingFileError, PMGError
from ..pmg_core.history import SCENES, UserHistory
from ..pmg_core.keywords import MAX_ITEMS
from ..pmg_core.loaders import FORMATS as LOADER_FORMATS
from ..pmg_core.loaders import list_users, load_user
from ..pmg_core.metrics.images import as_batch, load_image, to_comfy
from ..pmg_core.render import render_history
from . import comfy_paths
from .node_support import fingerprint_files, validation_result
from .types import PMGHistory

logger = logging.getLogger(__name__)

FORMATS = ("auto", *LOADER_FORMATS)
SCENE_CHOICES = ("auto", *SCENES)
# History images are resized to one square size so they form one IMAGE batch; the
# scorer resizes them again to the candidates' size, as pmg_core.metrics does.
HISTORY_IMAGE_SIZE = 256
# Shown when no item has an image: ComfyUI has no empty IMAGE batch, so a single
# white image stands in (PMGScorer recognises it and skips the history metrics).
PLACEHOLDER_SIZE = 64


def placeholder_image() -> torch.Tensor:
    """The 1×64×64 white IMAGE that stands for "this history has no images"."""
    return torch.ones(1, PLACEHOLDER_SIZE, PLACEHOLDER_SIZE, 3)


def is_placeholder(images: torch.Tensor) -> bool:
    """True for :func:`placeholder_image` (one all-white 64×64 image)."""
    return (
        images.ndim == 4
        and tuple(images.shape[:3]) == (1, PLACEHOLDER_SIZE, PLACEHOLDER_SIZE)
        and bool((images == 1).all())
    )


def history_images(history: UserHistory) -> torch.Tensor:
    """The history items' images as one ComfyUI IMAGE batch ``[N, 256, 256, 3]`` (placeholder if none)."""
    paths = history.images
    if not paths:
        logger.warning(
            "PMG: user %s has no history images; history_images is a 1x64x64 white placeholder "
            "(add an image path to the items to score personalisation against them).",
            history.user_id,
        )
        return placeholder_image()
    batch = as_batch([load_image(path) for path in paths], "history images", (HISTORY_IMAGE_SIZE, HISTORY_IMAGE_SIZE))
    return to_comfy(batch)


def _history_outputs() -> list:
    """The loader's outputs: the behaviours for the LLM, their text, and their images for PMG Scorer."""
    return [
        PMGHistory.Output(
            display_name="history",
            tooltip="The user's behaviours (PMG_HISTORY), for PMG Preference Extractor.",
        ),
        io.String.Output(
            display_name="history_text",
            tooltip="The behaviours rendered as the text the LLM reads.",
        ),
        io.Image.Output(
            display_name="history_images",
            tooltip=(
                f"The items' images resized to {HISTORY_IMAGE_SIZE}x{HISTORY_IMAGE_SIZE}, for PMG Scorer; "
                f"a single white {PLACEHOLDER_SIZE}x{PLACEHOLDER_SIZE} image when no item has one."
            ),
        ),
    ]


class PMGUserHistoryLoader(io.ComfyNode):
    """Node: a user's behaviours from a history file in ComfyUI's input folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGUserHistoryLoader",
            display_name="PMG User History Loader",
            category="PMG/history",
            description=(
                "Loads one user's behaviours (watched movies, clicked garments, sent stickers, a chat) from a "
                "history file in ComfyUI's input folder, renders them as text and collects their images."
            ),
            inputs=[
                io.Combo.Input(
                    "history_file",
                    options=comfy_paths.history_files(),
                    # No upload= flag: the pack's own buttons (web/js/pmg_history_upload.js) upload
                    # through a route that checks the file first; a stock upload would not.
                    tooltip=(
                        "A history file (.jsonl, .csv, .json, .txt, or a MovieLens/RecBole .inter) in ComfyUI's "
                        "input folder or one subfolder of it (e.g. pmg/users.jsonl). Add one with the upload "
                        "buttons below or by dropping it on the node; refresh (R) after copying files in by hand."
                    ),
                ),
                io.Combo.Input(
                    "format",
                    options=list(FORMATS),
                    default="auto",
                    tooltip="The file's format; 'auto' decides from the extension and content.",
                ),
                io.String.Input(
                    "user_id",
                    default="",
                    tooltip="Which user to load; empty takes the first user of the file.",
                ),
                io.Int.Input(
                    "max_items",
                    default=0,
                    min=0,
                    max=10000,
                    tooltip=(
                        "Keep at most this many history items (the most recent); 0 keeps them all. PMG Preference "
                        f"Extractor's LLM reads at most the {MAX_ITEMS} most recent either way."
                    ),
                ),
                io.Combo.Input(
                    "scene",
                    options=list(SCENE_CHOICES),
                    default="auto",
                    tooltip=(
                        "The kind of items, which picks the prompts and templates (movie, clothing, sticker, "
                        "generic); 'auto' keeps the scene the file declares."
                    ),
                ),
            ],
            outputs=_history_outputs(),
        )

    @classmethod
    def validate_inputs(cls, history_file: str) -> bool | str:
        return validation_result(lambda: comfy_paths.resolve_history_file(history_file))

    @classmethod
    def fingerprint_inputs(
        cls, history_file: str, format: str = "auto", user_id: str = "", max_items: int = 0, scene: str = "auto", **_
    ) -> str:
        # Re-run when the file's content changes, even if its name stays the same, and when
        # an image it names changes (history_images, and the scorer's target image, come
        # from those files), as ComfyUI's LoadImage does for its image.
        return fingerprint_files(lambda: _history_and_image_files(history_file, format, user_id, max_items, scene))

    @classmethod
    def execute(cls, history_file: str, format: str, user_id: str, max_items: int, scene: str) -> io.NodeOutput:
        path = comfy_paths.resolve_history_file(history_file)
        history = _load(path, history_file, format, user_id, max_items, scene)
        return io.NodeOutput(history, render_history(history), history_images(history))


def _history_and_image_files(history_file: str, format: str, user_id: str, max_items: int, scene: str) -> list[Path]:
    """The history file, then the images of the user it loads (the file alone when it does not load: execute says why)."""
    path = comfy_paths.resolve_history_file(history_file)
    try:
        history = _load(path, history_file, format, user_id, max_items, scene)
    except PMGError:
        return [path]
    target = history.target.image_path if history.target is not None else None
    return [path, *history.images, *([target] if target is not None else [])]


def _load(path, history_file: str, format: str, user_id: str, max_items: int, scene: str) -> UserHistory:
    """The user ``user_id`` of the history file at ``path`` (the file's first user if empty)."""
    user_id = (user_id or "").strip()
    if not user_id:
        users = list_users(path, fmt=format)
        if not users:
            raise MissingFileError(f"History file {history_file!r} holds no users; check its content.")
        user_id = users[0]
        logger.info("PMG: no user_id given; loading the first user of %s: %s", history_file, user_id)
    return load_user(
        path,
        user_id,
        fmt=format,
        scene=None if scene == "auto" else scene,
        max_items=max_items or None,
        # Images a history file names must lie in the input folder too.
        image_root=comfy_paths.input_dir(),
    )


NODES: list[type[io.ComfyNode]] = [PMGUserHistoryLoader]
