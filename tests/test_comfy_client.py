"""ComfyClient against the real ComfyUI of the session fixture: refusals, failures, files, fallbacks.

Mechanics only (tiny random checkpoint): what comes back, and that errors name the node.
"""

from __future__ import annotations

import pytest
import websocket

from fixtures_comfy import stock_txt2img_graph
from pmg_core.comfy_client import client as client_module
from pmg_core.comfy_client.client import ComfyClient, execution_error, parse_node_errors
from pmg_core.errors import ComfyServerError

pytestmark = pytest.mark.comfy_server


def test_out_of_range_value_is_a_node_error_and_the_server_keeps_serving(comfy_server):
    client = comfy_server.client
    graph = stock_txt2img_graph(seed=3, prefix="pmg_test/bad")
    graph["5"]["inputs"]["steps"] = 10**6
    with pytest.raises(ComfyServerError) as caught:
        client.queue_prompt(graph)
    error = caught.value
    assert error.status_code == 400 and error.refused
    assert error.node_errors[0]["node_id"] == "5" and error.node_errors[0]["node_type"] == "KSampler"
    assert "node 5 (KSampler)" in str(error) and "steps" in str(error)
    assert client.system_stats()["system"]["comfyui_version"]  # still serving


def test_unknown_class_names_the_node(comfy_server):
    graph = stock_txt2img_graph(seed=4, prefix="pmg_test/unknown")
    graph["8"] = {"class_type": "NoSuchNodeAnywhere", "inputs": {}}
    with pytest.raises(ComfyServerError, match="NoSuchNodeAnywhere") as caught:
        comfy_server.client.queue_prompt(graph)
    assert caught.value.node_errors == [
        {"node_id": "8", "node_type": "NoSuchNodeAnywhere", "message": caught.value.node_errors[0]["message"]}
    ]


def test_missing_required_input_is_reported(comfy_server):
    graph = stock_txt2img_graph(seed=5, prefix="pmg_test/missing")
    del graph["5"]["inputs"]["model"]
    with pytest.raises(ComfyServerError, match="node 5 \\(KSampler\\)"):
        comfy_server.client.queue_prompt(graph)


def test_execution_error_names_the_failing_node(comfy_server):
    """A checkpoint file that passes validation but cannot be read fails at run time, in node 1."""
    broken = comfy_server.base_dir / "models" / "checkpoints" / "broken.safetensors"
    broken.write_bytes(b"this is not a safetensors file")
    graph = stock_txt2img_graph(seed=6, prefix="pmg_test/broken")
    graph["1"]["inputs"]["ckpt_name"] = "broken.safetensors"
    client = comfy_server.client
    prompt_id = client.queue_prompt(graph)
    with pytest.raises(ComfyServerError, match="node 1 \\(CheckpointLoaderSimple\\)") as caught:
        client.wait(prompt_id, timeout=60)
    assert caught.value.node_errors[0]["node_id"] == "1"
    assert caught.value.status_code is None and not caught.value.refused  # it ran, and failed: nothing was refused
    entry = client.wait(prompt_id, timeout=10, raise_on_error=False)  # already finished: from /history
    assert entry["status"]["status_str"] == "error"
    assert execution_error(entry)["node_type"] == "CheckpointLoaderSimple"


def test_a_cached_prompt_still_reports_its_early_events(comfy_server):
    """The socket opens before POST /prompt: a repeat served entirely from ComfyUI's cache finishes within
    milliseconds, yet ``run`` still delivers its ``execution_start`` and ``execution_cached`` events."""
    client = ComfyClient(comfy_server.url)
    graph = stock_txt2img_graph(seed=9, prefix="pmg_test/cached")
    client.run(graph, timeout=60)
    events = []
    entry = client.run(graph, timeout=60, on_progress=events.append)
    assert entry["status"]["status_str"] == "success"
    types = [event["type"] for event in events]
    assert types[:2] == ["execution_start", "execution_cached"], types
    (cached,) = [event["data"]["nodes"] for event in events if event["type"] == "execution_cached"]
    assert sorted(cached) == sorted(graph)  # every node served from cache
    assert types[-1] == "executing" and events[-1]["data"]["node"] is None


