"""Explicit keywords from the LLM (PMG steps 2 and 3), batched and cached on disk.

:class:`KeywordExtractor` turns user histories into :class:`Preference` records:

1. *Item keywords*: for every history item the scene shows keywords for (movie:
   ``kw1..kw5``) and for the target, the LLM describes the item (the target
   prompt, ``n_target`` keywords). Cached per (item id, title, model, prompt).
2. *Preference keywords*: the history rendered as text goes into the preference
   prompt; the answer is parsed into ``n_preference`` keywords. Cached per
   (history text, model, prompt, n, seed).

The LLM is a :class:`pmg_core.keyword_source.KeywordSource`: a local
:class:`pmg_core.llm.LocalLLM` (wrapped for you) or a served one
(:class:`pmg_core.served_llm.ServedLLM`). Work for many users runs as one batched
question per phase. A history too long for the LLM's context loses its oldest items (logged,
and counted in :attr:`Preference.truncated_items`) *before* any LLM work, so a
history of 10,000 items costs what one that fits costs. An unparseable answer is
retried once with seeded sampling; if that fails too, the keywords come from the
item's (or the history's) own metadata — genres and title words — logged, and
reported in :attr:`Preference.fallback_items` / :attr:`Preference.fallback_preference`
(``metadata_fallback=False`` raises :class:`KeywordParseError` instead).

The jobs live in their own modules: :mod:`pmg_core.context_fit` (which oldest entries
to drop), :mod:`pmg_core.keyword_answers` (cache, LLM, retry, fallback),
:mod:`pmg_core.keyword_fallback` (keywords from metadata). This module plans each
user once and puts the pieces together.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from .context_fit import FittedHistory, fit_to_context, most_recent
from .errors import InvalidSettingError
from .history import Item, UserHistory
from .keyword_answers import Answer, AskSettings, KeywordCache, KeywordCall, Question
from .keyword_fallback import (
    history_fallback_keywords,
    item_fallback_keywords,
    item_identity,
)
from .keyword_parser import drop_echoes, normalize_keyword, source_words
from .keyword_progress import StageProgress
from .keyword_source import KeywordSource, keyword_source
from .prompts import (
    DEFAULT_PROMPTS,
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

__all__ = ["MAX_ITEMS", "KeywordExtractor", "Preference", "history_fallback_keywords", "item_fallback_keywords",
           "prompt_set_for"]


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


@dataclass(frozen=True)
class _User:
    """What one user's extraction needs, worked out once per call."""

    history: UserHistory  # cut to max_items and to what can fit the context
    dropped: int  # items cut before any LLM work
    prompt_set: str
    prompts: PromptTemplates
    layout: SceneTemplates
    echo_words: frozenset[str]  # keywords made only of these repeat the prompt

    @property
    def described_items(self) -> list[Item]:
        """The items the LLM describes: shown history items without keywords, and the target."""
        items = [item for item in self.history.items if self.layout.uses_item_keywords and not item.keywords]
        target = self.history.target
        return items + ([target] if target is not None and not target.keywords else [])


