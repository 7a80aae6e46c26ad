"""The served keyword source against real servers.

* A real OpenAI-compatible server: ``transformers serve`` (the pinned transformers with its
  serving extras) on the tiny random Llama folder, CPU, 127.0.0.1: keywords come back, the
  cache keys on the served model, a returning user sends no request, an unknown model is a
  clear error.
* Bad servers are tiny real HTTP servers on 127.0.0.1 (http.server in a thread) that answer
  500, not JSON, an empty answer, nothing usable, or hang; "down" is a port nothing listens on.
* Ollama's own API: no Ollama installs from a package registry here, so its request and
  answer shapes are checked against a tiny real HTTP server speaking them.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pmg_core.errors import InvalidSettingError, ServedLLMError
from pmg_core.history import Item, UserHistory
from pmg_core.keywords import KeywordExtractor
from pmg_core.served_llm import ServedLLM, estimate_tokens
from pmg_tools.llm_server import TransformersServe
from pmg_tools.server import free_port

FAST = {"max_new_tokens": 6}
KEYWORDS = "1. space opera\n2. salvage crews\n3. night trains\n4. robots"


def movie(i: int, title: str | None = None) -> Item:
    return Item(str(i), title or f"Movie number {i}", ("Drama", "Crime"), description="Released in 1990.")


def movie_user(user_id: str, ids: list[int], target: int = 99) -> UserHistory:
    return UserHistory(user_id, tuple(movie(i) for i in ids), scene="movie", target=movie(target, "Target Film"))


# -- tiny real HTTP servers ----------------------------------------------------------------


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 whose answers per path are set by the test; it records the bodies."""

    def __init__(self, routes: dict[str, tuple[int, str, float]]):
        self.routes = routes  # path -> (status, body, seconds to wait first)
        self.bodies: list[tuple[str, dict | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                server.bodies.append((self.path, json.loads(raw) if raw else None))
                status, body, delay = server.routes.get(self.path, (404, '{"error": "no such route"}', 0.0))
                time.sleep(delay)
                payload = body(server.bodies[-1][1]) if callable(body) else body
                data = payload.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up
                    self.wfile.write(data)

            do_GET = do_POST = _reply

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def openai_answer(text: str) -> str:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})


# -- a real transformers serve ----------------------------------------------------------------


@pytest.fixture(scope="module")
def served_tiny(tiny_llm_folder):
    """``transformers serve`` on the tiny random Llama (CPU, offline), for this module."""
    with TransformersServe(tiny_llm_folder) as server:
        yield server


def test_keywords_come_from_transformers_serve_and_a_returning_user_sends_nothing(served_tiny, tmp_path):
    source = ServedLLM(served_tiny.url, served_tiny.model, timeout=120)
    logged = served_tiny.requests_logged()
    history = movie_user("u1", [1, 2])
    extractor = KeywordExtractor(source, cache_dir=tmp_path, **FAST)
    first = extractor.extract(history)
    assert first.preference_keywords and first.target_keywords
    assert first.history_text.startswith("1. Movie number 1(Drama, Crime): ")
    # counted at the server: 2 history items + the target + the preference, once each (+ one per retry)
    sent = served_tiny.requests_logged() - logged
    assert sent == source.requests_sent == 4 + extractor.stats["retries"]
    assert source.identity == f"served-openai:{served_tiny.model}"  # what the cache keys on

    again_source = ServedLLM(served_tiny.url, served_tiny.model)
    again = KeywordExtractor(again_source, cache_dir=tmp_path, **FAST)
    assert again.missing([history]) == []
    assert again.extract(history) == first
    assert again_source.requests_sent == 0 and served_tiny.requests_logged() - logged == sent
    assert again.stats["generate_calls"] == 0


def test_an_unknown_model_is_a_clear_error_and_nothing_is_cached(served_tiny, tmp_path):
    extractor = KeywordExtractor(ServedLLM(served_tiny.url, "no-such-model"), cache_dir=tmp_path, **FAST)
    with pytest.raises(ServedLLMError, match=r"does not serve the model 'no-such-model' \(it serves: .*tiny"):
        extractor.extract(movie_user("u", [1]))
    assert len(extractor.cache) == 0


# -- bad servers ----------------------------------------------------------------------------


