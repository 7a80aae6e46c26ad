"""Keyword prefetch for studios: LLM batches across users, resumable, into the cache the nodes read."""

from __future__ import annotations

import json

import pytest

from pmg_core.cli import main as pmg_main
from pmg_core.llm import open_llm
from pmg_core.loaders.stickers import build_sticker_histories
from pmg_core.prefetch import prefetch_for_workflow, prefetch_keywords, workflow_keyword_settings
from pmg_tools.demo import DemoSettings, apply_settings, load_api_workflow

ANSWER = ("space opera\n2. salvage crews\n3. lonely lighthouses\n4. night trains\n5. mystery\n6. red giants\n7. robots\n"
          "8. the sea\n9. birds\n10. colonies")


@pytest.fixture()
def scripted_handle(tiny_llm_folder):
    """A lazy handle on the tiny Llama whose generate() answers with a fixed list and records its batches."""
    llm = open_llm(tiny_llm_folder)
    llm.batches = []

    def generate(prompts, max_new_tokens=100, seed=0, do_sample=False, progress=None, batch_size=8, **_):
        llm.batches.extend(len(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size))
        return [ANSWER] * len(prompts)

    llm.generate = generate
    return llm


def test_prefetch_batches_across_users_and_resumes(scripted_handle, tmp_path):
    histories = build_sticker_histories(n_users=20, seed=3)
    ticks = []
    first = prefetch_keywords(scripted_handle, histories[:12], cache_dir=tmp_path, batch_size=8,
                              progress=lambda done, total: ticks.append((done, total)))
    assert (first.users, first.already_cached, first.extracted) == (12, 0, 12)
    assert max(scripted_handle.batches) == 8, "users share LLM batches"
    assert ticks[-1] == (12, 12)

    scripted_handle.batches.clear()
    preferences = []
    second = prefetch_keywords(scripted_handle, histories, cache_dir=tmp_path, batch_size=8, preferences=preferences)
    assert (second.already_cached, second.extracted) == (12, 8), "a resumed run skips the users already cached"
    assert [p.user_id for p in preferences] == [h.user_id for h in histories]
    assert all(p.preference_keywords[:2] == ("space opera", "salvage crews") for p in preferences)

    scripted_handle.batches.clear()
    third = prefetch_keywords(scripted_handle, histories, cache_dir=tmp_path, batch_size=8)
    assert (third.already_cached, third.llm_batches, scripted_handle.batches) == (20, 0, [])
    assert not scripted_handle.loaded, "an all-cached prefetch never reads the LLM's weights"


def test_workflow_settings_follow_the_nodes_and_the_overrides():
    graph = load_api_workflow("pmg_movie_poster")
    extractor_id = next(k for k, v in graph.items() if v["class_type"] == "PMGPreferenceExtractor")
    settings, loading = workflow_keyword_settings(graph, {f"{extractor_id}.seed": 9})
    assert settings == {"n_preference": 8, "n_target": 10, "seed": 9, "max_new_tokens": 100}
    assert loading["format"] == "auto" and loading["scene"] == "movie"


def _poster_graph(user: str, seed: int, n_preference: int, keyword_seed: int) -> dict:
    graph = apply_settings(load_api_workflow("pmg_movie_poster"), DemoSettings(seed=seed).resolved())
    for node in graph.values():
        if node["class_type"] == "PMGUserHistoryLoader":
            node["inputs"]["user_id"] = user
        elif node["class_type"] == "PMGPreferenceExtractor":
            node["inputs"].update(n_preference=n_preference, seed=keyword_seed, max_new_tokens=40)
        if "filename_prefix" in node["inputs"]:
            node["inputs"]["filename_prefix"] = f"pmg_test/prefetch_{seed}"
    return graph


def _keywords_record(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "success"
    return next(out["pmg_keywords"][0] for out in entry["outputs"].values() if "pmg_keywords" in out)


@pytest.mark.comfy_server
def test_pmg_keywords_warms_the_cache_the_server_reads(comfy_server, capsys, model_cache_dir):
    history = comfy_server.base_dir / "input" / "pmg" / "movielens.jsonl"
    server_cache = comfy_server.base_dir / "user" / "pmg_cache"
    code = pmg_main(["keywords", "--history", str(history), "--users", "5,6", "--batch-size", "2",
                     "--cache-dir", str(server_cache), "--model-cache-dir", str(model_cache_dir),
                     "--n-preference", "6", "--seed", "4243", "--max-new-tokens", "40"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["user_id"] for p in printed] == ["5", "6"]
    client = comfy_server.client
    record = _keywords_record(client.wait(client.queue_prompt(_poster_graph("6", 21, 6, 4243)), timeout=600))
    assert record["llm_batches"] == 0, "the prompt found the user warm"
    assert record["preference_keywords"] == printed[1]["preference_keywords"]
    assert record["llm"]["weight_loads"] == 0


@pytest.mark.comfy_server
def test_prefetch_for_a_workflow_warms_every_queued_user(comfy_server, model_cache_dir):
    history = comfy_server.base_dir / "input" / "pmg" / "movielens.jsonl"
    server_cache = comfy_server.base_dir / "user" / "pmg_cache"
    graph = _poster_graph("7", 31, 5, 4244)
    summary = prefetch_for_workflow(graph, history, ["7", "8"], server_cache,
                                    open_llm(comfy_server.base_dir / "models" / "LLM" / "SmolLM2-135M-Instruct.Q4_1.gguf",
                                             cache_dir=model_cache_dir), batch_size=4)
    assert (summary.extracted, summary.already_cached) == (2, 0)
    client = comfy_server.client
    for user, seed in (("7", 31), ("8", 32)):
        record = _keywords_record(client.wait(client.queue_prompt(_poster_graph(user, seed, 5, 4244)), timeout=600))
        assert record["llm_batches"] == 0 and record["user_id"] == user
