"""Through the real server: a returning user's prompt loads no LLM weights and moves nothing.

The MovieLens poster workflow runs twice for one user. The first run (cache cold) reads the
LLM's weights once and loads them through ComfyUI's model management; the second run gets
a fresh LLM handle (the loader's ``device`` input changes from ``cpu`` to ``auto``, the same
device on this CPU server, so ComfyUI re-executes every PMG node) and is served from the
keyword and soft-prompt caches: both PMG LLM nodes report no weight read and no device load.
"""

from __future__ import annotations

import pytest

from pmg_tools.demo import DemoSettings, apply_settings, load_api_workflow


def _graph(user: str, device: str, seed: int) -> dict:
    graph = apply_settings(load_api_workflow("pmg_movie_poster"), DemoSettings(seed=seed).resolved())
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "PMGUserHistoryLoader":
            inputs["user_id"] = user
        elif node["class_type"] == "PMGLLMLoader":
            inputs["device"] = device
        elif node["class_type"] == "PMGPreferenceExtractor":
            inputs.update(n_preference=7, seed=4242, max_new_tokens=40)  # keys no other test fills
        elif node["class_type"] == "PMGSoftPromptEncoder":
            inputs["adapter"] = "random (untrained, research)"  # an adapter that runs the LLM (the shared file has none)
        if "filename_prefix" in inputs:
            inputs["filename_prefix"] = f"pmg_test/lazy_{seed}"
    return graph


def _llm_reports(entry: dict) -> tuple[dict, dict]:
    keywords = soft = None
    for output in entry["outputs"].values():
        keywords = output["pmg_keywords"][0] if "pmg_keywords" in output else keywords
        soft = output["pmg_soft_prompt"][0] if "pmg_soft_prompt" in output else soft
    assert keywords is not None and soft is not None, f"no PMG LLM reports in {sorted(entry['outputs'])}"
    return keywords, soft


@pytest.mark.comfy_server
def test_a_returning_user_loads_no_llm_weights_and_moves_nothing(comfy_server):
    client = comfy_server.client
    cold = client.wait(client.queue_prompt(_graph("4", "cpu", 11)), timeout=600)
    assert cold["status"]["status_str"] == "success"
    keywords, soft = _llm_reports(cold)
    assert keywords["llm_batches"] >= 1 and not soft["cached"]
    assert soft["llm"]["weight_loads"] == 1, "one handle reads its weights once for both nodes"
    assert soft["llm"]["device_loads"] >= 1 and soft["llm"]["registered"] is False  # keep_model_loaded=False

    warm = client.wait(client.queue_prompt(_graph("4", "auto", 12)), timeout=600)
    assert warm["status"]["status_str"] == "success"
    keywords, soft = _llm_reports(warm)
    assert keywords["llm_batches"] == 0 and soft["cached"]
    for report in (keywords["llm"], soft["llm"]):
        assert report == {**report, "weights_loaded": False, "weight_loads": 0, "device_loads": 0,
                          "registered": False}
    assert keywords["preference_keywords"] == _llm_reports(cold)[0]["preference_keywords"]
