"""PMGSoftPromptEncoder and PMGConditioning: from a user's preference to CONDITIONING."""

from __future__ import annotations

import logging

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..pmg_core.conditioning import (
    MAX_ALPHAS,
    MAX_TEXT_WINDOWS,
    MAX_TEXT_WINDOWS_LIMIT,
    WINDOW_TOKENS,
    ConditionWeights,
    build_conditions,
    negative_conditions,
    parse_alphas,
)
from ..pmg_core.errors import EmbeddingValueError, InvalidSettingError
from ..pmg_core.render import negative_prompt
from ..pmg_core.soft_prompt import AdapterSource, encode_cached
from . import comfy_paths
from .comfy_runtime import llm_activity, llm_on_compute_device
from .comfy_text_encoder import ComfyTextEncoder
from .node_support import checked_soft_prompt, fingerprint_files, node_ui, preference_bundle, validation_result
from .types import PMGAlphas, PMGPreference, PMGSoftPrompt, SoftPrompt

logger = logging.getLogger(__name__)

# Adapter choices that name no file: nothing to resolve, nothing to fingerprint.
_NO_FILE_ADAPTERS = (comfy_paths.KEYWORDS_ONLY_ADAPTER, comfy_paths.RANDOM_ADAPTER, comfy_paths.LEGACY_UNTRAINED_ADAPTER)


def _adapter_choice(adapter: str) -> str:
    """The adapter choice, with the pre-rename ``none (untrained)`` read as keywords only (logged)."""
    if adapter == comfy_paths.LEGACY_UNTRAINED_ADAPTER:
        logger.warning(
            "PMG Soft Prompt Encoder: adapter %r (a workflow saved before the choices were renamed) now means %r: "
            "no soft tokens, the keywords alone condition the image. It used to give RANDOM soft tokens; pick %r "
            "to keep that research behaviour, or a trained adapter from models/pmg/adapters for real soft tokens.",
            adapter, comfy_paths.KEYWORDS_ONLY_ADAPTER, comfy_paths.RANDOM_ADAPTER,
        )
        return comfy_paths.KEYWORDS_ONLY_ADAPTER
    return adapter


def _no_soft_prompt(user_id: str) -> SoftPrompt:
    """The keywords-only soft prompt: no tokens, which PMG Conditioning reads as 'no soft part'."""
    return SoftPrompt(torch.zeros(1, 0, 0), {"user_id": user_id, "adapter": comfy_paths.KEYWORDS_ONLY_ADAPTER,
                                              "num_image_tokens": "0"})


