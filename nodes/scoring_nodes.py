"""PMGScorer: score the candidates of an alpha sweep and keep the best one."""

from __future__ import annotations

import functools
import json
import logging
import os
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm

from ..pmg_core.assets import clip_tokenizer_dir
from ..pmg_core.conditioning import parse_alphas
from ..pmg_core.errors import InvalidSettingError
from ..pmg_core.history import UserHistory
from ..pmg_core.metrics import (
    CLIPScorer,
    LPIPS,
    from_comfy,
    load_image,
    pil_to_tensor,
    score_candidates,
    to_comfy,
    tradeoff_plot,
)
from ..pmg_core.safe_paths import resolve_inside
from . import comfy_paths
from .comfy_runtime import progress_callback
from .history_nodes import is_placeholder
from .types import PMGPreference, PreferenceBundle

logger = logging.getLogger(__name__)

NO_CLIP = "none"


@functools.lru_cache(maxsize=2)
def _lpips(net: str, device: str) -> LPIPS:
    # A pure function of its arguments, built once per process: scoring every user
    # of a batch must not rebuild the network each time.
    return LPIPS(net, device=device)


@functools.lru_cache(maxsize=1)
def _clip_scorer(folder: str, device: str) -> CLIPScorer:
    path = Path(folder)
    has_tokenizer = any((path / name).is_file() for name in ("tokenizer.json", "vocab.json"))
    tokenizer = path if has_tokenizer else clip_tokenizer_dir(comfy_paths.model_cache_dir())
    return CLIPScorer.from_folder(path, device=device, tokenizer_dir=tokenizer)


def candidate_alphas(alphas: list[float], count: int) -> list[float]:
    """The alpha each candidate was generated with.

    KSampler matches a condition batch of A rows to a latent batch of N images by
    tiling (``comfy.utils.repeat_to_batch_size``): image i gets row ``i mod A``.
    """
    return [alphas[i % len(alphas)] for i in range(count)]


def history_target_image(history: UserHistory) -> tuple[torch.Tensor, str] | None:
    """The target item's own image ``[1, 3, H, W]`` and its name relative to the input folder, if it has one.

    Sticker users have one (the emoji to generate); MovieLens targets do not. The path
    must lie inside ComfyUI's input folder, as the history loader requires of every
    image; anything else raises ``UnsafePathError``.
    """
    target = history.target
    if target is None or target.image_path is None:
        return None
    root = comfy_paths.input_dir()
    path = resolve_inside(root, target.image_path)
    return load_image(path), path.relative_to(root.resolve()).as_posix()


def _save_selected(cls, image: torch.Tensor, filename_prefix: str, record: dict) -> tuple[ui.SavedResult, Path]:
    """Save the selected image (PNG with the workflow metadata) and the record (JSON) under one counter."""
    output_dir = folder_paths.get_output_directory()
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        filename_prefix, output_dir, image.shape[2], image.shape[1]
    )
    os.makedirs(folder, exist_ok=True)
    stem = f"{filename}_{counter:05}_"
    pil = ui.ImageSaveHelper._convert_tensor_to_pil(image[0])
    pil.save(os.path.join(folder, f"{stem}.png"), pnginfo=ui.ImageSaveHelper._create_png_metadata(cls), compress_level=4)
    saved = ui.SavedResult(f"{stem}.png", subfolder, io.FolderType.output)
    record["selected_image"] = dict(saved)
    record["report_file"] = {"filename": f"{stem}.json", "subfolder": subfolder, "type": "output"}
    json_path = Path(folder) / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return saved, json_path


