"""PMGLLMLoader and PMGPreferenceExtractor: the language-model half of PMG."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..pmg_core.keywords import MAX_ITEMS, KeywordExtractor
from ..pmg_core.llm import open_llm
from ..pmg_core.llm_precision import DTYPE_CHOICES
from . import comfy_paths
from .node_support import checked_history, node_ui, validation_result
from .comfy_runtime import (
    DEVICE_CHOICES,
    llm_activity,
    llm_on_compute_device,
    progress_callback,
    remember_compute_device,
    resolve_device,
    resolve_dtype_choice,
)
from .served_llm_nodes import served_activity
from .types import PMGHistory, PMGLLM, PMGPreference, PMGServedLLM, PreferenceBundle, ServedKeywordLLM

logger = logging.getLogger(__name__)


class PMGLLMLoader(io.ComfyNode):
    """Node: a local language model from models/LLM."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGLLMLoader",
            display_name="PMG LLM Loader",
            category="PMG/loaders",
            description=(
                "Loads a local language model from ComfyUI's models/LLM folder: a transformers model folder "
                "(with config.json and safetensors weights) or a .gguf file. Nothing is downloaded."
            ),
            inputs=[
                io.Combo.Input(
                    "model",
                    options=comfy_paths.llm_choices(),
                    tooltip=(
                        "A subfolder of models/LLM holding config.json + *.safetensors, or a .gguf file there. "
                        "Refresh (R) after adding models."
                    ),
                ),
                io.Combo.Input(
                    "device",
                    options=list(DEVICE_CHOICES),
                    default="auto",
                    tooltip=(
                        "Where the LLM computes: 'auto' and 'gpu' use ComfyUI's device, 'cpu' keeps it on the CPU. "
                        "Between uses it waits on the CPU unless a node asks to keep it loaded."
                    ),
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPE_CHOICES),
                    default="auto",
                    optional=True,  # workflows saved before precisions existed keep loading
                    tooltip=(
                        "Precision of the LLM's weights. 'auto': the half precision ComfyUI uses for text encoders "
                        "on this GPU (bf16 where supported, else fp16), fp32 on the CPU. bf16/fp16 take 2 bytes per "
                        "parameter (an 8B model ≈16 GB), fp32 takes 4. A .gguf is converted once per precision. "
                        "A model bigger than the GPU still runs: ComfyUI keeps the layers that do not fit on the CPU."
                    ),
                ),
            ],
            outputs=[
                PMGLLM.Output(
                    display_name="llm",
                    tooltip="The loaded language model (PMG_LLM), for PMG Preference Extractor.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, model: str) -> bool | str:
        return validation_result(lambda: comfy_paths.resolve_llm(model))

    @classmethod
    def execute(cls, model: str, device: str, dtype: str = "auto") -> io.NodeOutput:
        path = comfy_paths.resolve_llm(model)
        target = resolve_device(device)
        precision = resolve_dtype_choice(dtype, target)
        # A handle: tokenizer, config and identity (what cache keys need). The weights are read on
        # the first cache miss, and ComfyUI's model management loads them onto `target` then.
        llm = open_llm(path, cache_dir=comfy_paths.model_cache_dir(), dtype=precision)
        remember_compute_device(llm, target)
        logger.info("PMG: opened LLM %s (%s; weights load on first use; computes on %s)", llm.identity, precision,
                    target)
        return io.NodeOutput(llm)


def keywords_ui(bundle: PreferenceBundle, stats: dict[str, int], activity: dict | None = None) -> dict:
    """The node's UI output: readable text, plus ``pmg_keywords`` for clients reading ``/history``."""
    preference = bundle.preference
    text = (
        f"user {preference.user_id} ({preference.scene})\n"
        f"preference: {', '.join(preference.preference_keywords)}\n"
        f"target: {', '.join(preference.target_keywords)}\n"
        f"prompt: {preference.target_text}"
    )
    if preference.truncated_items:
        text += (
            f"\n({preference.truncated_items} oldest history items dropped before any LLM work: the LLM reads "
            f"at most {MAX_ITEMS} items, and only as many as fit its context)"
        )
    if preference.fallback_notes:
        text += (
            "\n(the LLM gave no usable keywords, twice, for "
            f"{'; '.join(preference.fallback_notes)}: keywords taken from their metadata — genres, title "
            "words; a larger LLM or a higher max_new_tokens may do better)"
        )
    text += (
        "\n(from the cache: no LLM run)" if stats.get("generate_calls") == 0
        else f"\n(LLM batches run: {stats.get('generate_calls')})"
    )
    record = {
        "user_id": preference.user_id,
        "scene": preference.scene,
        "preference_keywords": list(preference.preference_keywords),
        "target_keywords": list(preference.target_keywords),
        "target_text": preference.target_text,
        "preference_text": preference.preference_text,
        "truncated_items": preference.truncated_items,
        "fallback_items": preference.fallback_items,
        "fallback_preference": preference.fallback_preference,
        "fallback_notes": list(preference.fallback_notes),
        "llm_batches": stats.get("generate_calls"),
        **({"llm": activity} if activity is not None else {}),
    }
    return node_ui(text, pmg_keywords=record)


class PMGPreferenceExtractor(io.ComfyNode):
    """Node: preference and target keywords from the LLM, cached per user."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PMGPreferenceExtractor",
            display_name="PMG Preference Extractor",
            category="PMG/llm",
            description=(
                "Asks the LLM for keywords describing the user's interests (explicit preference) and keywords "
                "describing the target item, and builds the generation prompt. Results are cached per user on "
                "disk, so a user seen before costs no LLM work."
            ),
            is_output_node=True,
            inputs=[
                PMGHistory.Input("history", tooltip="The user's behaviours from PMG User History Loader."),
                io.MultiType.Input(
                    "llm", types=[PMGLLM, PMGServedLLM],
                    tooltip=("The language model from PMG LLM Loader, or a served one from PMG Served LLM (its "
                             "soft_prompt_llm then goes on to PMG Soft Prompt Encoder)."),
                ),
                io.Int.Input(
                    "n_preference", default=8, min=1, max=32,
                    tooltip="How many preference keywords to ask for (the paper uses 8).",
                ),
                io.Int.Input(
                    "n_target", default=10, min=1, max=32,
                    tooltip="How many target-item keywords to ask for (the paper uses 10).",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFF,
                    tooltip="Seed of the LLM decoding; the same seed gives the same keywords.",
                ),
                io.Int.Input(
                    "max_new_tokens", default=100, min=8, max=1024,
                    tooltip="The longest answer the LLM may write per question (the paper uses 100).",
                ),
                io.Boolean.Input(
                    "keep_model_loaded", default=False,
                    tooltip="Keep the LLM on the GPU afterwards (faster for many users, but holds VRAM).",
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="preference_keywords",
                    tooltip="The user's preference keywords, comma-separated.",
                ),
                io.String.Output(
                    display_name="target_keywords",
                    tooltip="The target item's keywords, comma-separated.",
                ),
                PMGPreference.Output(
                    display_name="preference",
                    tooltip="Everything the conditioning needs (PMG_PREFERENCE): keywords, prompts and the LLM.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, history=None) -> bool | str:
        return validation_result(lambda: checked_history(history))

    @classmethod
    def execute(
        cls,
        history,
        llm,
        n_preference: int,
        n_target: int,
        seed: int,
        max_new_tokens: int,
        keep_model_loaded: bool,
    ) -> io.NodeOutput:
        history = checked_history(history)
        served = isinstance(llm, ServedKeywordLLM)
        local = llm.soft_prompt_llm if served else llm  # what the soft-prompt adapter runs on
        sent = llm.source.requests_sent if served else 0
        extractor = KeywordExtractor(
            llm.source if served else llm,
            cache_dir=comfy_paths.cache_root(),  # entries go to <cache_root>/keywords
            n_preference=n_preference,
            n_target=n_target,
            seed=seed,
            max_new_tokens=max_new_tokens,
            # Only a cache miss loads the LLM (weights, then onto its device through ComfyUI).
            placement=None if served else (lambda: llm_on_compute_device(llm, keep_model_loaded)),
        )
        preference = extractor.extract(history, progress=progress_callback())
        bundle = PreferenceBundle(
            preference=preference, history=history, llm=local, keep_model_loaded=keep_model_loaded
        )
        activity = (served_activity(llm.source, llm.source.requests_sent - sent) if served
                    else llm_activity(llm))
        return io.NodeOutput(
            ", ".join(preference.preference_keywords),
            ", ".join(preference.target_keywords),
            bundle,
            ui=keywords_ui(bundle, extractor.stats, activity),
        )


NODES: list[type[io.ComfyNode]] = [PMGLLMLoader, PMGPreferenceExtractor]
