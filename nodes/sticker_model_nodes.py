"""PMGStickerGeneratorLoader: the sticker generator trained by this project, as MODEL, CLIP and VAE."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..pmg_core.sticker_model.weights import FILE_NAME
from . import comfy_paths
from .node_support import validation_result
from .sticker_family import load_sticker_family

logger = logging.getLogger(__name__)


class PMGStickerGeneratorLoader(io.ComfyNode):
    """Node: the PMG sticker generator (a small text-to-sticker diffusion model) for the stock sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        choices = comfy_paths.generator_choices()
        return io.Schema(
            node_id="PMGStickerGeneratorLoader",
            display_name="PMG Sticker Generator Loader",
            category="PMG/loaders",
            description=(
                "Loads the PMG sticker generator: a small text-to-image diffusion model trained by this pack on the "
                "Twemoji images (64x64 stickers, MiniLM text encoder, 16-channel latents). Its MODEL, CLIP and VAE "
                "work with the stock CLIPTextEncode, EmptyLatentImage, KSampler and VAEDecode and with every PMG node."
            ),
            inputs=[
                io.Combo.Input(
                    "generator",
                    options=choices,
                    default=FILE_NAME if FILE_NAME in choices else None,
                    tooltip=(
                        f"A generator file from models/pmg/generators or the pack's models/generators folder ({FILE_NAME} ships "
                        "with the pack; pmg train-generator writes new ones)."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="The denoiser, for KSampler (64x64 images: 8x8 latents)."),
                io.Clip.Output(
                    display_name="CLIP", tooltip="all-MiniLM-L6-v2 text encoder (384 wide), for CLIPTextEncode and PMG nodes.",
                ),
                io.Vae.Output(display_name="VAE", tooltip="The TAESD-layout autoencoder, for VAEDecode and VAEEncode."),
            ],
        )

    @classmethod
    def validate_inputs(cls, generator: str) -> bool | str:
        return validation_result(lambda: comfy_paths.resolve_generator(generator))

    @classmethod
    def execute(cls, generator: str) -> io.NodeOutput:
        path = comfy_paths.resolve_generator(generator)
        model, clip, vae = load_sticker_family(path)
        logger.info("PMG: loaded sticker generator %s", path)
        return io.NodeOutput(model, clip, vae)


NODES = [PMGStickerGeneratorLoader]