class KeywordExtractor:
    """Preference and target keywords for user histories from one LLM, local or served.

    ``llm`` is a :class:`pmg_core.llm.LocalLLM` or any
    :class:`pmg_core.keyword_source.KeywordSource` (e.g. a :class:`pmg_core.served_llm.ServedLLM`).
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
    ``placement`` (a local LLM only): entered before the first LLM batch of a call, left at
    its end; a fully cached call never enters it (ComfyUI's nodes load the LLM onto its device there).
    An extractor keeps no state of a call: it may serve several calls, one after another or at once.
    """

    def __init__(
        self,
        llm: KeywordSource,
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

        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise InvalidSettingError(
                f"max_items must be a positive whole number (history items the LLM reads), not {max_items!r}; "
                f"the default is {MAX_ITEMS}."
            )
        self.source = keyword_source(llm, placement)
        self.n_preference = n_preference
        self.n_target = n_target
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self.batch_size = batch_size
        self.max_items = max_items
        self._templates = templates
        self._scene_templates = scene_templates
        self.cache = KeywordCache(Path(cache_dir or default_cache_dir()) / "keywords", enabled=use_cache,
                                  metadata_fallback=metadata_fallback)
        self._ask = AskSettings(max_new_tokens, seed, batch_size, metadata_fallback)
        self.generate_calls = 0  # LLM batches run over all calls (0 on a fully cached run)
        self.retries = 0  # questions asked a second time (sampled) after an unusable answer

    # -- public API ---------------------------------------------------------------
    def extract(self, history: UserHistory, target: Item | None = None, progress: Progress | None = None) -> Preference:
        """The :class:`Preference` of one user; ``target`` replaces the history's target."""
        if target is not None:
            history = dataclasses.replace(history, target=target)
        return self.extract_many([history], progress=progress)[0]

    def extract_many(self, histories: Sequence[UserHistory], progress: Progress | None = None) -> list[Preference]:
        """One :class:`Preference` per history, in order; LLM work is batched across users."""
        users = [self._plan(history) for history in histories]
        if not users:
            return []
        tracker = StageProgress(progress)
        # The preference phase's share of the scale is known now: progress then only rises.
        preference_stage = tracker.reserve(len(users), self.batch_size, self.max_new_tokens)
        with KeywordCall(self.source, self.cache, self._ask, tracker) as call:
            try:
                item_keywords, item_fallbacks = self._describe(users, call.answers)
                fitted = [self.fit_history(user, item_keywords) for user in users]
                questions = [self._preference_question(u, f, item_keywords) for u, f in zip(users, fitted, strict=True)]
                answers = call.answers(questions, stage=preference_stage)
            finally:
                self.generate_calls += call.batches
                self.retries += call.retries
        tracker.finish()
        return [self._preference(user, fit, answer, item_keywords, item_fallbacks)
                for user, fit, answer in zip(users, fitted, answers, strict=True)]

    def missing(self, histories: Sequence[UserHistory]) -> list[int]:
        """Indices of the histories whose keywords are not all cached (no LLM is asked).

        Renders and counts tokens as :meth:`extract_many` does, so it answers for exactly the
        questions an extraction would ask.
        """
        missing = []
        for index, history in enumerate(histories):
            user = self._plan(history)
            try:
                item_keywords, _ = self._describe([user], self._cached_only)
            except _NotCached:
                missing.append(index)
                continue
            question = self._preference_question(user, self.fit_history(user, item_keywords), item_keywords)
            if self.cache.missing([question]):
                missing.append(index)
        return missing

    @property
    def stats(self) -> dict[str, int]:
        """LLM batches run, retried questions and cache hits/misses so far (the ComfyUI node shows them)."""
        s = self.cache.stats
        return {"generate_calls": self.generate_calls, "retries": self.retries, "cache_hits": s.hits,
                "cache_misses": s.misses}

    # -- templates ------------------------------------------------------------------
    def prompts_for(self, prompt_set: str) -> PromptTemplates:
        if isinstance(self._templates, PromptTemplates):
            return self._templates
        if self._templates is not None and prompt_set in self._templates:
            return self._templates[prompt_set]
        return prompt_templates(prompt_set)

    def render_templates_for(self, scene: str) -> SceneTemplates:
        return scene_templates(scene, self._scene_templates)

    def _echo_words(self, prompt_set: str) -> frozenset[str]:
        """The words of this prompt set and of PMG's built-in prompts: keywords made only of them are echoes."""
        return self.prompts_for(prompt_set).instruction_words() | _BUILTIN_PROMPT_WORDS

    # -- each user, once ----------------------------------------------------------------
    def _plan(self, history: UserHistory) -> _User:
        prompt_set = prompt_set_for(history)
        capped = history
        history, dropped = most_recent(history, self.max_items)
        if dropped:
            log.warning("User %r: the LLM reads the %d most recent of %d history items (max_items); the %d "
                        "oldest are dropped.", history.user_id, self.max_items, len(capped.items), dropped)
        user = _User(history, dropped, prompt_set, self.prompts_for(prompt_set),
                     self.render_templates_for(history.scene), self._echo_words(prompt_set))
        return self._bound_to_context(user)

    def _bound_to_context(self, user: _User) -> _User:
        """Cut to the items that can fit the context even without keywords (item keywords only make
        the text longer, so nothing that could fit is lost) before any item is described."""
        history = user.history
        if not user.layout.uses_item_keywords or not history.items or all(item.keywords for item in history.items):
            return user  # fit_history fits these exactly; no per-item LLM work to save
        bare = dataclasses.replace(history, items=tuple(item.with_keywords(()) for item in history.items))
        kept_ids = {id(item) for item in self._fit(user, bare).history.items}
        items = tuple(item for item, plain in zip(history.items, bare.items, strict=True) if id(plain) in kept_ids)
        if len(items) == len(history.items):
            return user
        log.info("User %r: %d of %d history items can fit the LLM's context; the %d oldest are dropped before "
                 "any LLM work.", history.user_id, len(items), len(history.items), len(history.items) - len(items))
        return dataclasses.replace(user, history=dataclasses.replace(history, items=items),
                                   dropped=user.dropped + len(history.items) - len(items))

    def fit_history(self, user: _User | UserHistory, item_keywords: Mapping[tuple, tuple[str, ...]] | None = None,
                    ) -> FittedHistory:
        """The user's history with its item keywords, cut to fit the LLM's context, and its preference prompt.

        A :class:`UserHistory` is planned first (cut to ``max_items``); its items need keywords already
        when the scene shows them, unless ``item_keywords`` (by item identity) holds them.
        """
        if isinstance(user, UserHistory):
            user = self._plan(user)
        item_keywords = item_keywords or {}
        history = user.history
        if user.layout.uses_item_keywords:
            items = tuple(item if item.keywords else item.with_keywords(item_keywords[item_identity(item, user.prompt_set)])
                          for item in history.items)
            history = dataclasses.replace(history, items=items)
        return self._fit(user, history)

    def _fit(self, user: _User, history: UserHistory) -> FittedHistory:
        return fit_to_context(
            history,
            render=lambda trimmed: render_history(trimmed, user.layout),
            to_request=lambda text: preference_prompt(user.prompt_set, text, self.n_preference, user.prompts),
            count_tokens=self.source.count_tokens,
            context_length=self.source.context_length,
            answer_tokens=self.max_new_tokens,
        )

    # -- phase 1: item keywords -------------------------------------------------------
    def _describe(self, users: list[_User], answer: Callable[[list[Question]], list[Answer]]) -> tuple[dict, set]:
        """Keywords per item identity (each item asked once), and the identities that fell back to metadata."""
        unique: dict[tuple, tuple[Item, _User]] = {}
        for user in users:
            for item in user.described_items:
                unique.setdefault(item_identity(item, user.prompt_set), (item, user))
        questions = [self._item_question(item, user) for item, user in unique.values()]
        answers = answer(questions)
        # Small models often answer with the title itself; it is already in every text that
        # shows item keywords, so it is dropped (an item may end up with no extra keywords).
        keywords = {}
        for (key, (item, _)), found in zip(unique.items(), answers, strict=True):
            title = normalize_keyword(item.title).casefold()
            keywords[key] = tuple(word for word in found.keywords if word.casefold() != title)
        return keywords, {key for key, found in zip(unique, answers, strict=True) if found.fell_back}

    def _item_question(self, item: Item, user: _User) -> Question:
        label = f"item {item.item_id!r} ({item.title!r})"
        request = target_prompt(user.prompt_set, item, self.n_target, user.prompts)
        length = self.source.count_tokens(request)
        if length + self.max_new_tokens > self.source.context_length:
            raise InvalidSettingError(
                f"The keyword prompt for {label} takes {length} tokens, which with max_new_tokens="
                f"{self.max_new_tokens} exceeds the LLM's context of {self.source.context_length} tokens; "
                "lower max_new_tokens, shorten the item's description, or use an LLM with a longer context."
            )
        key = ("item", item.item_id, item.title, self.source.identity, user.prompts.digest(), user.prompt_set,
               self.n_target, self.seed, self.max_new_tokens)
        return Question(key, request, self.n_target, label, lambda: item_fallback_keywords(item, self.n_target))

    def _cached_only(self, questions: list[Question]) -> list[Answer]:
        answers = [self.cache.lookup(question) for question in questions]
        if any(answer is None for answer in answers):
            raise _NotCached
        return answers  # type: ignore[return-value]

    # -- phase 2: preference keywords ---------------------------------------------------
    def _preference_question(self, user: _User, fit: FittedHistory, item_keywords: Mapping) -> Question:
        key = ("preference", fit.text, self.source.identity, user.prompts.digest(), user.prompt_set,
               self.n_preference, self.seed, self.max_new_tokens)
        return Question(key, fit.request, self.n_preference, f"the preference of user {user.history.user_id!r}",
                        lambda: history_fallback_keywords(user.history, item_keywords, self.n_preference,
                                                          user.prompt_set))

    def _preference(self, user: _User, fit: FittedHistory, answer: Answer, item_keywords: Mapping,
                    item_fallbacks: set[tuple]) -> Preference:
        history = user.history
        item_words = _item_words(history.items)
        keywords, echoes = drop_echoes(answer.keywords, user.echo_words, item_words)
        fell_back = answer.fell_back
        if echoes:
            log.info("User %r: dropped keywords that repeat the prompt: %s", history.user_id, echoes)
        if not keywords:  # nothing but echoes: the history's own metadata speaks instead
            keywords = history_fallback_keywords(history, item_keywords, self.n_preference, user.prompt_set)
            fell_back = True
        target = history.target
        target_keywords: tuple[str, ...] = ()
        target_text = ""
        if target is not None:
            # Nothing left after the filter (e.g. only a cut word): the target's own metadata speaks instead.
            target_keywords = tuple(target.keywords or (
                drop_echoes(item_keywords[item_identity(target, user.prompt_set)], user.echo_words,
                            _item_words([target]))[0]
                or item_fallback_keywords(target, self.n_target)
            ))
            target_text = render_target_text(target, target_keywords, history.scene)
        fallen = [item for item in user.described_items if item_identity(item, user.prompt_set) in item_fallbacks]
        notes = [f"item {item.item_id!r} ({item.title!r})" for item in fallen]
        notes += ["the preference keywords"] if fell_back else []
        return Preference(
            user_id=history.user_id,
            scene=history.scene,
            history_text=fit.text,
            preference_keywords=tuple(keywords),
            target_keywords=target_keywords,
            target_text=target_text,
            preference_text=", ".join(keywords),
            soft_prompt_text=soft_prompt_text(user.prompt_set, fit.text, user.prompts),
            negative_prompt=negative_prompt(history.scene),
            truncated_items=user.dropped + fit.dropped,
            fallback_items=len(fallen),
            fallback_preference=fell_back,
            fallback_notes=tuple(notes),
        )


class _NotCached(Exception):
    """Raised inside :meth:`KeywordExtractor.missing`: an item question has no cached answer."""


_BUILTIN_PROMPT_WORDS = frozenset().union(*(templates.instruction_words() for templates in DEFAULT_PROMPTS.values()))


def _item_words(items) -> frozenset[str]:
    """The words of the items' titles and categories: what their keywords may have been cut from."""
    return source_words(text for item in items for text in (item.title, *item.categories))
