"""PMG (Personalized Multimodal Generation, WWW 2024) as a pure library.

User behaviours become text; an LLM turns it into explicit preference keywords
and implicit soft-prompt embeddings; together with target-item keywords they
condition a Stable Diffusion model, and generated images are scored against the
user's history and the target. See ``docs/ARCHITECTURE.md`` for the module map.

This package never imports ComfyUI; the node pack in ``nodes/`` wraps it.
Submodules are imported on first use so that ``import pmg_core`` stays cheap.
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "Item": "history",
    "ChatTurn": "history",
    "UserHistory": "history",
    "load_histories": "loaders",
    "load_user": "loaders",
    "list_users": "loaders",
    "SplitRule": "loaders",
    "render_history": "render",
    "render_target_text": "render",
    "LocalLLM": "llm",
    "load_llm": "llm",
    "parse_keywords": "keyword_parser",
    "KeywordExtractor": "keywords",
    "Preference": "keywords",
    "SoftPromptAdapter": "soft_prompt",
    "save_adapter": "soft_prompt",
    "load_adapter": "soft_prompt",
    "ConditionWeights": "conditioning",
    "build_conditions": "conditioning",
    "parse_alphas": "conditioning",
    "SDRunner": "sd_runner",
    "score_candidates": "metrics",
    "select_by_tradeoff": "metrics",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