def test_a_server_that_is_down_names_the_url_and_the_fix(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    extractor = KeywordExtractor(ServedLLM(url, "m"), cache_dir=tmp_path)
    with pytest.raises(ServedLLMError, match=rf"Cannot reach the LLM server at {url}.*start it"):
        extractor.extract(movie_user("u", [1]))
    assert len(extractor.cache) == 0


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, '{"error": "CUDA out of memory"}', r"HTTP 500 .*CUDA out of memory.*server's log"),
        (200, "<html>LM Studio</html>", r"not JSON .*LM Studio.*API kind \(openai\)"),
        (200, openai_answer("   "), r"with no text"),
        (200, '{"choices": []}', r"with no text"),
    ],
    ids=["http-500", "not-json", "blank-answer", "no-choices"],
)
def test_unusable_answers_are_clear_errors_and_never_cached(tmp_path, status, body, message):
    routes = {"/v1/chat/completions": (status, body, 0.0), "/v1/models": (200, '{"data": [{"id": "m"}]}', 0.0)}
    with ScriptedServer(routes) as server:
        extractor = KeywordExtractor(ServedLLM(server.url, "m"), cache_dir=tmp_path)
        with pytest.raises(ServedLLMError, match=message) as caught:
            extractor.extract(movie_user("u", [1]))
    assert server.url in str(caught.value)
    assert len(extractor.cache) == 0


def test_a_server_that_hangs_times_out(tmp_path):
    with ScriptedServer({"/v1/chat/completions": (200, openai_answer(KEYWORDS), 3.0)}) as server:
        extractor = KeywordExtractor(ServedLLM(server.url, "m", timeout=0.5), cache_dir=tmp_path)
        started = time.monotonic()
        with pytest.raises(ServedLLMError, match=r"did not answer within 0.5 s; raise the timeout"):
            extractor.extract(movie_user("u", [1]))
        assert time.monotonic() - started < 2.5
    assert len(extractor.cache) == 0


def test_no_usable_keywords_are_retried_sampled_then_fall_back_to_metadata(tmp_path):
    with ScriptedServer({"/v1/chat/completions": (200, openai_answer("..."), 0.0)}) as server:
        source = ServedLLM(server.url, "m")
        preference = KeywordExtractor(source, cache_dir=tmp_path, seed=5).extract(movie_user("u", [1], target=2))
    chats = [body for path, body in server.bodies if path == "/v1/chat/completions"]
    # items 1 and 2 greedy, their two sampled retries, the preference greedy, its sampled retry
    assert [b["temperature"] for b in chats] == [0.0, 0.0, 0.7, 0.7, 0.0, 0.7]
    assert [b["seed"] for b in chats] == [5, 5, 5, 6, 5, 5], "greedy: the seed; sampled: seeded per question"
    assert all(b["max_tokens"] == 100 for b in chats) and all(b["top_p"] == 0.95 for b in chats[2:4])
    assert preference.fallback_preference and preference.fallback_items == 2
    assert preference.target_keywords == ("Drama", "Crime", "Target", "Film")
    # the fallbacks are cached as such: a second run asks nothing and still reports them
    with ScriptedServer({}) as silent:
        again = KeywordExtractor(ServedLLM(silent.url, "m"), cache_dir=tmp_path, seed=5).extract(
            movie_user("u", [1], target=2))
    assert silent.bodies == [] and again == preference


def test_the_messages_carry_the_prompt_and_the_answer_is_parsed_without_a_primer(tmp_path):
    with ScriptedServer({"/v1/chat/completions": (200, openai_answer(KEYWORDS), 0.0)}) as server:
        history = UserHistory("u", (movie(1).with_keywords(["noir"]),), scene="generic")
        preference = KeywordExtractor(ServedLLM(server.url + "/v1/", "m"), cache_dir=tmp_path).extract(history)
    (path, body), = server.bodies
    assert path == "/v1/chat/completions" and body["model"] == "m" and body["stream"] is False
    assert [m["role"] for m in body["messages"]] in (["user"], ["system", "user"])
    assert "Movie number 1" in body["messages"][-1]["content"]
    assert preference.preference_keywords[:2] == ("space opera", "salvage crews")


def test_estimated_tokens_fit_long_histories_into_the_served_context(tmp_path):
    items = tuple(movie(i, f"A rather long movie title number {i}").with_keywords(["noir"]) for i in range(1, 41))
    with ScriptedServer({"/v1/chat/completions": (200, openai_answer(KEYWORDS), 0.0)}) as server:
        source = ServedLLM(server.url, "m", context_length=400)
        preference = KeywordExtractor(source, cache_dir=tmp_path, max_new_tokens=60).extract(
            UserHistory("long", items, scene="generic"))
    assert 0 < preference.truncated_items < 40
    sent = server.bodies[0][1]["messages"]
    assert estimate_tokens("\n".join(m["content"] for m in sent)) + 60 <= 400 + 8


# -- Ollama's own API (shapes only: no Ollama from a registry here) ---------------------------


def ollama_routes(digest: str = "sha256:" + "ab" * 32) -> dict:
    tags = {"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest", "digest": digest}]}
    return {"/api/tags": (200, json.dumps(tags), 0.0),
            "/api/chat": (200, json.dumps({"model": "llama3.2", "message": {"role": "assistant", "content": KEYWORDS},
                                           "done": True}), 0.0)}


