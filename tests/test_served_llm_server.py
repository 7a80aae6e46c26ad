"""Through the real ComfyUI server: PMG Served LLM against a real ``transformers serve``.

The shipped ``pmg_served_keywords`` workflow runs with its keywords from the server and its
soft tokens from the local SmolLM2; a server that is down or does not serve the model is a
node error naming the URL and the fix, and ComfyUI goes on serving: the next prompt runs,
from the keyword cache, without a request.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pmg_core.errors import ComfyServerError
from pmg_tools.llm_server import TransformersServe
from pmg_tools.server import free_port

WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "pmg_served_keywords.json"
HISTORY, SERVED, EXTRACTOR, SAVE = "2", "13", "4", "12"


@pytest.fixture(scope="module")
def served_tiny(tiny_llm_folder):
    with TransformersServe(tiny_llm_folder) as server:
        yield server


def graph(url: str, model: str, user: str = "sticker_user_003", whole: bool = False, timeout: float = 120.0) -> dict:
    """The workflow on ``url``; another ``timeout`` makes ComfyUI run the served node (and the extractor) again."""
    workflow = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    workflow[SERVED]["inputs"].update(base_url=url, model=model, api="openai", timeout=timeout)
    workflow[HISTORY]["inputs"]["user_id"] = user
    workflow[EXTRACTOR]["inputs"].update(max_new_tokens=8, seed=777)  # keys no other test fills
    if not whole:  # the keyword half: history, served LLM, extractor (an output node)
        workflow = {key: workflow[key] for key in (HISTORY, SERVED, EXTRACTOR)}
        del workflow[SERVED]["inputs"]["soft_prompt_llm"]
    return workflow


def keywords_report(entry: dict) -> dict:
    return entry["outputs"][EXTRACTOR]["pmg_keywords"][0]


@pytest.mark.comfy_server
def test_the_served_keywords_workflow_runs_and_a_returning_user_sends_no_request(comfy_server, served_tiny):
    client = comfy_server.client
    before = served_tiny.requests_logged()
    cold = client.run(graph(served_tiny.url, served_tiny.model, whole=True), timeout=600)
    report = keywords_report(cold)
    assert report["preference_keywords"] and report["llm"]["served"] is True
    assert report["llm"]["requests_sent"] == served_tiny.requests_logged() - before > 0
    assert len(cold["outputs"][SAVE]["images"]) == 3  # one sticker per alpha, soft tokens from the local LLM

    warm = client.run(graph(served_tiny.url, served_tiny.model), timeout=300)
    assert keywords_report(warm)["preference_keywords"] == report["preference_keywords"]
    assert keywords_report(warm)["llm"]["requests_sent"] == 0 and keywords_report(warm)["llm_batches"] == 0


@pytest.mark.comfy_server
@pytest.mark.parametrize("case", ["down", "unknown-model"])
def test_a_bad_server_is_a_node_error_and_comfyui_keeps_serving(comfy_server, served_tiny, case):
    client = comfy_server.client
    down = f"http://127.0.0.1:{free_port()}"
    url, model, words = {
        "down": (down, served_tiny.model, f"Cannot reach the LLM server at {down}"),
        "unknown-model": (served_tiny.url, "no-such-model", "does not serve the model 'no-such-model'"),
    }[case]
    with pytest.raises(ComfyServerError) as info:
        client.wait(client.queue_prompt(graph(url, model, user="sticker_user_006")), timeout=300)
    (error,) = [e for e in info.value.node_errors if e["node_id"] == EXTRACTOR]
    assert words in error["message"], error

    # ComfyUI still serves: the next prompt runs (a user whose keywords are cached: no request at all).
    before = served_tiny.requests_logged()
    client.run(graph(served_tiny.url, served_tiny.model, user="sticker_user_002"), timeout=300)
    again = client.run(graph(served_tiny.url, served_tiny.model, user="sticker_user_002", timeout=121.0), timeout=300)
    assert keywords_report(again)["llm"]["requests_sent"] == 0
    assert served_tiny.requests_logged() >= before
