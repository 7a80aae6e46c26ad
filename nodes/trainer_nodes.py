"""PMGSoftPromptTrainer: train a soft-prompt adapter inside ComfyUI, from the loaded checkpoint.

The node adapts ComfyUI's MODEL / CLIP / VAE to the library's frozen generator parts
(:func:`.trainer_components.comfy_generator`), calls the library's one entry point
:func:`pmg_core.training.run.train_adapter` on every user of a history file whose
target item has an image (checkpoint policy included), and saves the
adapter to ``models/pmg/adapters/<adapter_name>.safetensors``, where PMG Soft Prompt
Encoder lists it. The run folder (resumable checkpoint, ``loss.csv``,
``loss_curve.png``) lives in ``<user>/pmg_cache/training/<adapter_name>/``, so a
cancelled run continues where it stopped when queued again.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..pmg_core.atomic import copy_atomic
from ..pmg_core.errors import InvalidSettingError
from ..pmg_core.loaders import load_histories
from ..pmg_core.training.data import build_examples
from ..pmg_core.training.run import train_adapter
from ..pmg_core.training.trainer import TrainConfig
from . import comfy_paths
from .comfy_runtime import llm_on_compute_device, progress_callback
from .node_support import comfy_image, fingerprint_files, node_ui, validation_result
from .trainer_components import FLUX_GUIDANCE, comfy_generator, make_autograd_ready
from .types import PMGLLM

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def checked_adapter_name(name: str) -> str:
    """The adapter's file stem: letters, digits, ``_ . -`` (no folders, no extension needed)."""
    stem = name.strip()
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    if not _NAME.match(stem) or ".." in stem:
        raise InvalidSettingError(
            f"Adapter name {name!r} is not usable as a file name; use letters, digits, '_', '.' and '-' "
            "(e.g. 'stickers_v1'); it is saved as models/pmg/adapters/<name>.safetensors."
        )
    return stem


def adapter_destination(stem: str) -> Path:
    """``<first models/pmg/adapters folder>/<stem>.safetensors``."""
    comfy_paths.register_model_folders()
    folders = folder_paths.get_folder_paths(comfy_paths.ADAPTER_FOLDER_KEY)
    folder = Path(folders[0])
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stem}.safetensors"


def _training_settings() -> list:
    """The trainer's settings: optimisation, the adapter's size (k, m) and the seed; the public recipe's values as defaults."""
    return [
        io.Int.Input("steps", default=200, min=1, max=1_000_000, tooltip="Optimizer steps to train in total."),
        io.Float.Input(
            "learning_rate", default=5e-6, min=1e-8, max=1.0, step=1e-6, round=False,
            tooltip="AdamW learning rate (the public recipe uses 5e-6 for 3 epochs of a large data set; "
            "small sets with few steps need more, e.g. 1e-4).",
        ),
        io.Int.Input("batch_size", default=6, min=1, max=256, tooltip="Users per micro-batch (recipe: 6)."),
        io.Int.Input(
            "grad_accum", default=4, min=1, max=256,
            tooltip="Micro-batches per optimizer step (recipe: 4, i.e. 24 users per step).",
        ),
        io.Int.Input(
            "resolution", default=512, min=64, max=2048, step=8,
            tooltip="Target images are centre-cropped and resized to this square size (recipe: 512).",
        ),
        io.Float.Input(
            "negative_weight", default=0.5, min=0.0, max=2.0, step=0.05,
            tooltip="Weight of the loss on a random other user's target, subtracted (recipe: 0.5; 0 = plain loss).",
        ),
        io.Int.Input("num_image_tokens", default=4, min=1, max=64, tooltip="k, the number of soft embeddings per user."),
        io.Int.Input("num_prefix", default=4, min=1, max=64, tooltip="m, P-Tuning v2 prefix vectors per LLM layer."),
        io.Int.Input(
            "seed", default=0, min=0, max=0xFFFFFFFF,
            tooltip="Seeds the adapter's initialisation, the data order, negatives, noise and timesteps.",
        ),
    ]