def test_ollama_requests_are_greedy_seeded_and_keep_alive(tmp_path):
    with ScriptedServer(ollama_routes()) as server:
        source = ServedLLM(server.url, "llama3.2", api="ollama", keep_alive="0", context_length=4096)
        history = UserHistory("u", (movie(1).with_keywords(["noir"]),), scene="generic")
        preference = KeywordExtractor(source, cache_dir=tmp_path, seed=3).extract(history)
    assert source.identity == "served-ollama:llama3.2@abababababab"
    (tags_path, _), (chat_path, body) = server.bodies
    assert (tags_path, chat_path) == ("/api/tags", "/api/chat")
    assert body["keep_alive"] == "0" and body["stream"] is False and body["model"] == "llama3.2"
    assert body["options"] == {"temperature": 0.0, "seed": 3, "num_predict": 100, "num_ctx": 4096}
    assert preference.preference_keywords[0] == "space opera"


def test_ollama_cache_keys_on_the_digest(tmp_path):
    history = UserHistory("u", (movie(1).with_keywords(["noir"]),), scene="generic")
    with ScriptedServer(ollama_routes()) as server:
        KeywordExtractor(ServedLLM(server.url, "llama3.2", api="ollama"), cache_dir=tmp_path).extract(history)
        same = KeywordExtractor(ServedLLM(server.url, "llama3.2", api="ollama"), cache_dir=tmp_path)
        assert same.missing([history]) == []
    with ScriptedServer(ollama_routes(digest="sha256:" + "cd" * 32)) as pulled_again:
        changed = KeywordExtractor(ServedLLM(pulled_again.url, "llama3.2", api="ollama"), cache_dir=tmp_path)
        assert changed.missing([history]) == [0], "a new digest is a new model: its answers are not reused"


def test_an_unknown_ollama_model_says_to_pull_it(tmp_path):
    with ScriptedServer(ollama_routes()) as server:
        extractor = KeywordExtractor(ServedLLM(server.url, "qwen2.5", api="ollama"), cache_dir=tmp_path)
        with pytest.raises(ServedLLMError, match=r"does not have the model 'qwen2.5' \(it has: llama3.2:latest\); "
                                                 r"run `ollama pull qwen2.5`"):
            extractor.extract(movie_user("u", [1]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"base_url": "localhost:11434", "model": "m"}, "not an http"), ({"base_url": "http://h", "model": " "}, "No model"),
     ({"base_url": "http://h", "model": "m", "api": "grpc"}, "api must be one of"),
     ({"base_url": "http://h", "model": "m", "timeout": 0}, "timeout")],
)
def test_bad_settings_are_clear_errors(kwargs, message):
    with pytest.raises(InvalidSettingError, match=message):
        ServedLLM(**kwargs)


def test_pmg_keywords_with_llm_url_asks_the_server_once_per_question(served_tiny, tmp_path, capsys):
    from pmg_core.cli import main as pmg_main

    argv = ["keywords", "--history", "builtin:stickers", "--user", "sticker_user_000", "--llm-url", served_tiny.url,
            "--llm-model", served_tiny.model, "--cache-dir", str(tmp_path), "--max-new-tokens", "6"]
    logged = served_tiny.requests_logged()
    assert pmg_main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first[0]["user_id"] == "sticker_user_000" and first[0]["preference_keywords"]
    assert served_tiny.requests_logged() > logged
    logged = served_tiny.requests_logged()
    assert pmg_main(argv) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert served_tiny.requests_logged() == logged, "a returning user sends no request"
    assert pmg_main(["keywords", "--history", "builtin:stickers", "--user", "sticker_user_000", "--llm-model", "m"]) == 1
    assert "--llm-model names a served model" in capsys.readouterr().err


def test_prefetch_for_the_served_workflow_asks_its_server(tmp_path):
    """`pmg queue --prefetch` on pmg_served_keywords warms the cache from the workflow's server, with its settings."""
    from pmg_core.prefetch import workflow_served_llm
    from pmg_tools.demo import load_api_workflow

    workflow = load_api_workflow("pmg_served_keywords")
    assert workflow_served_llm(load_api_workflow("pmg_sticker")) is None
    served_id = next(k for k, v in workflow.items() if v["class_type"] == "PMGServedLLM")
    source = workflow_served_llm(workflow, {f"{served_id}.base_url": "http://127.0.0.1:9", f"{served_id}.api": "openai"})
    assert (source.base_url, source.model, source.api, source.keep_alive) == ("http://127.0.0.1:9", "llama3.2", "openai", "")
    ollama = workflow_served_llm(workflow)
    assert (ollama.api, ollama.keep_alive, ollama.context_length) == ("ollama", "0", 8192)