class PMGSoftPromptEncoder(io.ComfyNode):
    """Node: a user's soft preference embeddings in the checkpoint CLIP's width."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGSoftPromptEncoder",
            display_name="PMG Soft Prompt Encoder",
            category="PMG/conditioning",
            description=(
                "Turns the user's behaviours into k implicit preference embeddings (PMG's soft prompt): the LLM "
                "reads the history with a trained soft-prompt adapter and a bridge maps its hidden states into the "
                "checkpoint's text-embedding space. Without an adapter it gives no soft tokens (keywords only, as "
                "the PMG reference ships). Results are cached on disk per user, adapter and LLM."
            ),
            inputs=[
                PMGPreference.Input("preference", tooltip="The user's preference from PMG Preference Extractor."),
                io.Combo.Input(
                    "adapter",
                    options=comfy_paths.adapter_choices(),
                    default=comfy_paths.KEYWORDS_ONLY_ADAPTER,
                    tooltip=(
                        f"A soft-prompt adapter trained with pmg train (.safetensors in models/pmg/adapters) for this LLM and "
                        f"checkpoint family. '{comfy_paths.KEYWORDS_ONLY_ADAPTER}': no soft tokens, the keywords alone "
                        f"condition the image. '{comfy_paths.RANDOM_ADAPTER}': a seeded random adapter, for research "
                        "only (its tokens carry no learned preference and degrade the images)."
                    ),
                ),
                io.Clip.Input(
                    "clip",
                    tooltip=(
                        "The checkpoint's CLIP: its text width (768 SD1.x, 1024 SD2.x, 2048 SDXL, 4096 SD3/Flux) "
                        "sizes the embeddings."
                    ),
                ),
                io.Int.Input(
                    "num_image_tokens", default=4, min=1, max=64,
                    tooltip=(
                        f"k, the number of soft embeddings of the '{comfy_paths.RANDOM_ADAPTER}' adapter (a trained "
                        "one fixes its own k)."
                    ),
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFF,
                    tooltip=f"Seed of the '{comfy_paths.RANDOM_ADAPTER}' adapter's weights (ignored otherwise).",
                ),
            ],
            outputs=[
                PMGSoftPrompt.Output(
                    display_name="soft_prompt",
                    tooltip=(
                        "The user's soft embeddings [1, k, D] with their provenance (PMG_SOFT_PROMPT), for PMG "
                        "Conditioning; empty (k = 0) without an adapter."
                    ),
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, adapter: str, preference=None) -> bool | str:
        return validation_result(lambda: _check_encoder_inputs(adapter, preference))

    @classmethod
    def fingerprint_inputs(cls, adapter: str, **_) -> str:
        if adapter in _NO_FILE_ADAPTERS:
            return adapter
        return fingerprint_files(lambda: [comfy_paths.resolve_adapter(adapter)])

    @classmethod
    def execute(cls, preference, adapter: str, clip, num_image_tokens: int, seed: int) -> io.NodeOutput:
        bundle = preference_bundle(preference)
        adapter = _adapter_choice(adapter)
        user_id = bundle.preference.user_id
        if adapter == comfy_paths.KEYWORDS_ONLY_ADAPTER:
            logger.info("PMG: no soft prompt for user %s (keywords only)", user_id)
            ui = node_ui(pmg_soft_prompt={"user_id": user_id, "adapter": adapter, "num_image_tokens": 0})
            return io.NodeOutput(_no_soft_prompt(user_id), ui=ui)
        llm = bundle.llm
        if llm is None:
            raise EmbeddingValueError(
                "This preference carries no LLM; connect the preference output of PMG Preference Extractor, "
                "whose LLM the soft-prompt adapter runs on."
            )
        width = ComfyTextEncoder(clip).width
        random_adapter = adapter == comfy_paths.RANDOM_ADAPTER
        if random_adapter:
            logger.warning("PMG: soft prompt of user %s from a RANDOM adapter (research option): its tokens carry "
                           "no learned preference.", user_id)
        adapter_path = None if random_adapter else comfy_paths.resolve_adapter(adapter)
        result = encode_cached(
            llm, [bundle.preference.soft_prompt_text], AdapterSource(adapter_path, num_image_tokens, seed), width,
            cache_dir=comfy_paths.cache_root(),
            placement=lambda: llm_on_compute_device(llm, keep_loaded=bundle.keep_model_loaded),
        )
        logger.info("PMG: soft prompt of user %s (%s)", user_id, "from the cache" if result.cached[0] else "computed")
        metadata = {**result.metadata, "user_id": user_id, "adapter": adapter,
                    "cache_key": result.cache_keys[0], "cached": str(result.cached[0]).lower()}
        ui = node_ui(pmg_soft_prompt={"user_id": user_id, "adapter": adapter, "cached": bool(result.cached[0]),
                                      "llm": llm_activity(llm)})
        return io.NodeOutput(SoftPrompt(result.embeddings, metadata), ui=ui)


def _check_encoder_inputs(adapter: str, preference) -> None:
    """PMG Soft Prompt Encoder's checks before the graph runs: the preference's type, the adapter file."""
    preference_bundle(preference)
    if _adapter_choice(adapter) not in (comfy_paths.KEYWORDS_ONLY_ADAPTER, comfy_paths.RANDOM_ADAPTER):
        comfy_paths.resolve_adapter(adapter)


def _check_payloads(preference, soft_prompt) -> None:
    """PMG Conditioning's check before the graph runs: its PMG sockets hold what they carry."""
    preference_bundle(preference)
    checked_soft_prompt(soft_prompt)