def test_wait_on_a_socket_opened_before_queueing_gets_every_event(comfy_server):
    """``connect()`` then ``queue_prompt`` then ``wait(events=...)``: the same guarantee without ``run``."""
    client = ComfyClient(comfy_server.url)
    graph = stock_txt2img_graph(seed=9, prefix="pmg_test/cached")
    client.run(graph, timeout=60)
    events = []
    with client.connect() as socket_:
        client.wait(client.queue_prompt(graph), timeout=60, on_progress=events.append, events=socket_)
    assert "execution_cached" in [event["type"] for event in events]
    assert socket_.socket is None  # closed by the with block


def test_upload_accepts_any_file_and_view_serves_it_back(comfy_server, tmp_path):
    history = tmp_path / "users.jsonl"
    history.write_text('{"user_id": "u1", "items": []}\n', encoding="utf-8")
    client = comfy_server.client
    uploaded = client.upload_file(history, subfolder="pmg_test_upload")
    assert uploaded == {"name": "users.jsonl", "subfolder": "pmg_test_upload", "type": "input"}
    assert (comfy_server.base_dir / "input" / "pmg_test_upload" / "users.jsonl").read_text() == history.read_text()
    assert client.view("users.jsonl", "pmg_test_upload", "input") == history.read_bytes()
    with pytest.raises(ComfyServerError, match="no output file"):
        client.view("does-not-exist.png")


def test_wait_polls_history_when_the_websocket_cannot_open(comfy_server, monkeypatch):
    def refuse(*args, **kwargs):
        raise websocket.WebSocketException("refused for the test")

    monkeypatch.setattr(client_module.websocket, "create_connection", refuse)
    client = ComfyClient(comfy_server.url)
    entry = client.run(stock_txt2img_graph(seed=7, prefix="pmg_test/poll"), timeout=60)
    assert entry["status"]["status_str"] == "success"


def test_wait_survives_a_socket_that_drops_mid_prompt(comfy_server, monkeypatch):
    real_connect = websocket.create_connection

    class DropsAfterOneMessage:
        def __init__(self, inner):
            self.inner, self.received = inner, 0

        def settimeout(self, value):
            self.inner.settimeout(value)

        def recv(self):
            if self.received >= 3:  # the greeting, then two events of the prompt
                raise websocket.WebSocketConnectionClosedException("dropped for the test")
            self.received += 1
            return self.inner.recv()

        def close(self):
            self.inner.close()

    monkeypatch.setattr(client_module.websocket, "create_connection",
                        lambda *a, **k: DropsAfterOneMessage(real_connect(*a, **k)))
    client = ComfyClient(comfy_server.url)
    entry = client.run(stock_txt2img_graph(seed=8, prefix="pmg_test/drop"), timeout=60)
    assert entry["status"]["status_str"] == "success"


def test_unreachable_server_gives_a_clear_error():
    from pmg_tools.server import free_port

    client = ComfyClient(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ComfyServerError, match="Cannot reach ComfyUI .*refused.*pmg serve") as caught:
        client.system_stats()
    assert caught.value.status_code is None and not caught.value.refused and caught.value.node_errors == []


def test_interrupt_queue_and_free_are_accepted(comfy_server):
    client = comfy_server.client
    client.interrupt()
    client.free(unload_models=False, free_memory=False)
    assert set(client.queue()) == {"queue_running", "queue_pending"}


def test_parse_node_errors_flattens_comfyui_answer():
    answer = {"5": {"class_type": "KSampler", "dependent_outputs": ["7"],
                    "errors": [{"type": "value_bigger_than_max", "message": "Value bigger than max",
                                "details": "steps: 1000000 > 10000"}]}}
    assert parse_node_errors(answer) == [
        {"node_id": "5", "node_type": "KSampler", "message": "Value bigger than max: steps: 1000000 > 10000"}
    ]