class PMGSoftPromptTrainer(io.ComfyNode):
    """Node: train a soft-prompt adapter inside ComfyUI and save it into models/pmg/adapters."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGSoftPromptTrainer",
            display_name="PMG Soft Prompt Trainer",
            category="PMG/training",
            description=(
                "Trains PMG's soft-prompt adapter (image tokens, prefix, bridge) with the LLM and the checkpoint "
                "frozen: for every user of the history file, the soft embeddings should help the checkpoint denoise "
                "the user's target image and not a random other user's. Saves models/pmg/adapters/<adapter_name>.safetensors "
                "for PMG Soft Prompt Encoder. Cancelling keeps a checkpoint; queue again to continue."
            ),
            is_output_node=True,
            inputs=[
                io.Combo.Input(
                    "history_file",
                    options=comfy_paths.history_files(),
                    tooltip=(
                        "A history file in ComfyUI's input folder; every user whose target item has an image is a "
                        "training example (e.g. pmg_stickers/history.jsonl). Users without one stop the run with a message."
                    ),
                ),
                PMGLLM.Input("llm", tooltip="The language model from PMG LLM Loader (stays frozen)."),
                io.Model.Input(
                    "model",
                    tooltip="The checkpoint's diffusion model (SD1.x, SD2.x, SDXL, SD3 or Flux; stays frozen).",
                ),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: encodes the target captions and sets the embedding width."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE: encodes the target images into latents."),
                *_training_settings(),
                io.String.Input(
                    "adapter_name", default="pmg_adapter",
                    tooltip="File name of the trained adapter in models/pmg/adapters (letters, digits, _ . -).",
                ),
                io.Boolean.Input(
                    "resume", default=True,
                    tooltip="Continue this adapter's unfinished run (same settings) instead of starting over.",
                ),
                io.Float.Input(
                    "flux_guidance", default=FLUX_GUIDANCE, min=0.0, max=100.0, step=0.1, optional=True,
                    tooltip="Flux only: the guidance value the model is given while training (as FluxGuidance sets "
                    "it when sampling; 3.5 is ComfyUI's default). Other families ignore it.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="adapter_path", tooltip="Where the trained adapter was saved."),
                io.Image.Output(display_name="loss_curve", tooltip="The training loss per optimizer step."),
            ],
        )

    @classmethod
    def validate_inputs(cls, history_file: str, adapter_name: str) -> bool | str:
        return validation_result(
            lambda: comfy_paths.resolve_history_file(history_file), lambda: checked_adapter_name(adapter_name),
        )

    @classmethod
    def fingerprint_inputs(cls, history_file: str, **_) -> str:
        # A changed history file must retrain, not return the cached result.
        return fingerprint_files(lambda: [comfy_paths.resolve_history_file(history_file)])

    @classmethod
    def execute(
        cls,
        history_file: str,
        llm,
        model,
        clip,
        vae,
        steps: int,
        learning_rate: float,
        batch_size: int,
        grad_accum: int,
        resolution: int,
        negative_weight: float,
        num_image_tokens: int,
        num_prefix: int,
        seed: int,
        adapter_name: str,
        resume: bool,
        flux_guidance: float = FLUX_GUIDANCE,
    ) -> io.NodeOutput:
        stem = checked_adapter_name(adapter_name)
        histories = list(load_histories(comfy_paths.resolve_history_file(history_file)).values())
        examples = build_examples(histories, seed=seed)
        config = TrainConfig(
            learning_rate=float(learning_rate),
            batch_size=batch_size,
            grad_accum=grad_accum,
            resolution=resolution,
            negative_weight=float(negative_weight),
            seed=seed,
            max_steps=steps,
        )
        run_dir = comfy_paths.cache_dir("training") / stem

        # ComfyUI executes nodes under torch.inference_mode(); training needs autograd.
        with torch.inference_mode(False), torch.enable_grad(), llm_on_compute_device(llm, keep_loaded=False):
            generator = comfy_generator(model, clip, vae, flux_guidance=float(flux_guidance))
            replaced = make_autograd_ready(llm.model)
            if replaced:
                logger.info("PMG: made %d LLM tensors usable by autograd", replaced)
            result = train_adapter(
                llm, generator, examples, run_dir, config, num_image_tokens=num_image_tokens,
                num_prefix=num_prefix, existing="resume" if resume else "restart", progress=progress_callback(),
            )

        return cls._publish(stem, result)

    @classmethod
    def _publish(cls, stem: str, result) -> io.NodeOutput:
        """Copy the adapter into models/pmg/adapters; the node's outputs (path, loss curve) and its text summary."""
        from PIL import Image

        destination = adapter_destination(stem)
        copy_atomic(result.adapter_path, destination)  # the encoder never sees a half-written adapter
        logger.info(
            "PMG: trained %s for %d steps (loss %.4f -> %.4f) -> %s",
            stem, result.steps, result.first_loss_mean, result.final_loss_mean, destination,
        )
        with Image.open(result.loss_curve) as picture:
            curve = comfy_image(picture)
        summary = (
            f"{stem}: {result.steps} steps on {result.examples} users, loss (mean of 10) "
            f"{result.first_loss_mean:.4f} -> {result.final_loss_mean:.4f}; {result.seconds_per_step:.2f} s/step\n"
            f"saved {destination}"
        )
        preview = ui.PreviewImage(curve, cls=cls).as_dict()
        return io.NodeOutput(str(destination), curve, ui={**preview, **node_ui(text=summary)})


NODES: list[type[io.ComfyNode]] = [PMGSoftPromptTrainer]
