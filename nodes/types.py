"""The pack's own socket types and the values that travel on them.

A socket type is only a name to ComfyUI: it lets the editor connect an output to
the inputs that accept it. The payload classes document what each socket carries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from comfy_api.latest import io

from ..pmg_core.history import UserHistory

# One user's behaviours: a pmg_core.history.UserHistory.
PMGHistory = io.Custom("PMG_HISTORY")
# A loaded language model: a pmg_core.llm.LocalLLM.
PMGLLM = io.Custom("PMG_LLM")
# An LLM behind an HTTP API, for the keywords only: a ServedKeywordLLM (below).
PMGServedLLM = io.Custom("PMG_SERVED_LLM")
# A user's extracted preference: a PreferenceBundle (below).
PMGPreference = io.Custom("PMG_PREFERENCE")
# A user's soft-prompt embeddings: a SoftPrompt (below).
PMGSoftPrompt = io.Custom("PMG_SOFT_PROMPT")
# The alpha of each condition row, in order (a tuple of floats): PMG Conditioning -> PMG Scorer.
PMGAlphas = io.Custom("PMG_ALPHAS")


@dataclass(frozen=True)
class PreferenceBundle:
    """What ``PMG_PREFERENCE`` carries: the keywords plus what the soft-prompt step needs.

    ``preference`` is the library's ``pmg_core.keywords.Preference``; ``llm`` is the
    ``LocalLLM`` that extracted it (the soft-prompt adapter must run on the same
    model), or ``None`` when the preference was built without one;
    ``keep_model_loaded`` carries the extractor's choice to later LLM users.
    """

    preference: Any
    history: UserHistory
    llm: Any = None
    keep_model_loaded: bool = False


@dataclass(frozen=True)
class ServedKeywordLLM:
    """What ``PMG_SERVED_LLM`` carries: a ``pmg_core.served_llm.ServedLLM`` for the keywords, and the
    local ``LocalLLM`` the soft-prompt adapter runs on (``None`` when none was connected)."""

    source: Any
    soft_prompt_llm: Any = None


@dataclass(frozen=True)
class SoftPrompt:
    """What ``PMG_SOFT_PROMPT`` carries: one user's implicit preference embeddings."""

    embeddings: torch.Tensor  # [1, k, D], float32 on the CPU; D = the CLIP text width
    metadata: dict[str, str] = field(default_factory=dict)  # adapter, llm identity, cache key...

    @property
    def num_tokens(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def width(self) -> int:
        return int(self.embeddings.shape[2])