class PMGScorer(io.ComfyNode):
    """Node: score the candidates, select one by the alpha trade-off, save the record."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGScorer",
            display_name="PMG Scorer",
            category="PMG/scoring",
            description=(
                "Scores the images of an alpha sweep: closeness to the user's history images (LPIPS, SSIM) and to "
                "the target (a target image, connected or the target item's own from the history, or the target text "
                "with a CLIP model), then keeps the image that "
                "maximises alpha*log(d_pref) + (1-alpha)*log(d_target). Saves it with a JSON report."
            ),
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The candidate images, one per alpha in the order of 'alphas' (KSampler → VAE Decode)."),
                io.Image.Input("history_images", tooltip="The user's history images from PMG User History Loader."),
                io.Image.Input(
                    "target_image", optional=True,
                    tooltip=(
                        "The target item's real image (e.g. its poster), to measure accuracy by LPIPS/SSIM. "
                        "Not connected: the target item's image from the preference's history, when it has one."
                    ),
                ),
                PMGPreference.Input(
                    "preference", optional=True,
                    tooltip="The user's preference (target and preference texts, user id) for the report and CLIP scoring.",
                ),
                io.String.Input(
                    "alphas", default="0.33, 0.5, 0.67",
                    tooltip="The alphas the candidates were generated with (same text as PMG Conditioning).",
                ),
                io.Float.Input(
                    "alpha", default=0.67, min=0.0, max=1.0, step=0.01,
                    tooltip="The selection trade-off: 1 picks the image closest to the user's preference, 0 the one closest to the target.",
                ),
                io.Combo.Input(
                    "lpips_net", options=["alex", "vgg"], default="alex",
                    tooltip="The LPIPS backbone: AlexNet (the LPIPS default) or VGG16 (PMG-Bench's choice).",
                ),
                io.String.Input(
                    "filename_prefix", default="pmg/score",
                    tooltip="Where the selected image (PNG) and the report (JSON) go, relative to ComfyUI's output folder.",
                ),
                io.Combo.Input(
                    "clip_model", optional=True, options=[NO_CLIP, *comfy_paths.clip_scorer_choices()], default=NO_CLIP,
                    tooltip=(
                        "Optional: a Hugging Face CLIP folder in models/pmg (config.json + model.safetensors). With it, "
                        "closeness is CLIP similarity to the target and preference texts (the paper's measure)."
                    ),
                ),
            ],
            outputs=[
                io.Image.Output(display_name="selected", tooltip="The candidate with the best trade-off score."),
                io.Image.Output(display_name="plot", tooltip="The trade-off plot: d_pref against d_target per candidate, the selected one highlighted."),
                io.String.Output(display_name="scores_json", tooltip="The full report as JSON (every metric of every candidate)."),
            ],
        )

    @classmethod
    def execute(
        cls,
        images: torch.Tensor,
        history_images: torch.Tensor,
        alphas: str,
        alpha: float,
        lpips_net: str,
        filename_prefix: str,
        target_image: torch.Tensor | None = None,
        preference=None,
        clip_model: str = NO_CLIP,
    ) -> io.NodeOutput:
        candidates = from_comfy(images)
        sweep = candidate_alphas(parse_alphas(alphas), candidates.shape[0])
        if candidates.shape[0] != len(parse_alphas(alphas)):
            logger.warning(
                "PMG: %d candidates for %d alphas; candidate i was generated with alpha number i mod %d.",
                candidates.shape[0], len(parse_alphas(alphas)), len(parse_alphas(alphas)),
            )
        history = None
        if is_placeholder(history_images):
            logger.warning("PMG: the history has no images (white placeholder); personalisation is not measured by images.")
        else:
            history = from_comfy(history_images)
        target = None
        target_source = None
        if target_image is not None:
            if target_image.shape[0] > 1:
                logger.warning("PMG: target_image is a batch of %d; the first image is the target.", target_image.shape[0])
            target = from_comfy(target_image[:1])
            target_source = "target_image input"
        elif isinstance(preference, PreferenceBundle) and (found := history_target_image(preference.history)):
            target, name = found
            target_source = f"history target item: {name}"
            logger.info("PMG: no target_image connected; scoring user %s against the target item's image %s "
                        "(input folder) from the history.", preference.history.user_id, name)

        pref = preference.preference if isinstance(preference, PreferenceBundle) else None
        device = str(mm.get_torch_device())
        clip = None
        if clip_model and clip_model != NO_CLIP:
            clip = _clip_scorer(str(comfy_paths.resolve_clip_scorer(clip_model)), device)
        if clip is None or pref is None:
            if target is None:
                raise InvalidSettingError(
                    "PMG Scorer cannot measure closeness to the target: connect a target_image, or connect the "
                    "preference and choose a clip_model (a CLIP folder in models/pmg), or give the history's "
                    "target item an image."
                )
            if history is None:
                raise InvalidSettingError(
                    "PMG Scorer cannot measure closeness to the user's preference: the history has no images. "
                    "Add images to the history items, or connect the preference and choose a clip_model."
                )

        report = score_candidates(
            candidates,
            history_images=history,
            target_image=target,
            target_text=pref.target_text if pref else None,
            preference_text=pref.preference_text if pref else None,
            alpha=alpha,
            lpips=_lpips(lpips_net, device),
            clip=clip,
            progress=progress_callback(),
        )
        record = report.to_dict()
        record.update(
            user_id=pref.user_id if pref else None,
            target_image=target_source,  # where the target image came from (None: no image)
            candidate_alphas=sweep,
            selected_alpha=sweep[report.selected],
        )
        selected = images[report.selected : report.selected + 1]
        saved, _ = _save_selected(cls, selected, filename_prefix, record)
        plot = to_comfy(pil_to_tensor(tradeoff_plot(report)))
        return io.NodeOutput(
            selected,
            plot,
            json.dumps(record, indent=2),
            ui={"images": [saved], "pmg_scores": [record]},
        )


NODES: list[type[io.ComfyNode]] = [PMGScorer]
