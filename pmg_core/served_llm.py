"""An LLM someone already serves (Ollama, LM Studio, vLLM, llama.cpp, ``transformers serve``), for keywords.

:class:`ServedLLM` is a :class:`pmg_core.keyword_source.KeywordSource`: the keyword
extractor asks it exactly as it asks a local LLM. It speaks either the OpenAI-compatible
chat API (``POST {base}/v1/chat/completions``, ``GET {base}/v1/models``) or Ollama's own
(``POST {base}/api/chat``, ``GET /api/tags`` for the model's digest), one HTTP request per
question, greedy (temperature 0) with a seed where the API takes one.

Soft prompts need the LLM's hidden states, which no chat API returns: they still come from
a local LLM. A server gives no tokenizer either, so the context is fitted with a
conservative estimate (:func:`estimate_tokens`) against ``context_length``.

Every failure is a :class:`ServedLLMError` naming the URL and the fix: the server is
down, too slow, does not serve the model, answers with an HTTP error, with something
that is not JSON, or with no text at all.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import requests

from .errors import InvalidSettingError, ServedLLMError
from .prompts import ChatRequest

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
API_KINDS = ("openai", "ollama")
DEFAULT_CONTEXT_LENGTH = 8192
# Sampled retries use what the local LLM samples with (pmg_core.llm.LocalLLM.generate).
_SAMPLING = {"temperature": 0.7, "top_p": 0.95}
_BYTES_PER_TOKEN = 3  # BPE vocabularies average ~4 bytes of English per token: 3 over-counts on purpose


def estimate_tokens(text: str) -> int:
    """Tokens ``text`` takes at most, about: UTF-8 bytes / 3 (a server gives no tokenizer to count with)."""
    return math.ceil(len(text.encode("utf-8")) / _BYTES_PER_TOKEN) + 8  # + the chat template's markers


class ServedLLM:
    """A model behind an HTTP chat API, asked one question per request.

    ``base_url`` is the server's root (``http://127.0.0.1:11434`` for Ollama,
    ``http://127.0.0.1:1234`` for LM Studio; a trailing ``/v1`` is accepted). ``model`` is
    the name the server knows the model by. ``timeout`` (seconds) bounds each request;
    ``keep_alive`` is Ollama's (how long it keeps the model in memory after the answer:
    ``"0"`` frees VRAM at once, ``"5m"`` is Ollama's default). ``context_length`` is what
    the prompt and the answer must fit in (Ollama is told it as ``num_ctx``).
    ``requests_sent`` counts the HTTP requests this object made.
    """

    def __init__(self, base_url: str, model: str, api: str = "openai", timeout: float = 120.0,
                 keep_alive: str = "", context_length: int = DEFAULT_CONTEXT_LENGTH,
                 session: requests.Session | None = None):
        if api not in API_KINDS:
            raise InvalidSettingError(f"api must be one of {', '.join(API_KINDS)}, not {api!r}.")
        base = (base_url or "").strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise InvalidSettingError(
                f"The LLM server URL {base_url!r} is not an http(s) URL; give e.g. http://127.0.0.1:11434 "
                "(Ollama) or http://127.0.0.1:1234 (LM Studio)."
            )
        if not (model or "").strip():
            raise InvalidSettingError(
                f"No model named for the LLM server at {base}; give the name it serves the model by "
                "(`ollama list`, or GET /v1/models)."
            )
        if timeout <= 0:
            raise InvalidSettingError(f"timeout must be a positive number of seconds, not {timeout!r}.")
        if context_length < 256:
            raise InvalidSettingError(f"context_length must be at least 256 tokens, not {context_length!r}.")
        self.base_url = base.removesuffix("/v1")
        self.model = model.strip()
        self.api = api
        self.timeout = float(timeout)
        self.keep_alive = keep_alive.strip()
        self.context_length = int(context_length)
        self.requests_sent = 0
        self._session = session or requests.Session()
        self._digest: str | None = None

    def __repr__(self) -> str:
        return f"ServedLLM(api={self.api!r}, base_url={self.base_url!r}, model={self.model!r})"

    # -- what the keyword extractor asks (pmg_core.keyword_source.KeywordSource) ----------
    @property
    def identity(self) -> str:
        """The cache's name for this model: the server's model name, plus Ollama's digest.

        The OpenAI-compatible API lists no digest, so nothing is asked: a returning user's
        prompt sends no request at all. Ollama's digest is read once per object (one
        ``GET /api/tags``, which also tells an unknown model apart) and kept.
        """
        name = f"served-{self.api}:{self.model}"
        if self.api == "ollama":
            if self._digest is None:
                self._digest = self._ollama_digest()
            return f"{name}@{self._digest.split(':')[-1][:12]}" if self._digest else name
        return name

    primes_answer = False  # a chat API starts the answer itself: there is no primed prefix to continue

    def count_tokens(self, request: ChatRequest) -> int:
        return estimate_tokens(f"{request.system}\n" + "\n".join(request.turns))

    def ready(self):
        """Entered before the first question of a call: a server needs nothing placed."""
        return nullcontext()

    def answer(self, requests_: Sequence[ChatRequest], max_new_tokens: int, seed: int, do_sample: bool,
               batch_size: int = 1, progress: Progress | None = None) -> list[str]:
        """One answer per request, in order (one HTTP request each); ``progress`` counts decoding steps."""
        del batch_size  # one question per HTTP request: the server batches as it likes
        answers = []
        total = len(requests_) * max_new_tokens
        for index, request in enumerate(requests_):
            answers.append(self._ask(request, max_new_tokens, seed + index if do_sample else seed, do_sample))
            if progress is not None:
                progress((index + 1) * max_new_tokens, total)
        return answers

    # -- one question ----------------------------------------------------------------
    def _ask(self, request: ChatRequest, max_new_tokens: int, seed: int, do_sample: bool) -> str:
        messages = ([{"role": "system", "content": request.system}] if request.system else [])
        messages.append({"role": "user", "content": "\n".join(request.turns)})
        sampling = _SAMPLING if do_sample else {"temperature": 0.0}
        if self.api == "ollama":
            body = {"model": self.model, "messages": messages, "stream": False,
                    "options": {**sampling, "seed": seed, "num_predict": max_new_tokens,
                                "num_ctx": self.context_length}}
            if self.keep_alive:
                body["keep_alive"] = self.keep_alive
            reply = self._post("/api/chat", body)
            text = (reply.get("message") or {}).get("content") if isinstance(reply, dict) else None
        else:
            body = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens, "seed": seed,
                    "stream": False, **sampling}
            reply = self._post("/v1/chat/completions", body)
            choices = reply.get("choices") if isinstance(reply, dict) else None
            text = ((choices[0] or {}).get("message") or {}).get("content") if choices else None
        if not isinstance(text, str) or not text.strip():
            raise ServedLLMError(
                f"The LLM server at {self.base_url} answered model {self.model!r} with no text "
                f"({_excerpt(str(reply))!r}); check that the model is a chat model and that the server works "
                "(ask it something in its own client), or raise max_new_tokens."
            )
        return text.strip()

    # -- HTTP --------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        return self._request("POST", path, body)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}{path}"
        self.requests_sent += 1
        try:
            response = self._session.request(method, url, json=body, timeout=self.timeout)
        except requests.exceptions.Timeout as error:
            raise ServedLLMError(
                f"The LLM server at {url} did not answer within {self.timeout:g} s; raise the timeout (a large "
                "model's first answer includes its load time), or check that the server is not stuck."
            ) from error
        except requests.exceptions.ConnectionError as error:
            raise ServedLLMError(
                f"Cannot reach the LLM server at {self.base_url} ({type(error).__name__}); start it "
                "(`ollama serve`, LM Studio's server, `transformers serve`...) or fix the URL and port."
            ) from error
        if response.status_code >= 400:
            raise self._http_error(url, response)
        try:
            return response.json()
        except ValueError as error:
            raise ServedLLMError(
                f"The LLM server at {url} answered with something that is not JSON "
                f"({_excerpt(response.text)!r}); check that the URL is the server's root and that the "
                f"API kind ({self.api}) is the one it speaks."
            ) from error

    def _http_error(self, url: str, response: requests.Response) -> ServedLLMError:
        detail = _excerpt(response.text)
        if response.status_code in (400, 404, 500) and not url.endswith(("/v1/models", "/api/tags")):
            known = self._served_models()
            if known is not None and not {self.model, f"{self.model}:latest"} & set(known):
                listed = ", ".join(known[:10]) or "none"
                pull = f" (`ollama pull {self.model}`)" if self.api == "ollama" else ""
                return ServedLLMError(
                    f"The LLM server at {self.base_url} does not serve the model {self.model!r} (it serves: "
                    f"{listed}); give one of those names, or load that model into the server{pull}."
                )
        return ServedLLMError(
            f"The LLM server at {url} answered HTTP {response.status_code} ({detail!r}); check the server's "
            "log, the model name and the API kind."
        )

    def _served_models(self) -> list[str] | None:
        """The model names the server lists, or ``None`` when it cannot say."""
        try:
            if self.api == "ollama":
                listed = self._request("GET", "/api/tags").get("models") or []
                return [str(m.get("name") or m.get("model")) for m in listed]
            listed = self._request("GET", "/v1/models").get("data") or []
            return [str(m.get("id")) for m in listed]
        except (ServedLLMError, AttributeError, TypeError):
            return None

    def _ollama_digest(self) -> str:
        """The digest Ollama lists for the model ('' when it lists none); an unknown model is an error."""
        listed = self._request("GET", "/api/tags").get("models") or []
        names = {self.model, f"{self.model}:latest"}
        for entry in listed:
            if isinstance(entry, dict) and (entry.get("name") in names or entry.get("model") in names):
                return str(entry.get("digest") or "")
        known = ", ".join(str(e.get("name")) for e in listed if isinstance(e, dict)) or "none"
        raise ServedLLMError(
            f"The Ollama server at {self.base_url} does not have the model {self.model!r} (it has: {known}); "
            f"run `ollama pull {self.model}` or give one of those names."
        )


def _excerpt(text: str, limit: int = 160) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
