"""`pmg queue` / queue_users: one prompt per user, JSONL results, resumable, no user lost.

Mechanics on the stock SD1.5 graph with the tiny random checkpoint: each user's
substitution is the SaveImage prefix (and the uploaded history file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_comfy import stock_txt2img_graph
from pmg_core.comfy_client.batch import parse_overrides, queue_users, read_results, user_graph
from pmg_core.errors import InvalidSettingError
from pmg_core.history import Item, UserHistory
from pmg_core.loaders import write_jsonl

REPO = Path(__file__).resolve().parents[1]


def write_users(path: Path, user_ids: list[str]) -> Path:
    histories = [UserHistory(user_id=u, items=(Item(item_id="1", title=f"Movie of {u}"),), scene="movie")
                 for u in user_ids]
    return write_jsonl(path, histories)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- without a server ---------------------------------------------------------------------


def test_user_graph_substitutes_loader_prefix_and_overrides_on_a_copy():
    graph = stock_txt2img_graph(prefix="studio/run")
    graph["9"] = {"class_type": "PMGUserHistoryLoader", "inputs": {"history_file": "x.jsonl", "user_id": ""}}
    out = user_graph(graph, "u/7", "pmg/users.jsonl", {"5.seed": 11, "2.text": "portrait of {user_id}"})
    assert out["9"]["inputs"] == {"history_file": "pmg/users.jsonl", "user_id": "u/7"}
    assert out["7"]["inputs"]["filename_prefix"] == "pmg/u_7/run"
    assert out["5"]["inputs"]["seed"] == 11 and out["2"]["inputs"]["text"] == "portrait of u/7"
    assert graph["7"]["inputs"]["filename_prefix"] == "studio/run" and graph["9"]["inputs"]["user_id"] == ""


def test_parse_overrides_reads_json_values_and_rejects_malformed():
    assert parse_overrides(["5.seed=3", "2.text=a cat", "5.cfg=7.5"]) == {"5.seed": 3, "2.text": "a cat", "5.cfg": 7.5}
    with pytest.raises(InvalidSettingError, match="NODE_ID.INPUT=VALUE"):
        parse_overrides(["seed=3"])


def test_override_of_an_unknown_node_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(InvalidSettingError, match="node '99'"):
        queue_users(None, stock_txt2img_graph(), None, ["u1"], tmp_path / "r.jsonl", substitutions={"99.seed": 1})


def test_read_results_tolerates_a_line_cut_by_a_kill(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"user_id": "a", "status": "success"}\n{"user_id": "b", "sta', encoding="utf-8")
    assert list(read_results(out)) == ["a"]


# --- against the server ---------------------------------------------------------------------


@pytest.mark.comfy_server
def test_users_running_when_the_server_is_lost_get_failure_lines(tmp_path):
    """Mechanics (a fake server that dies after accepting two prompts): the users whose prompts
    were running get an error line naming the lost server, the rest are left for the rerun."""
    from pmg_core.comfy_client.client import ComfyClient, EventSocket
    from pmg_core.errors import ComfyServerError

    class LostServer(ComfyClient):
        def __init__(self):
            super().__init__("http://127.0.0.1:9")
            self.queued = []

        def connect(self):
            return EventSocket(None)

        def queue_prompt(self, api_graph, extra_data=None):
            self.queued.append(f"p{len(self.queued)}")
            return self.queued[-1]

        def history(self, prompt_id):
            raise ComfyServerError("Cannot reach ComfyUI at http://127.0.0.1:9 (GET /history): refused.")

        def delete_queued(self, prompt_ids):
            raise ComfyServerError("Cannot reach ComfyUI.")

        def interrupt(self, prompt_id=None):
            raise ComfyServerError("Cannot reach ComfyUI.")

    out = tmp_path / "results.jsonl"
    client = LostServer()
    with pytest.raises(ComfyServerError, match="run the same command again"):
        queue_users(client, stock_txt2img_graph(), None, ["a", "b", "c"], out, concurrency=2)
    assert client.queued == ["p0", "p1"]
    records = read_results(out)
    assert sorted(records) == ["a", "b"], "the running users must be recorded, the unsubmitted one left"
    assert all(r["status"] == "error" and "Cannot reach ComfyUI" in r["error"]["message"] for r in records.values())
    assert [r["prompt_id"] for r in (records["a"], records["b"])] == ["p0", "p1"]


def test_queue_users_writes_one_line_per_user_and_skips_finished_ones(comfy_server, tmp_path):
    history = write_users(tmp_path / "users.jsonl", ["u1", "u2", "u3"])
    out = tmp_path / "results.jsonl"
    graph = stock_txt2img_graph(seed=21, prefix="batch")
    seen = []
    summary = queue_users(comfy_server.client, graph, history, None, out, concurrency=2,
                          progress=lambda done, total: seen.append((done, total)))
    assert summary.to_dict() == {"done": 3, "failed": 0, "skipped": 0, "failed_users": []}
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)
    records = {r["user_id"]: r for r in lines(out)}
    assert set(records) == {"u1", "u2", "u3"}
    for user, record in records.items():
        assert record["status"] == "success" and record["error"] is None and record["elapsed_s"] > 0
        assert record["images"][0]["subfolder"] == f"pmg/{user}"
        assert record["keywords"] is None and record["scores"] is None  # the stock graph has no PMG node
        assert comfy_server.client.view(**record["images"][0])[:4] == b"\x89PNG"
    uploaded = [p.read_bytes() for p in (comfy_server.base_dir / "input").glob("pmg-*/users.jsonl")]
    assert history.read_bytes() in uploaded

    again = queue_users(comfy_server.client, graph, history, ["u1", "u2", "u3"], out)
    assert again.to_dict() == {"done": 0, "failed": 0, "skipped": 3, "failed_users": []}
    assert len(lines(out)) == 3


@pytest.mark.comfy_server
def test_a_user_served_from_cache_still_reports_its_events(comfy_server, tmp_path):
    """The batch opens its socket before queueing: a repeat of a user (every node cached, done within
    milliseconds) still reaches on_event with its execution_start and execution_cached."""
    graph = stock_txt2img_graph(seed=22, prefix="cached")
    queue_users(comfy_server.client, graph, None, ["c1"], tmp_path / "first.jsonl")
    events = []
    summary = queue_users(comfy_server.client, graph, None, ["c1"], tmp_path / "again.jsonl",
                          on_event=lambda user, event: events.append((user, event["type"])))
    assert summary.done == 1
    assert ("c1", "execution_start") in events and ("c1", "execution_cached") in events, events


@pytest.mark.comfy_server
def test_refused_and_failing_users_get_failure_lines_and_are_retried(comfy_server, tmp_path):
    out = tmp_path / "results.jsonl"
    bad = stock_txt2img_graph(seed=31, prefix="retry")
    bad["5"]["inputs"]["steps"] = 10**6  # refused by validation
    summary = queue_users(comfy_server.client, bad, None, ["r1", "r2"], out)
    assert summary.failed == 2 and summary.failed_users == ["r1", "r2"]
    first = lines(out)
    assert [r["status"] for r in first] == ["error", "error"]
    assert first[0]["error"]["node_id"] == "5" and first[0]["error"]["node_type"] == "KSampler"
    assert first[0]["prompt_id"] is None

    broken = comfy_server.base_dir / "models" / "checkpoints" / "broken-batch.safetensors"
    broken.write_bytes(b"not a checkpoint")
    failing = stock_txt2img_graph(seed=32, prefix="retry")
    failing["1"]["inputs"]["ckpt_name"] = broken.name  # passes validation, fails when run
    summary = queue_users(comfy_server.client, failing, None, ["r1"], out)
    assert summary.failed_users == ["r1"]
    record = lines(out)[-1]
    assert record["prompt_id"] and record["error"]["node_type"] == "CheckpointLoaderSimple"

    summary = queue_users(comfy_server.client, stock_txt2img_graph(seed=33, prefix="retry"), None, ["r1", "r2"], out)
    assert summary.to_dict() == {"done": 2, "failed": 0, "skipped": 0, "failed_users": []}
    assert {u: r["status"] for u, r in read_results(out).items()} == {"r1": "success", "r2": "success"}


@pytest.mark.comfy_server
def test_pmg_queue_resumes_after_a_kill_without_doing_a_user_twice(comfy_server, tmp_path):
    users = ["k1", "k2", "k3", "k4"]
    history = write_users(tmp_path / "users.jsonl", users)
    workflow = tmp_path / "workflow.json"
    graph = stock_txt2img_graph(seed=41, prefix="resume")
    # Each user's history text becomes the prompt, so ComfyUI's cache cannot skip the sampler for later users.
    graph["9"] = {"class_type": "PMGUserHistoryLoader", "inputs": {
        "history_file": "placeholder.jsonl", "format": "auto", "user_id": "", "max_items": 0, "scene": "auto"}}
    graph["2"]["inputs"]["text"] = ["9", 1]
    workflow.write_text(json.dumps(graph), encoding="utf-8")
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "pmg_core.comfy_client.cli", "queue", str(workflow), "--history", str(history),
               "--users", "all", "--url", comfy_server.url, "--out", str(out), "--concurrency", "1",
               "--set", "5.steps=12"]  # slow enough to kill between users
    env = dict(os.environ, OMP_NUM_THREADS="1")

    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.exists() and lines(out)) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    done_at_kill = [r["user_id"] for r in lines(out)]
    assert 1 <= len(done_at_kill) < len(users), "the kill should land after the first user and before the last"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(done_at_kill) and summary["failed"] == 0
    assert summary["done"] == len(users) - len(done_at_kill)
    records = lines(out)
    assert sorted(r["user_id"] for r in records) == sorted(users), "each user exactly once"
    assert all(r["status"] == "success" for r in records)
    assert "pmg queue" in second.stderr  # the tqdm bar went to stderr


@pytest.mark.comfy_server
def test_pmg_queue_exits_non_zero_and_lists_failed_users(comfy_server, tmp_path):
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(stock_txt2img_graph(seed=51, prefix="cli_fail")), encoding="utf-8")
    history = write_users(tmp_path / "users.jsonl", ["f1"])
    done = subprocess.run(
        [sys.executable, "-m", "pmg_core", "queue", str(workflow), "--history", str(history),  # via the main CLI
         "--users", "f1", "--url", comfy_server.url, "--out", str(tmp_path / "r.jsonl"), "--set", "5.cfg=1000"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"done": 0, "failed": 1, "skipped": 0, "failed_users": ["f1"]}


@pytest.mark.comfy_server
def test_history_images_are_uploaded_beside_the_history_file(comfy_server, tmp_path):
    from pmg_core.loaders import export_sticker_dataset

    folder = export_sticker_dataset(tmp_path / "my_stickers", n_users=2, seed=3)
    history = folder / "history.jsonl"
    summary = queue_users(comfy_server.client, stock_txt2img_graph(seed=61, prefix="upload"), history, None,
                          tmp_path / "r.jsonl")
    assert summary.done == 2
    (uploaded,) = [p for p in (comfy_server.base_dir / "input").glob("pmg-*/history.jsonl")
                   if p.read_bytes() == history.read_bytes()]
    local_images = sorted(p.name for p in (folder / "images").iterdir())
    assert local_images and sorted(p.name for p in (uploaded.parent / "images").iterdir()) == local_images


@pytest.mark.comfy_server
def test_same_named_history_files_of_two_batches_do_not_overwrite_each_other(comfy_server, tmp_path):
    from pmg_core.comfy_client.batch import upload_history

    first = write_users(tmp_path / "a" / "users.jsonl", ["a1"])
    second = write_users(tmp_path / "b" / "users.jsonl", ["b1"])
    name_first = upload_history(comfy_server.client, first)
    name_second = upload_history(comfy_server.client, second)
    assert name_first != name_second and name_first.endswith("/users.jsonl")
    server_input = comfy_server.base_dir / "input"
    assert (server_input / name_first).read_bytes() == first.read_bytes()
    assert (server_input / name_second).read_bytes() == second.read_bytes()
    assert upload_history(comfy_server.client, first) == name_first  # same content, same place


@pytest.mark.comfy_server
def test_a_history_file_already_on_the_server_lists_its_users(comfy_server, tmp_path):
    from pmg_core.comfy_client.batch import server_file_users

    users = server_file_users(comfy_server.client, "pmg_stickers/history.jsonl")
    assert users[0] == "sticker_user_000" and len(users) == 8
    summary = queue_users(comfy_server.client, stock_txt2img_graph(seed=62, prefix="server_history"), None,
                          users[:1], tmp_path / "r.jsonl", server_history="pmg_stickers/history.jsonl")
    assert summary.done == 1


@pytest.mark.comfy_server
def test_pmg_nodes_get_each_user_and_report_scores_and_the_selected_image(comfy_server, tmp_path):
    """Mechanics of per-user substitution into the PMG nodes (no LLM; tiny random SD1.5 images)."""
    from fixtures_comfy import pmg_no_llm_graph

    out = tmp_path / "results.jsonl"
    sticker = next((comfy_server.base_dir / "input" / "pmg_stickers" / "images").glob("*.png"))
    target = comfy_server.client.upload_file(sticker)["name"]  # LoadImage lists the input folder's top level
    users = ["sticker_user_000", "sticker_user_001", "nobody"]
    summary = queue_users(comfy_server.client, pmg_no_llm_graph(target, seed=71), None, users, out,
                          server_history="pmg_stickers/history.jsonl")
    records = {r["user_id"]: r for r in lines(out)}
    assert summary.failed_users == ["nobody"], [r["error"] for r in records.values()]
    assert records["nobody"]["error"]["node_type"] == "PMGUserHistoryLoader"
    assert "nobody" in records["nobody"]["error"]["message"]
    for user in users[:2]:
        record = records[user]
        assert record["keywords"] is None  # no PreferenceExtractor in this graph
        assert record["selected_image"] == record["scores"]["selected_image"]
        assert record["selected_image"]["subfolder"] == f"pmg/{user}"
        assert comfy_server.client.view(**record["selected_image"])[:4] == b"\x89PNG"
    assert records["sticker_user_000"]["scores"] != records["sticker_user_001"]["scores"]


@pytest.mark.real_model
@pytest.mark.comfy_server
def test_pmg_workflow_batch_records_keywords_scores_and_the_selected_image(comfy_server, tmp_path):
    """Real behaviour of the whole pipeline per user: SmolLM2 keywords reach the results line."""
    from fixtures_comfy import pmg_txt2img_graph

    out = tmp_path / "results.jsonl"
    sticker = next((comfy_server.base_dir / "input" / "pmg_stickers" / "images").glob("*.png"))
    target = comfy_server.client.upload_file(sticker)["name"]
    user = "sticker_user_000"
    summary = queue_users(comfy_server.client, pmg_txt2img_graph(seed=72, target_image=target), None, [user], out,
                          server_history="pmg_stickers/history.jsonl")
    record = lines(out)[0]
    assert summary.failed == 0, record["error"]
    assert record["keywords"]["user_id"] == user and record["keywords"]["preference_keywords"]
    assert record["scores"] is not None and record["selected_image"] == record["scores"]["selected_image"]
    assert record["selected_image"]["subfolder"] == f"pmg/{user}"


def test_a_server_lost_at_submission_records_that_user_and_the_running_ones(tmp_path):
    """Mechanics (a fake server that accepts one prompt, then stops answering): the refused
    user and the running one get error lines; the message says how many were not submitted."""
    from pmg_core.comfy_client.client import ComfyClient, EventSocket
    from pmg_core.errors import ComfyServerError

    class DyingServer(ComfyClient):
        def __init__(self):
            super().__init__("http://127.0.0.1:9")
            self.queued = 0

        def connect(self):
            return EventSocket(None)

        def queue_prompt(self, api_graph, extra_data=None):
            self.queued += 1
            if self.queued > 1:
                raise ComfyServerError("Cannot reach ComfyUI at http://127.0.0.1:9 (POST /prompt): refused.")
            return "p0"

        def delete_queued(self, prompt_ids):
            raise ComfyServerError("Cannot reach ComfyUI.")

    out = tmp_path / "results.jsonl"
    with pytest.raises(ComfyServerError, match=r"1 user\(s\) were not submitted; run the same command again") as info:
        queue_users(DyingServer(), stock_txt2img_graph(), None, ["a", "b", "c"], out, concurrency=2)
    assert str(info.value).count("run the same command again") == 1
    records = read_results(out)
    assert sorted(records) == ["a", "b"] and all(r["status"] == "error" for r in records.values())