def _text(override: str | None, fallback: str | None) -> str | None:
    return override if override is not None and override.strip() else fallback


def _no_target_message(pref) -> str:
    """Why PMG Conditioning has no target prompt, and the two ways to give one."""
    if pref is None:
        return (
            "PMG Conditioning has no target prompt: connect a preference from PMG Preference Extractor "
            "or type a target_text."
        )
    return (
        f"User {pref.user_id!r} has no target item, so PMG Conditioning has nothing to generate for. "
        "Give one: add a \"target\" to that user in the history file (JSONL: \"target\": {\"item_id\": ..., "
        "\"title\": ...}; CSV: a row with role=target; see docs/HISTORY_FORMATS.md), or type the target "
        "prompt into PMG Conditioning's target_text input."
    )


def comfy_conditioning(embeddings: torch.Tensor, pooled: torch.Tensor | None) -> list:
    """ComfyUI's CONDITIONING: one entry whose tensor is the whole batch ``[A, T, D]``.

    A stock KSampler matches a condition batch to the latent batch row by row
    (``comfy.utils.repeat_to_batch_size``), so a latent batch of A gives image i
    the condition of alpha i.
    """
    extras = {"pooled_output": pooled} if pooled is not None else {}
    return [[embeddings, extras]]


def _condition_sources() -> list:
    """PMG Conditioning's inputs that say what is encoded: the CLIP, the preference, the soft tokens."""
    return [
        io.Clip.Input("clip", tooltip="The checkpoint's CLIP text encoder (SD1.x, SD2.x, SDXL, SD3 or Flux)."),
        PMGPreference.Input(
            "preference", optional=True,
            tooltip="The user's preference from PMG Preference Extractor (target, preference and negative texts).",
        ),
        PMGSoftPrompt.Input(
            "soft_prompt", optional=True,
            tooltip=(
                "The user's soft embeddings from PMG Soft Prompt Encoder; leave it unconnected (or give the "
                "encoder's keywords-only output) for keywords only."
            ),
        ),
    ]


def _part_weights() -> list:
    """PMG Conditioning's weight of each part of the condition (w_t, w_i, w_p)."""
    return [
        io.Float.Input(
            "w_target", default=1.0, min=0.0, max=10.0, step=0.05,
            tooltip="w_t: weight of the target-keyword embeddings.",
        ),
        io.Float.Input(
            "w_soft", default=1.0, min=0.0, max=10.0, step=0.05,
            tooltip="w_i: weight of the soft preference embeddings.",
        ),
        io.Float.Input(
            "w_preference", default=1.0, min=0.0, max=10.0, step=0.05,
            tooltip="w_p: weight of the preference-keyword embeddings.",
        ),
    ]


def _sweep_and_texts() -> list:
    """PMG Conditioning's alpha sweep, its text overrides and the bound on a text's length."""
    return [
        io.String.Input(
            "alphas", default="0.33, 0.5, 0.67",
            tooltip=(
                f"Balance values in [0, 1], comma-separated, at most {MAX_ALPHAS}; one image per value. "
                "The target part is scaled by 2(1-a), the preference parts by 2a; 0.5 is the plain "
                "concatenation."
            ),
        ),
        io.String.Input(
            "target_text", optional=True, default="", multiline=True,
            tooltip="Overrides the target prompt of the preference (empty keeps it).",
        ),
        io.String.Input(
            "preference_text", optional=True, default="", multiline=True,
            tooltip="Overrides the preference keywords text (empty keeps the preference's).",
        ),
        io.Int.Input(
            # A socket, not a widget: rarely changed, and saved workflows keep their widget list.
            "max_text_windows", optional=True, default=MAX_TEXT_WINDOWS, min=1, max=MAX_TEXT_WINDOWS_LIMIT,
            force_input=True,
            tooltip=(
                f"Optional: the longest a text part (target, preference) may be, in encoder windows of "
                f"{WINDOW_TOKENS} tokens ({MAX_TEXT_WINDOWS} when not connected); a longer text is refused "
                "with its length, so one prompt cannot stall the sampler. Connect an Int to raise it."
            ),
        ),
    ]


