"""Keywords for many users ahead of a batch queue: LLM batches across users, resumable.

Studios queue one ComfyUI prompt per user, so the PMG Preference Extractor node asks the
LLM about one user at a time. :func:`prefetch_keywords` fills the same on-disk keyword
cache first (``<cache_dir>/keywords``, the server's ``<ComfyUI user dir>/pmg_cache`` for
the nodes), ``batch_size`` users per LLM call, so every queued prompt finds its user warm.

A user whose keywords are all cached already is skipped without any LLM work
(:meth:`KeywordExtractor.missing` renders and tokenizes the history, as the node does, but
never asks the LLM), so a killed prefetch resumes where it stopped. The LLM may be an
:func:`pmg_core.llm.open_llm` handle (when every user is cached its weights are never read)
or a served one (:class:`pmg_core.served_llm.ServedLLM`: then no request is sent).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .history import UserHistory
from .keywords import KeywordExtractor, Preference

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PrefetchSummary:
    users: int  # users asked for
    already_cached: int  # skipped: nothing to ask the LLM
    extracted: int  # users whose keywords were computed now
    llm_batches: int  # LLM batches asked (LocalLLM.generate calls; a served LLM's rounds of requests)
    seconds: float

    @property
    def users_per_second(self) -> float:
        return self.extracted / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"users": self.users, "already_cached": self.already_cached, "extracted": self.extracted,
                "llm_batches": self.llm_batches, "seconds": round(self.seconds, 3),
                "users_per_second": round(self.users_per_second, 3)}


def prefetch_keywords(
    llm,
    histories: list[UserHistory],
    cache_dir: Path | str | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
    preferences: list[Preference] | None = None,
    **settings,
) -> PrefetchSummary:
    """Fill the keyword cache for ``histories``, ``batch_size`` uncached users per LLM batch.

    ``settings`` are :class:`KeywordExtractor`'s (``n_preference``, ``n_target``, ``seed``,
    ``max_new_tokens``, templates): they must match the nodes' inputs for the nodes to hit
    the cache. ``progress(done, total)`` counts users. When ``preferences`` is a list, each
    user's :class:`Preference` is appended to it in the order of ``histories``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    started = time.perf_counter()
    histories = list(histories)
    extractor = KeywordExtractor(llm, cache_dir=cache_dir, batch_size=batch_size, **settings)
    pending = extractor.missing(histories)
    ready = sorted(set(range(len(histories))) - set(pending))
    found: dict[int, Preference] = {}
    if preferences is not None:  # cached users: read back, no LLM work
        found.update(zip(ready, extractor.extract_many([histories[i] for i in ready]), strict=True))
    cached = len(ready)
    log.info("Keyword prefetch: %d of %d users already cached; %d to extract in batches of %d.",
             cached, len(histories), len(pending), batch_size)
    if progress is not None:
        progress(cached, len(histories))
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        for index, preference in zip(chunk, extractor.extract_many([histories[i] for i in chunk]), strict=True):
            found[index] = preference
        if progress is not None:
            progress(cached + start + len(chunk), len(histories))
    if preferences is not None:
        preferences.extend(found[i] for i in range(len(histories)))
    return PrefetchSummary(users=len(histories), already_cached=cached, extracted=len(pending),
                           llm_batches=extractor.generate_calls, seconds=time.perf_counter() - started)


# --- before `pmg queue`: the same keywords the workflow's nodes will ask for ------------------

_EXTRACTOR_SETTINGS = ("n_preference", "n_target", "seed", "max_new_tokens")


def workflow_keyword_settings(workflow: dict, overrides: dict | None = None) -> tuple[dict, dict]:
    """From an API workflow: the Preference Extractor's settings and the History Loader's inputs.

    ``overrides`` are ``pmg queue --set`` values (``"NODE.INPUT": value``). Raises
    :class:`InvalidSettingError` when the workflow has no (or more than one) extractor, or when an
    input is wired to another node (its value is then unknown before the prompt runs).
    """
    from .errors import InvalidSettingError

    overrides = overrides or {}

    def inputs_of(kind: str) -> dict:
        ids = [node_id for node_id, node in workflow.items() if node.get("class_type") == kind]
        if len(ids) != 1:
            raise InvalidSettingError(
                f"--prefetch needs exactly one {kind} in the workflow; it has {len(ids)}. Queue without --prefetch."
            )
        values = dict(workflow[ids[0]].get("inputs") or {})
        values.update({key.partition(".")[2]: value for key, value in overrides.items()
                       if key.partition(".")[0] == ids[0]})
        return values

    extractor = inputs_of("PMGPreferenceExtractor")
    loader = inputs_of("PMGUserHistoryLoader")
    settings = {}
    for name in _EXTRACTOR_SETTINGS:
        if name in extractor:
            if isinstance(extractor[name], list):
                raise InvalidSettingError(f"--prefetch: the extractor's {name} is wired to a node; set a value.")
            settings[name] = int(extractor[name])
    history = {"format": loader.get("format", "auto"), "max_items": int(loader.get("max_items") or 0) or None,
               "scene": None if loader.get("scene", "auto") == "auto" else loader.get("scene")}
    return settings, history


def workflow_served_llm(workflow: dict, overrides: dict | None = None):
    """The :class:`pmg_core.served_llm.ServedLLM` the workflow's extractor asks, when its ``llm`` input is
    wired to a PMG Served LLM node (its inputs and ``--set`` overrides); ``None`` for a local LLM."""
    from .errors import InvalidSettingError
    from .served_llm import ServedLLM

    extractor = next((node for node in workflow.values() if node.get("class_type") == "PMGPreferenceExtractor"), {})
    link = (extractor.get("inputs") or {}).get("llm")
    if not isinstance(link, list) or workflow.get(str(link[0]), {}).get("class_type") != "PMGServedLLM":
        return None
    node_id = str(link[0])
    values = dict(workflow[node_id].get("inputs") or {})
    values.update({key.partition(".")[2]: value for key, value in (overrides or {}).items()
                   if key.partition(".")[0] == node_id})
    names = ("base_url", "model", "api", "timeout", "keep_alive", "context_length")
    wired = [name for name in names if isinstance(values.get(name), list)]
    if wired:
        raise InvalidSettingError(f"--prefetch: PMG Served LLM's {', '.join(wired)} is wired to a node; set a value.")
    return ServedLLM(values["base_url"], values["model"], api=values.get("api", "openai"),
                     timeout=float(values.get("timeout", 120.0)),
                     keep_alive=str(values.get("keep_alive", "")) if values.get("api") == "ollama" else "",
                     context_length=int(values.get("context_length", 8192)))


def prefetch_for_workflow(
    workflow: dict,
    history_file: Path,
    users: list[str] | None,
    cache_dir: Path,
    llm,
    batch_size: int = 16,
    overrides: dict | None = None,
    progress: Progress | None = None,
) -> PrefetchSummary:
    """Warm ``cache_dir`` (the server's ``pmg_cache``) for the users ``pmg queue`` will send.

    When the workflow's extractor asks a PMG Served LLM, that server is asked (``llm`` is not used).
    """
    from .loaders import list_users, load_user

    settings, loading = workflow_keyword_settings(workflow, overrides)
    llm = workflow_served_llm(workflow, overrides) or llm
    ids = users if users is not None else list_users(history_file, fmt=loading["format"])
    histories = [load_user(history_file, user, fmt=loading["format"], scene=loading["scene"],
                           max_items=loading["max_items"]) for user in ids]
    return prefetch_keywords(llm, histories, cache_dir=cache_dir, batch_size=batch_size, progress=progress,
                             **settings)
