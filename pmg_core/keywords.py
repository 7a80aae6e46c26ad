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
and counted in :attr:`Preference.truncated_items`) *before* any LLM work, so a
history of 10,000 items costs what one that fits costs. An unparseable answer is
retried once with seeded sampling; if that fails too, the keywords come from the
item's (or the history's) own metadata — genres and title words — logged, and
reported in :attr:`Preference.fallback_items` / :attr:`Preference.fallback_preference`
(``metadata_fallback=False`` raises :class:`KeywordParseError` instead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from .cache import JsonCache
from .errors import EmptyHistoryError, InvalidSettingError, KeywordParseError
from .history import Item, UserHistory
from .keyword_parser import drop_echoes, normalize_keyword, parse_keywords, source_words
from .llm import LocalLLM
from .prompts import (
    DEFAULT_PROMPTS,
    ChatRequest,
    PromptTemplates,
    preference_prompt,
    prompt_templates,
    soft_prompt_text,
    target_prompt,
)
from .render import (
    SceneTemplates,
    negative_prompt,
    render_history,
    render_target_text,
    scene_templates,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
MAX_ITEMS = 50  # history items the LLM reads at most (the most recent); the paper uses 3 to 5


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
    truncated_items: int = 0  # oldest history items dropped (past max_items, or not fitting the LLM context)
    fallback_items: int = 0  # items (history or target) whose keywords came from their metadata
    fallback_preference: bool = False  # the preference keywords came from the history's metadata
    fallback_notes: tuple[str, ...] = ()  # what fell back, for people ("item '135' ('2001: A Space Odyssey')")

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
    ``max_items`` (default :data:`MAX_ITEMS`): the LLM reads at most this many history
    items, the most recent; older ones are dropped before any LLM work (counted in
    :attr:`Preference.truncated_items`), so a 10,000-item history costs what a 50-item one does.
    ``metadata_fallback`` (default on): an answer that does not parse twice falls
    back to keywords from metadata instead of raising :class:`KeywordParseError`.
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
        metadata_fallback: bool = True,
        max_items: int = MAX_ITEMS,
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
        self.metadata_fallback = metadata_fallback
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise InvalidSettingError(
                f"max_items must be a positive whole number (history items the LLM reads), not {max_items!r}; "
                f"the default is {MAX_ITEMS}."
            )
        self.max_items = max_items
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
        # Cut each history to what can fit the context even without item keywords, before any
        # LLM work: item keywords only make the text longer, so nothing that could fit is lost.
        bounded = [self._bound(history) for history in histories]
        histories = [history for history, _ in bounded]
        # The preference phase's share of the scale is known now: progress then only rises.
        preference_stage = tracker.reserve(len(histories), self.batch_size, self.max_new_tokens)
        item_keywords, item_fallbacks = self._item_keywords_for(histories, tracker)
        prepared = [self._prepare(history, item_keywords) for history in histories]
        requests = [request for _, request, _ in prepared]
        preference_sets, preference_fallbacks = self._cached_keywords(
            requests,
            [self._preference_key(text, prompt_set_for(h)) for h, (text, _, _) in zip(histories, prepared)],
            self.n_preference,
            preference_stage,
            [f"the preference of user {h.user_id!r}" for h in histories],
            [lambda h=h: history_fallback_keywords(h, item_keywords, self.n_preference) for h in histories],
        )
        tracker.finish()
        results = []
        for index, (history, (text, _, dropped), keywords) in enumerate(zip(histories, prepared, preference_sets)):
            fell_back = index in preference_fallbacks
            keywords, echoes = drop_echoes(keywords, self._echo_words(prompt_set_for(history)), _item_words(history.items))
            if echoes:
                log.info("User %r: dropped keywords that repeat the prompt: %s", history.user_id, echoes)
            if not keywords:  # nothing but echoes: the history's own metadata speaks instead
                keywords, fell_back = history_fallback_keywords(history, item_keywords, self.n_preference), True
            preference = self._preference(history, text, bounded[index][1] + dropped, tuple(keywords), item_keywords)
            results.append(self._with_fallbacks(preference, history, item_fallbacks, fell_back))
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
    def _bound(self, history: UserHistory) -> tuple[UserHistory, int]:
        """The history cut to its ``max_items`` most recent items, then to those that can fit the
        context even without keywords (item keywords only make the text longer)."""
        capped = 0
        if len(history.items) > self.max_items:
            units = history.items
            newest = set(sorted(range(len(units)), key=lambda i: (_timestamp(units[i]), i))[-self.max_items:])
            capped = len(units) - self.max_items
            log.warning("User %r: the LLM reads the %d most recent of %d history items (max_items); the %d "
                        "oldest are dropped.", history.user_id, self.max_items, len(units), capped)
            history = dataclasses.replace(history, items=tuple(u for i, u in enumerate(units) if i in newest))
        history, dropped = self._bound_to_context(history)
        return history, capped + dropped

    def _bound_to_context(self, history: UserHistory) -> tuple[UserHistory, int]:
        templates = self.render_templates_for(history.scene)
        if not templates.uses_item_keywords or not history.items or all(item.keywords for item in history.items):
            return history, 0  # _prepare fits these exactly; no per-item LLM work to save
        bare = dataclasses.replace(history, items=tuple(item.with_keywords(()) for item in history.items))
        kept = self._fit_context(bare, prompt_set_for(history), templates, keep=True)[3]
        if len(kept) == len(history.items):
            return history, 0
        kept_ids = {id(item) for item in kept}
        items = tuple(item for item, plain in zip(history.items, bare.items) if id(plain) in kept_ids)
        log.info("User %r: %d of %d history items can fit the LLM's context; the %d oldest are dropped before "
                 "any LLM work.", history.user_id, len(items), len(history.items), len(history.items) - len(items))
        return dataclasses.replace(history, items=items), len(history.items) - len(items)

    def _with_fallbacks(self, preference: Preference, history: UserHistory, item_fallbacks: set[tuple],
                        preference_fallback: bool) -> Preference:
        prompt_set = prompt_set_for(history)
        shown = self.render_templates_for(history.scene).uses_item_keywords
        items = [item for item in history.items if shown and not item.keywords]
        if history.target is not None and not history.target.keywords:
            items.append(history.target)
        fallen = [item for item in items if _item_identity(item, prompt_set) in item_fallbacks]
        notes = [f"item {item.item_id!r} ({item.title!r})" for item in fallen]
        if preference_fallback:
            notes.append("the preference keywords")
        if not notes:
            return preference
        return dataclasses.replace(preference, fallback_items=len(fallen), fallback_preference=preference_fallback,
                                   fallback_notes=tuple(notes))

    def _item_keywords_for(self, histories: list[UserHistory], tracker: _StageProgress) -> tuple[dict, set]:
        wanted: list[tuple[Item, str]] = []
        for history in histories:
            prompt_set = prompt_set_for(history)
            if self.render_templates_for(history.scene).uses_item_keywords:
                wanted += [(item, prompt_set) for item in history.items if not item.keywords]
            if history.target is not None and not history.target.keywords:
                wanted.append((history.target, prompt_set))
        return self._describe(wanted, tracker)

    def _describe(self, wanted: list[tuple[Item, str]], tracker: _StageProgress) -> tuple[dict, set]:
        """Keywords per item identity, and the identities whose keywords came from metadata."""
        unique: dict[tuple, tuple[Item, str]] = {}
        for item, prompt_set in wanted:
            unique.setdefault(_item_identity(item, prompt_set), (item, prompt_set))
        keys = list(unique)
        requests = [target_prompt(ps, item, self.n_target, self.prompts_for(ps)) for item, ps in unique.values()]
        for request, (item, _) in zip(requests, unique.values()):
            self._check_fits(request, f"item {item.item_id!r} ({item.title!r})")
        cache_keys = [self._item_key(item, ps) for item, ps in unique.values()]
        labels = [f"item {item.item_id!r} ({item.title!r})" for item, _ in unique.values()]
        fallbacks = [lambda item=item: item_fallback_keywords(item, self.n_target) for item, _ in unique.values()]
        found, fell_back = self._cached_keywords(requests, cache_keys, self.n_target, tracker, labels, fallbacks)
        # Small models often answer with the title itself; it is already in every text that
        # shows item keywords, so it is dropped (an item may end up with no extra keywords).
        titles = [normalize_keyword(item.title).casefold() for item, _ in unique.values()]
        keywords = {
            key: tuple(word for word in words if word.casefold() != title)
            for key, words, title in zip(keys, found, titles)
        }
        return keywords, {keys[i] for i in fell_back}

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

    def _fit_context(self, history: UserHistory, prompt_set: str, templates: SceneTemplates, keep: bool = False):
        """Drop the oldest items (or turns) until prompt + answer fit the LLM's context.

        Returns ``(text, request, dropped)``, plus the kept units with ``keep=True``.

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
            return text, request, self.llm.count_tokens(request.for_llm(self.llm)), rest

        def result(text, request, dropped, rest):
            return (text, request, dropped, rest) if keep else (text, request, dropped)

        # Every unit takes at least one token, so more than `budget` units never fit: a
        # 10,000-item history is not rendered and counted whole at every search step.
        at_least = max(len(units) - max(budget, 1), 0)
        text, request, length, rest = build(at_least)
        if length <= budget:
            return result(text, request, at_least, rest)
        # Binary search for the fewest dropped units that fit (the length shrinks as units go).
        low, high = at_least + 1, len(units) - 1
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
        dropped, (text, request, length, rest) = best
        log.warning(
            "User %r: dropped the %d oldest of %d history entries so the prompt (%d tokens) fits the "
            "LLM's context of %d tokens.", history.user_id, dropped, len(units), length, self.llm.context_length,
        )
        return result(text, request, dropped, rest)

    def _echo_words(self, prompt_set: str) -> frozenset[str]:
        """The words of this prompt set and of PMG's built-in prompts: keywords made only of them are echoes."""
        return self.prompts_for(prompt_set).instruction_words() | _BUILTIN_PROMPT_WORDS

    def _preference_key(self, history_text: str, prompt_set: str) -> tuple:
        return ("preference", history_text, self.llm.identity, self.prompts_for(prompt_set).digest(), prompt_set,
                self.n_preference, self.seed, self.max_new_tokens)

    def _preference(self, history, text, dropped, keywords, item_keywords) -> Preference:
        prompt_set = prompt_set_for(history)
        target = history.target
        target_keywords: tuple[str, ...] = ()
        target_text = ""
        if target is not None:
            # Nothing left after the filter (e.g. only a cut word): the target's own metadata speaks instead.
            target_keywords = target.keywords or tuple(
                drop_echoes(item_keywords[_item_identity(target, prompt_set)], self._echo_words(prompt_set),
                            _item_words([target]))[0]
                or item_fallback_keywords(target, self.n_target)
            )
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
                         tracker: _StageProgress, labels: list[str],
                         fallbacks: list[Callable[[], list[str]]]) -> tuple[list[list[str]], set[int]]:
        """Keywords per request (cache, LLM, one sampled retry, then metadata) and which fell back."""
        results: list[list[str] | None] = [None] * len(requests)
        fell_back: set[int] = set()
        for index, key in enumerate(keys):
            if self.use_cache:
                cached = self.cache.get(*key)
                if isinstance(cached, list) and cached:
                    results[index] = [str(word) for word in cached]
                elif self.metadata_fallback and isinstance(cached, dict) and isinstance(cached.get("fallback"), list):
                    results[index] = [str(word) for word in cached["fallback"]]
                    fell_back.add(index)
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
                    if parsed is not None:
                        results[i] = self._store(keys[i], parsed)
                        continue
                    if not self.metadata_fallback:
                        raise KeywordParseError(
                            f"The LLM gave no usable keywords for {labels[i]}, twice. First answer: "
                            f"{_excerpt(first)!r}; retry: {_excerpt(answer)!r}. Try a larger model, raise "
                            "max_new_tokens, or adjust the prompt templates."
                        )
                    results[i] = fallbacks[i]()
                    fell_back.add(i)
                    log.warning(
                        "The LLM gave no usable keywords for %s, twice (first answer %r); using keywords from its "
                        "metadata instead: %s. A larger model or a higher max_new_tokens may do better.",
                        labels[i], _excerpt(first), ", ".join(results[i]) or "(none)",
                    )
                    if self.use_cache:
                        self.cache.set({"fallback": results[i]}, *keys[i])
        return [result or [] for result in results], fell_back

    def _store(self, key: tuple, keywords: list[str]) -> list[str]:
        if self.use_cache:
            self.cache.set(keywords, *key)
        return keywords

    def _generate(self, requests: list[ChatRequest], do_sample: bool, tracker: _StageProgress | None) -> list[str]:
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


_BUILTIN_PROMPT_WORDS = frozenset().union(*(templates.instruction_words() for templates in DEFAULT_PROMPTS.values()))

# Words that carry no preference of their own; kept out of keywords built from metadata.
_STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "he", "her", "his", "i", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "than", "that", "the", "their", "them", "then", "there", "they", "this", "to", "too", "us", "was", "we", "were", "what", "when", "which", "who", "will", "with", "you", "your", "released"]
)
_WORD = re.compile(r"[^\W\d_][\w'&-]*")


