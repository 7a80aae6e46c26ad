"""Where keyword answers come from: the one interface the keyword extractor asks.

A :class:`KeywordSource` answers chat requests with text and says how big a request is
for it. Two kinds exist: :class:`LocalKeywordSource` (a :class:`pmg_core.llm.LocalLLM`
in this process, batched) and :class:`pmg_core.served_llm.ServedLLM` (a model behind
an HTTP API). The extractor never looks past this interface, so a cache, the retry and
the metadata fallback work the same for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol, runtime_checkable

from .prompts import ChatRequest

Progress = Callable[[int, int], None]


@runtime_checkable
class KeywordSource(Protocol):
    """What the keyword extractor needs from an LLM, local or served."""

    @property
    def identity(self) -> str:
        """Names the model in cache keys: two sources with one identity give the same answers."""

    @property
    def context_length(self) -> int:
        """Tokens the prompt and the answer must fit in together."""

    # True when an answer continues the request's assistant prefix ("The keywords are:"), so
    # the parser reads both together; a chat API starts its answer itself.
    primes_answer: bool

    def count_tokens(self, request: ChatRequest) -> int:
        """How many tokens ``request`` takes as a prompt (an upper estimate where no tokenizer exists)."""

    def ready(self) -> AbstractContextManager:
        """Entered once before a call's first question, left at its end (a cached call never enters it)."""

    def answer(self, requests: Sequence[ChatRequest], max_new_tokens: int, seed: int, do_sample: bool,
               batch_size: int = 8, progress: Progress | None = None) -> list[str]:
        """One answer per request, in order: greedy unless ``do_sample`` (then seeded)."""


class LocalKeywordSource:
    """A :class:`pmg_core.llm.LocalLLM` as a keyword source, through its public API only.

    ``placement`` (optional) is a context manager factory entered before the first
    question of a call: the ComfyUI nodes load the LLM onto its device there.
    """

    primes_answer = True

    def __init__(self, llm, placement: Callable[[], AbstractContextManager] | None = None):
        self.llm = llm
        self.placement = placement

    def __repr__(self) -> str:
        return f"LocalKeywordSource({self.llm!r})"

    @property
    def identity(self) -> str:
        return self.llm.identity

    @property
    def context_length(self) -> int:
        return self.llm.context_length

    def count_tokens(self, request: ChatRequest) -> int:
        return self.llm.count_tokens(request.for_llm(self.llm))

    def ready(self) -> AbstractContextManager:
        return self.placement() if self.placement is not None else nullcontext()

    def answer(self, requests: Sequence[ChatRequest], max_new_tokens: int, seed: int, do_sample: bool,
               batch_size: int = 8, progress: Progress | None = None) -> list[str]:
        return self.llm.generate([request.for_llm(self.llm) for request in requests], max_new_tokens=max_new_tokens,
                                 seed=seed, do_sample=do_sample, progress=progress, batch_size=batch_size)


def keyword_source(llm, placement: Callable[[], AbstractContextManager] | None = None) -> KeywordSource:
    """``llm`` as a keyword source: a source is kept as it is, a local LLM is wrapped."""
    # Asked of the class: isinstance() on the Protocol would read `identity`, which may ask a server.
    if callable(getattr(type(llm), "answer", None)):
        return llm
    return LocalKeywordSource(llm, placement)
