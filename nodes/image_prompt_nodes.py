"""PMGImagePromptEncoder: a user's history images as tokens PMG Conditioning takes like the soft prompt."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..pmg_core.errors import EmbeddingValueError
from ..pmg_core.image_prompt import load_image_prompt
from . import comfy_paths
from .comfy_text_encoder import ComfyTextEncoder
from .node_support import checked_soft_prompt, fingerprint_files, validation_result
from .types import PMGSoftPrompt, SoftPrompt

logger = logging.getLogger(__name__)


class PMGImagePromptEncoder(io.ComfyNode):
    """Node: history images → k tokens in the checkpoint CLIP's width (IP-Adapter's idea, PMG's condition)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGImagePromptEncoder",
            display_name="PMG Image Prompt Encoder",
            category="PMG/conditioning",
            description=(
                "Turns the user's history images into k tokens of the checkpoint's text width: a frozen LPIPS "
                "AlexNet backbone reads the images, a projection trained for this model maps their mean features "
                "to tokens. PMG Conditioning takes them like the soft prompt; given a soft prompt too, both token "
                "sets go out together."
            ),
            inputs=[
                io.Image.Input("history_images", tooltip="The user's history images (the history loader's images output)."),
                io.Combo.Input(
                    "projection", options=comfy_paths.image_prompt_choices(),
                    tooltip="An image prompt projection trained for this model (.safetensors in models/pmg/image_prompts; "
                            "pmg eval --train-image-prompt writes one).",
                ),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: the projection must write tokens of its text width."),
                PMGSoftPrompt.Input(
                    "soft_prompt", optional=True,
                    tooltip=(
                        "Optional: PMG Soft Prompt Encoder's tokens; the output is [soft tokens | image tokens] "
                        "(PMG + image prompt)."
                    ),
                ),
            ],
            outputs=[
                PMGSoftPrompt.Output(
                    display_name="soft_prompt",
                    tooltip="The image tokens [1, k, D] (after the soft tokens when given), for PMG Conditioning's soft_prompt.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, projection: str, soft_prompt=None) -> bool | str:
        return validation_result(
            lambda: comfy_paths.resolve_image_prompt(projection), lambda: checked_soft_prompt(soft_prompt),
        )

    @classmethod
    def fingerprint_inputs(cls, projection: str, **_) -> str:
        return fingerprint_files(lambda: [comfy_paths.resolve_image_prompt(projection)])

    @classmethod
    def execute(cls, history_images: torch.Tensor, projection: str, clip, soft_prompt: SoftPrompt | None = None) -> io.NodeOutput:
        if history_images.ndim != 4 or history_images.shape[0] == 0:
            raise EmbeddingValueError("history_images is empty; connect the images output of PMG User History Loader.")
        soft_prompt = checked_soft_prompt(soft_prompt)
        prompt = load_image_prompt(comfy_paths.resolve_image_prompt(projection), width=ComfyTextEncoder(clip).width)
        tokens = prompt.encode(history_images[..., :3].movedim(-1, 1).float().cpu())
        metadata = {"image_prompt": projection, "history_images": str(int(history_images.shape[0]))}
        if soft_prompt is not None:
            tokens = torch.cat([soft_prompt.embeddings.float().cpu(), tokens], dim=1)
            metadata = {**soft_prompt.metadata, **metadata}
        logger.info("PMG: %d image prompt tokens from %d history images", prompt.projection.tokens, history_images.shape[0])
        return io.NodeOutput(SoftPrompt(tokens, metadata))


NODES = [PMGImagePromptEncoder]