def _condition_outputs() -> list:
    """PMG Conditioning's outputs: both conditions, the batch size and the alphas, for KSampler and PMG Scorer."""
    return [
        io.Conditioning.Output(
            display_name="positive",
            tooltip="One condition per alpha as a batch [A, T, D] (plus pooled [A, P]), for KSampler's positive.",
        ),
        io.Conditioning.Output(
            display_name="negative",
            tooltip="The scene's negative prompt, same shape as positive, for KSampler's negative.",
        ),
        io.Int.Output(
            display_name="batch_size",
            tooltip="A, the number of alphas: wire it into Empty Latent Image's batch_size.",
        ),
        PMGAlphas.Output(
            display_name="alphas",
            tooltip="The alpha of each condition row, in order: wire it into PMG Scorer's alphas.",
        ),
    ]


class PMGConditioning(io.ComfyNode):
    """Node: PMG's condition, one row per alpha, for the stock KSampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGConditioning",
            display_name="PMG Conditioning",
            category="PMG/conditioning",
            description=(
                "Builds PMG's condition: target-keyword embeddings, soft preference embeddings and preference-"
                "keyword embeddings side by side, one row per alpha (0 = only the target, 1 = only the user's "
                "preference). Set the empty latent's batch size to the batch_size output to get one image per alpha."
            ),
            # The order of the inputs is the order of the widgets saved workflows hold.
            inputs=[*_condition_sources(), *_part_weights(), *_sweep_and_texts()],
            outputs=_condition_outputs(),
        )

    @classmethod
    def validate_inputs(cls, preference=None, soft_prompt=None) -> bool | str:
        """A value typed into an API prompt where a preference or soft prompt belongs is refused before anything runs."""
        return validation_result(lambda: _check_payloads(preference, soft_prompt))

    @classmethod
    def execute(
        cls,
        clip,
        w_target: float,
        w_soft: float,
        w_preference: float,
        alphas: str,
        preference=None,
        soft_prompt: SoftPrompt | None = None,
        target_text: str = "",
        preference_text: str = "",
        max_text_windows: int = MAX_TEXT_WINDOWS,
    ) -> io.NodeOutput:
        bundle = preference_bundle(preference)
        pref = bundle.preference if bundle is not None else None
        target = _text(target_text, pref.target_text if pref else None)
        if not target:
            raise InvalidSettingError(_no_target_message(pref))
        preference_words = _text(preference_text, pref.preference_text if pref else None)
        negative_text = pref.negative_prompt if pref else negative_prompt("generic")

        encoder = ComfyTextEncoder(clip)
        soft_prompt = checked_soft_prompt(soft_prompt)
        # The encoder's keywords-only output has no tokens: the condition then holds no soft part.
        soft = soft_prompt.embeddings if soft_prompt is not None and soft_prompt.num_tokens else None
        weights = ConditionWeights(target=w_target, soft=w_soft, preference=w_preference)
        # Cancel is honoured between encodes too (ComfyUI's CLIP layers check it within each encode).
        interrupt = mm.throw_exception_if_processing_interrupted
        positive = build_conditions(
            encoder, target, preference_words, soft, weights, parse_alphas(alphas),
            max_windows=max_text_windows, check_interrupt=interrupt,
        )
        negative = negative_conditions(encoder, negative_text, positive, max_text_windows, interrupt)
        logger.info(
            "PMG: condition of %d alpha(s) %s, parts %s",
            len(positive.alphas), positive.alphas, positive.segments,
        )
        return io.NodeOutput(
            comfy_conditioning(positive.embeddings, positive.pooled),
            comfy_conditioning(negative.embeddings, negative.pooled),
            len(positive.alphas),
            tuple(positive.alphas),
        )


NODES: list[type[io.ComfyNode]] = [PMGSoftPromptEncoder, PMGConditioning]