def _content_words(text: str) -> list[str]:
    """The words of ``text`` worth a keyword: no stop words, no numbers, at least three letters."""
    return [word for word in _WORD.findall(text) if len(word) >= 3 and word.casefold() not in _STOPWORDS]


def _unique(words, limit: int) -> list[str]:
    seen: set[str] = set()
    kept = []
    for word in words:
        word = normalize_keyword(word)
        if word and word.casefold() not in seen:
            seen.add(word.casefold())
            kept.append(word)
    return kept[:limit]


def item_fallback_keywords(item: Item, n: int) -> list[str]:
    """Keywords from an item's own metadata: its categories, then the content words of its title."""
    return _unique([*item.categories, *_content_words(item.title)], n)


def history_fallback_keywords(history: UserHistory, item_keywords: Mapping[tuple, tuple[str, ...]], n: int) -> list[str]:
    """Preference keywords from a history's metadata: its most frequent categories, item keywords and
    title words (the conversation's words for a chat), most frequent first."""
    prompt_set = prompt_set_for(history)
    counts: Counter[str] = Counter()
    for item in history.items:
        words = item.keywords or item_keywords.get(_item_identity(item, prompt_set), ())
        counts.update(word.casefold() for word in {*item.categories, *words, *_content_words(item.title)})
    for turn in history.conversation:
        counts.update(word.casefold() for word in _content_words(turn.text))
    return _unique([word for word, _ in counts.most_common()], n)


