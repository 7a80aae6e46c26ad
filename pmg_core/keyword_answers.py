"""Keyword questions answered: the cache first, then the LLM, one sampled retry, then metadata.

A :class:`Question` is one prompt with everything its answer needs (cache key, keyword
count, a label for people, the metadata fallback). :class:`KeywordCache` stores answers
per key and can say which questions have none, without any LLM. :func:`answer_questions`
runs the policy every keyword source shares; a failed answer is never cached (only a
metadata fallback is, marked as such, so a later run reports it again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from .cache import JsonCache
from .errors import KeywordParseError
from .keyword_parser import parse_keywords
from .keyword_progress import StageProgress
from .keyword_source import KeywordSource
from .prompts import ChatRequest

log = logging.getLogger("pmg_core.keywords")


@dataclass(frozen=True)
class Question:
    """One keyword prompt and what its answer needs."""

    key: tuple  # the cache key parts
    request: ChatRequest
    n: int  # keywords asked for (the parser's cap)
    label: str  # for people: "item '135' ('2001: A Space Odyssey')"
    fallback: Callable[[], list[str]]  # keywords from metadata


@dataclass(frozen=True)
class Answer:
    keywords: list[str]
    fell_back: bool = False  # from metadata: the LLM gave no usable keywords, twice


@dataclass(frozen=True)
class AskSettings:
    """How the LLM is asked (the extractor's settings)."""

    max_new_tokens: int
    seed: int
    batch_size: int
    metadata_fallback: bool


class KeywordCache:
    """Answers on disk (``folder``), one JSON file per question; ``enabled=False`` keeps nothing."""

    def __init__(self, folder: Path, enabled: bool = True, metadata_fallback: bool = True):
        self.store = JsonCache(folder)
        self.enabled = enabled
        self.metadata_fallback = metadata_fallback

    @property
    def stats(self):
        return self.store.stats

    def lookup(self, question: Question) -> Answer | None:
        if not self.enabled:
            return None
        cached = self.store.get(*question.key)
        if isinstance(cached, list) and cached:
            return Answer([str(word) for word in cached])
        if self.metadata_fallback and isinstance(cached, dict) and isinstance(cached.get("fallback"), list):
            return Answer([str(word) for word in cached["fallback"]], fell_back=True)
        return None

    def missing(self, questions: Sequence[Question]) -> list[int]:
        """Indices of the questions the cache cannot answer: what an LLM would be asked."""
        return [i for i, question in enumerate(questions) if self.lookup(question) is None]

    def __len__(self) -> int:
        return len(self.store)

    def remember(self, question: Question, answer: Answer) -> None:
        if self.enabled:
            self.store.set({"fallback": answer.keywords} if answer.fell_back else answer.keywords, *question.key)


class KeywordCall:
    """One extraction call's asking: the source is made ready at most once, on the first miss.

    Lives for one ``extract_many`` call (a ``with`` block), so an extractor serves any number
    of calls, one after another or at once. ``batches`` counts the source's answer() calls,
    ``retries`` the questions asked again (sampled) after an unusable answer.
    """

    def __init__(self, source: KeywordSource, cache: KeywordCache, settings: AskSettings, tracker: StageProgress):
        self.source, self.cache, self.settings, self.tracker = source, cache, settings, tracker
        self.batches = 0
        self.retries = 0
        self._stack = ExitStack()
        self._ready = False

    def __enter__(self) -> KeywordCall:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def answers(self, questions: Sequence[Question], stage=None) -> list[Answer]:
        """One answer per question (see the module docstring for the policy)."""
        results: list[Answer | None] = [self.cache.lookup(question) for question in questions]
        missing = [i for i, result in enumerate(results) if result is None]
        if not missing:
            return results  # type: ignore[return-value]
        texts = self._ask([questions[i].request for i in missing], do_sample=False, stage=stage or self.tracker)
        failures = []
        for i, text in zip(missing, texts, strict=True):
            parsed = self._parse(questions[i], text)
            if parsed is None:
                failures.append((i, text))
            else:
                results[i] = self._keep(questions[i], Answer(parsed))
        if failures:
            log.info("Retrying %d unparseable answer(s) once with sampling.", len(failures))
            self.retries += len(failures)
            retried = self._ask([questions[i].request for i, _ in failures], do_sample=True, stage=None)
            for (i, first), text in zip(failures, retried, strict=True):
                parsed = self._parse(questions[i], text)
                results[i] = self._keep(questions[i], Answer(parsed) if parsed is not None
                                        else self._fallback(questions[i], first, text))
        return results  # type: ignore[return-value]

    def _fallback(self, question: Question, first: str, retry: str) -> Answer:
        if not self.settings.metadata_fallback:
            raise KeywordParseError(
                f"The LLM gave no usable keywords for {question.label}, twice. First answer: "
                f"{_excerpt(first)!r}; retry: {_excerpt(retry)!r}. Try a larger model, raise "
                "max_new_tokens, or adjust the prompt templates."
            )
        keywords = question.fallback()
        log.warning(
            "The LLM gave no usable keywords for %s, twice (first answer %r); using keywords from its "
            "metadata instead: %s. A larger model or a higher max_new_tokens may do better.",
            question.label, _excerpt(first), ", ".join(keywords) or "(none)",
        )
        return Answer(keywords, fell_back=True)

    def _keep(self, question: Question, answer: Answer) -> Answer:
        self.cache.remember(question, answer)
        return answer

    def _ask(self, requests: list[ChatRequest], do_sample: bool, stage) -> list[str]:
        if not self._ready:
            self._stack.enter_context(self.source.ready())
            self._ready = True
        self.batches += 1
        s = self.settings
        progress = stage.stage(len(requests), s.batch_size, s.max_new_tokens) if stage is not None else None
        return self.source.answer(requests, max_new_tokens=s.max_new_tokens, seed=s.seed, do_sample=do_sample,
                                  batch_size=s.batch_size, progress=progress)

    def _parse(self, question: Question, text: str) -> list[str] | None:
        # A local LLM's answer continues the primed prefix ("The keywords are: 1."): parse both together.
        primed = f"{question.request.assistant_prefix} {text}" if self.source.primes_answer else text
        try:
            return parse_keywords(primed, expected=question.n)
        except KeywordParseError:
            return None


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
