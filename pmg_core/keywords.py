"""Explicit keywords from the LLM (PMG steps 2 and 3), batched and cached on disk.

:class:`KeywordExtractor` turns user histories into :class:`Preference` records:

1. *Item keywords*: for every history item the scene shows keywords for (movie:
   ``kw1..kw5``) and for the target, the LLM describes the item (the target
   prompt, ``n_target`` keywords). Cached per (item id, title, model, prompt).
2. *Preference keywords*: the history rendered as text goes into the preference
   prompt; the answer is parsed into ``n_preference`` keywords. Cached per
   (history text, model, prompt, n, seed).

Work for many users runs as one batched :meth:`LocalLLM.generate` call per
phase. A history too long for the LLM's context loses its oldest items (logged,
and counted in :attr:`Preference.truncated_items`). An unparseable answer is
retried once with seeded sampling, then :class:`KeywordParseError` is raised;
answers that did parse are cached before that, so no work is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from .cache import JsonCache
from .errors import EmptyHistoryError, InvalidSettingError, KeywordParseError
from .history import Item, UserHistory
from .keyword_parser import normalize_keyword, parse_keywords
from .llm import LocalLLM
from .prompts import ChatRequest, PromptTemplates, preference_prompt, prompt_templates, soft_prompt_text, target_prompt
from .render import SceneTemplates, negative_prompt, render_history, render_target_text, scene_templates

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Preference:
    """Everything the generator needs to know about one user, as text."""

    user_id: str
    scene: str
    history_text: str  # behaviours rendered as text
    preference_keywords: tuple[str, ...]
    target_keywords: tuple[str, ...]
    target_text: str  # the scene's generation prompt for the target
    preference_text: str  # the preference keywords joined for the text encoder
    soft_prompt_text: str  # what the soft-prompt adapter reads before its image tokens
    negative_prompt: str
    truncated_items: int = 0  # history items dropped to fit the LLM context

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def prompt_set_for(history: UserHistory) -> str:
    """Which prompt set a history uses: "chat" when it holds a conversation, else its scene."""
    return "chat" if history.conversation else history.scene


class KeywordExtractor:
    """Preference and target keywords for user histories from one LLM.

    ``templates`` overrides the prompts: one :class:`PromptTemplates` for every
    scene, or a mapping from prompt set (scene or "chat") to templates.
    ``scene_templates`` overrides how histories are rendered (one for all scenes).
    ``cache_dir`` defaults to :func:`pmg_core.assets.default_cache_dir`; entries go
    to ``cache_dir/keywords``. ``use_cache=False`` keeps nothing on disk.
    """

    def __init__(
        self,
        llm: LocalLLM,
        cache_dir: Path | None = None,
        n_preference: int = 8,
        n_target: int = 10,
        max_new_tokens: int = 100,
        seed: int = 0,
        templates: PromptTemplates | Mapping[str, PromptTemplates] | None = None,
        scene_templates: SceneTemplates | None = None,
        batch_size: int = 8,
        use_cache: bool = True,
        placement: Callable[[], AbstractContextManager] | None = None,
    ):
        from .assets import default_cache_dir

        self.llm = llm
        self.n_preference = n_preference
        self.n_target = n_target
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batch_size = batch_size
        self._templates = templates
        self._scene_templates = scene_templates
        self.use_cache = use_cache
        self.cache = JsonCache(Path(cache_dir or default_cache_dir()) / "keywords")
        self.generate_calls = 0  # LLM batches run (0 on a fully cached run)
        # Entered before the first LLM batch of an extract_many call, left at its end: a
        # fully cached call never enters it (ComfyUI's nodes load the LLM onto its device there).
        self.placement = placement
        self._placed: contextlib.ExitStack | None = None

    # -- public API ---------------------------------------------------------------
    def extract(self, history: UserHistory, target: Item | None = None, progress: Progress | None = None) -> Preference:
        """The :class:`Preference` of one user; ``target`` replaces the history's target."""
        if target is not None:
            history = dataclasses.replace(history, target=target)
        return self.extract_many([history], progress=progress)[0]

    def extract_many(self, histories: list[UserHistory], progress: Progress | None = None) -> list[Preference]:
        """One :class:`Preference` per history, in order; LLM work is batched across users."""
        histories = list(histories)
        if not histories:
            return []
        with contextlib.ExitStack() as self._placed:
            try:
                return self._extract_many(histories, progress)
            finally:
                self._placed = None

    def _extract_many(self, histories: list[UserHistory], progress: Progress | None) -> list[Preference]:
        tracker = _StageProgress(progress)
        item_keywords = self._item_keywords_for(histories, tracker)
        prepared = [self._prepare(history, item_keywords) for history in histories]
        requests = [request for _, request, _ in prepared]
        preference_sets = self._cached_keywords(
            requests,
            [self._preference_key(text, prompt_set_for(h)) for h, (text, _, _) in zip(histories, prepared)],
            self.n_preference,
            tracker,
            [f"the preference of user {h.user_id!r}" for h in histories],
        )
        tracker.finish()
        results = []
        for history, (text, _, dropped), keywords in zip(histories, prepared, preference_sets):
            results.append(self._preference(history, text, dropped, tuple(keywords), item_keywords))
        return results

    @property
    def stats(self) -> dict[str, int]:
        """LLM batches run and cache hits/misses so far (the ComfyUI node shows them)."""
        s = self.cache.stats
        return {"generate_calls": self.generate_calls, "cache_hits": s.hits, "cache_misses": s.misses}

    # -- templates ------------------------------------------------------------------
    def prompts_for(self, prompt_set: str) -> PromptTemplates:
        if isinstance(self._templates, PromptTemplates):
            return self._templates
        if self._templates is not None and prompt_set in self._templates:
            return self._templates[prompt_set]
        return prompt_templates(prompt_set)

    def render_templates_for(self, scene: str) -> SceneTemplates:
        return scene_templates(scene, self._scene_templates)

    # -- phase 1: item keywords -------------------------------------------------------
    def _item_keywords_for(self, histories: list[UserHistory], tracker: "_StageProgress") -> dict[tuple, tuple[str, ...]]:
        wanted: list[tuple[Item, str]] = []
        for history in histories:
            prompt_set = prompt_set_for(history)
            if self.render_templates_for(history.scene).uses_item_keywords:
                wanted += [(item, prompt_set) for item in history.items if not item.keywords]
            if history.target is not None and not history.target.keywords:
                wanted.append((history.target, prompt_set))
        return self._describe(wanted, tracker)

    def _describe(self, wanted: list[tuple[Item, str]], tracker: "_StageProgress") -> dict[tuple, tuple[str, ...]]:
        unique: dict[tuple, tuple[Item, str]] = {}
        for item, prompt_set in wanted:
            unique.setdefault(_item_identity(item, prompt_set), (item, prompt_set))
        keys = list(unique)
        requests = [target_prompt(ps, item, self.n_target, self.prompts_for(ps)) for item, ps in unique.values()]
        for request, (item, _) in zip(requests, unique.values()):
            self._check_fits(request, f"item {item.item_id!r} ({item.title!r})")
        cache_keys = [self._item_key(item, ps) for item, ps in unique.values()]
        labels = [f"item {item.item_id!r} ({item.title!r})" for item, _ in unique.values()]
        found = self._cached_keywords(requests, cache_keys, self.n_target, tracker, labels)
        # Small models often answer with the title itself; it is already in every text that
        # shows item keywords, so it is dropped (an item may end up with no extra keywords).
        titles = [normalize_keyword(item.title).casefold() for item, _ in unique.values()]
        return {
            key: tuple(word for word in words if word.casefold() != title)
            for key, words, title in zip(keys, found, titles)
        }

    def _check_fits(self, request: ChatRequest, label: str) -> None:
        length = self.llm.count_tokens(request.for_llm(self.llm))
        if length + self.max_new_tokens > self.llm.context_length:
            raise InvalidSettingError(
                f"The keyword prompt for {label} takes {length} tokens, which with max_new_tokens="
                f"{self.max_new_tokens} exceeds the LLM's context of {self.llm.context_length} tokens; "
                "lower max_new_tokens, shorten the item's description, or use an LLM with a longer context."
            )

    def _item_key(self, item: Item, prompt_set: str) -> tuple:
        return ("item", item.item_id, item.title, self.llm.identity, self.prompts_for(prompt_set).digest(),
                prompt_set, self.n_target, self.seed, self.max_new_tokens)

    # -- phase 2: preference keywords ---------------------------------------------------
    def _prepare(self, history: UserHistory, item_keywords: dict) -> tuple[str, ChatRequest, int]:
        """The history text, its preference prompt, and how many items were dropped to fit."""
        prompt_set = prompt_set_for(history)
        templates = self.render_templates_for(history.scene)
        if templates.uses_item_keywords:
            items = tuple(
                item if item.keywords else item.with_keywords(item_keywords[_item_identity(item, prompt_set)])
                for item in history.items
            )
            history = dataclasses.replace(history, items=items)
        return self._fit_context(history, prompt_set, templates)

    def _fit_context(self, history: UserHistory, prompt_set: str, templates: SceneTemplates):
        """Drop the oldest items (or turns) until prompt + answer fit the LLM's context.

        "Oldest" is by timestamp where items have one (undated items count as older
        than dated ones), else by position: a history sorted by rating
        (``SplitRule(order="rating")``) thus keeps its most recent items, in order.
        """
        budget = self.llm.context_length - self.max_new_tokens
        prompts = self.prompts_for(prompt_set)
        use_turns = not history.items
        units = history.conversation if use_turns else history.items
        oldest_first = sorted(range(len(units)), key=lambda i: (_timestamp(units[i]), i))

        def build(dropped: int):
            gone = set(oldest_first[:dropped])
            rest = tuple(unit for i, unit in enumerate(units) if i not in gone)
            trimmed = dataclasses.replace(history, **({"conversation": rest} if use_turns else {"items": rest}))
            text = render_history(trimmed, templates)
            request = preference_prompt(prompt_set, text, self.n_preference, prompts)
            return text, request, self.llm.count_tokens(request.for_llm(self.llm))

        text, request, length = build(0)
        if length <= budget:
            return text, request, 0
        # Binary search for the fewest dropped units that fit (the length shrinks as units go).
        low, high = 1, len(units) - 1
        best = None
        while low <= high:
            middle = (low + high) // 2
            candidate = build(middle)
            if candidate[2] <= budget:
                best, high = (middle, candidate), middle - 1
            else:
                low = middle + 1
        if best is None:
            raise EmptyHistoryError(
                f"Even one history entry of user {history.user_id!r} does not fit the LLM's context "
                f"({self.llm.context_length} tokens, {self.max_new_tokens} kept for the answer); lower "
                "max_new_tokens, shorten the item texts, or use an LLM with a longer context."
            )
        dropped, (text, request, length) = best
        log.warning(
            "User %r: dropped the %d oldest of %d history entries so the prompt (%d tokens) fits the "
            "LLM's context of %d tokens.", history.user_id, dropped, len(units), length, self.llm.context_length,
        )
        return text, request, dropped

    def _preference_key(self, history_text: str, prompt_set: str) -> tuple:
        return ("preference", history_text, self.llm.identity, self.prompts_for(prompt_set).digest(), prompt_set,
                self.n_preference, self.seed, self.max_new_tokens)

    def _preference(self, history, text, dropped, keywords, item_keywords) -> Preference:
        prompt_set = prompt_set_for(history)
        target = history.target
        target_keywords: tuple[str, ...] = ()
        target_text = ""
        if target is not None:
            target_keywords = target.keywords or item_keywords[_item_identity(target, prompt_set)]
            target_text = render_target_text(target, target_keywords, history.scene)
        return Preference(
            user_id=history.user_id,
            scene=history.scene,
            history_text=text,
            preference_keywords=keywords,
            target_keywords=tuple(target_keywords),
            target_text=target_text,
            preference_text=", ".join(keywords),
            soft_prompt_text=soft_prompt_text(prompt_set, text, self.prompts_for(prompt_set)),
            negative_prompt=negative_prompt(history.scene),
            truncated_items=dropped,
        )

    # -- LLM calls with cache and retry ------------------------------------------------
    def _cached_keywords(self, requests: list[ChatRequest], keys: list[tuple], n: int,
                         tracker: "_StageProgress", labels: list[str]) -> list[list[str]]:
        results: list[list[str] | None] = [None] * len(requests)
        for index, key in enumerate(keys):
            if self.use_cache:
                cached = self.cache.get(*key)
                if isinstance(cached, list) and cached:
                    results[index] = [str(word) for word in cached]
        missing = [i for i, result in enumerate(results) if result is None]
        if missing:
            answers = self._generate([requests[i] for i in missing], do_sample=False, tracker=tracker)
            failures = []
            for i, answer in zip(missing, answers):
                parsed = self._parse(requests[i], answer, n)
                if parsed is None:
                    failures.append((i, answer))
                else:
                    results[i] = self._store(keys[i], parsed)
            if failures:
                log.info("Retrying %d unparseable answer(s) once with sampling.", len(failures))
                retried = self._generate([requests[i] for i, _ in failures], do_sample=True, tracker=None)
                for (i, first), answer in zip(failures, retried):
                    parsed = self._parse(requests[i], answer, n)
                    if parsed is None:
                        raise KeywordParseError(
                            f"The LLM gave no usable keywords for {labels[i]}, twice. First answer: "
                            f"{_excerpt(first)!r}; retry: {_excerpt(answer)!r}. Try a larger model, raise "
                            "max_new_tokens, or adjust the prompt templates."
                        )
                    results[i] = self._store(keys[i], parsed)
        return [result or [] for result in results]

    def _store(self, key: tuple, keywords: list[str]) -> list[str]:
        if self.use_cache:
            self.cache.set(keywords, *key)
        return keywords

    def _generate(self, requests: list[ChatRequest], do_sample: bool, tracker: "_StageProgress | None") -> list[str]:
        prompts = [request.for_llm(self.llm) for request in requests]
        if self.placement is not None and self._placed is not None:
            self._placed.enter_context(self.placement())
            self._placed = None  # entered once per extract_many; the stack still leaves it at the end
        self.generate_calls += 1
        return self.llm.generate(
            prompts,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            do_sample=do_sample,
            progress=tracker.stage(len(prompts), self.batch_size, self.max_new_tokens) if tracker else None,
            batch_size=self.batch_size,
        )

    @staticmethod
    def _parse(request: ChatRequest, answer: str, n: int) -> list[str] | None:
        # The answer continues the primed prefix ("The keywords are: 1."), so parse both together.
        try:
            return parse_keywords(f"{request.assistant_prefix} {answer}", expected=n)
        except KeywordParseError:
            return None


def _timestamp(unit) -> float:
    value = getattr(unit, "timestamp", None)
    return float("-inf") if value is None else float(value)


def _item_identity(item: Item, prompt_set: str) -> tuple:
    return (item.item_id, item.title, prompt_set)


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


class _StageProgress:
    """Maps the progress of several generate() calls onto one growing (done, total) scale."""

    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.done = 0
        self.total = 0

    def stage(self, prompts: int, batch_size: int, steps: int) -> Progress | None:
        if self.progress is None:
            return None
        offset = self.done
        size = math.ceil(prompts / batch_size) * steps
        self.total += size
        self.done += size

        def report(done: int, total: int) -> None:
            self.progress(offset + done * size // max(total, 1), self.total)

        return report

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(max(self.total, 1), max(self.total, 1))