def _timestamp(unit) -> float:
    value = getattr(unit, "timestamp", None)
    return float("-inf") if value is None else float(value)


def _item_words(items) -> frozenset[str]:
    """The words of the items' titles and categories: what their keywords may have been cut from."""
    return source_words(text for item in items for text in (item.title, *item.categories))


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

    def reserve(self, prompts: int, batch_size: int, steps: int) -> _ReservedStage:
        """Count a later stage of at most ``prompts`` prompts in the total now (see :class:`_ReservedStage`)."""
        size = math.ceil(prompts / batch_size) * steps
        self.total += size
        return _ReservedStage(self, size)

    def stage(self, prompts: int, batch_size: int, steps: int, reserved: int = 0) -> Progress | None:
        if self.progress is None:
            return None
        offset = self.done
        size = math.ceil(prompts / batch_size) * steps
        self.total += size - reserved  # a reserved stage is counted already (cache hits make it smaller)
        self.done += size

        def report(done: int, total: int) -> None:
            self.progress(offset + done * size // max(total, 1), self.total)

        return report

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(max(self.total, 1), max(self.total, 1))


class _ReservedStage:
    """A stage of a :class:`_StageProgress` whose size was added to the total ahead of time."""

    def __init__(self, tracker: _StageProgress, size: int):
        self.tracker, self.size = tracker, size

    def stage(self, prompts: int, batch_size: int, steps: int) -> Progress | None:
        return self.tracker.stage(prompts, batch_size, steps, reserved=self.size)
