"""BatchQueue's transitions one by one, against a scripted client (no server)."""

from __future__ import annotations

import json

import pytest

from pmg_core.comfy_client.batch import BatchQueue
from pmg_core.errors import ComfyServerError

SUCCESS = {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": {}}


class FakeClient:
    """Hands out prompt ids p1, p2...; refuses users listed in ``refuse``; records cancellations."""

    def __init__(self, refuse=(), unreachable=False):
        self.refuse, self.unreachable = set(refuse), unreachable
        self.queued: list[str] = []
        self.cancelled: list[str] = []

    def queue_prompt(self, graph: dict) -> str:
        user = graph["user"]
        if self.unreachable:
            raise ComfyServerError("Connection refused")
        if user in self.refuse:
            raise ComfyServerError("prompt refused", status_code=400,
                                   node_errors=[{"node_id": "3", "node_type": "KSampler", "message": "bad steps"}])
        self.queued.append(user)
        return f"p{len(self.queued)}"

    def delete_queued(self, prompt_ids):
        self.cancelled += list(prompt_ids)

    def interrupt(self, prompt_id):
        pass


def _batch(tmp_path, users, client=None, **kwargs) -> BatchQueue:
    return BatchQueue(client or FakeClient(), lambda user: {"user": user}, users, tmp_path / "out.jsonl", **kwargs)


def _lines(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]


def test_submit_fills_the_slots_and_no_more(tmp_path):
    batch = _batch(tmp_path, ["a", "b", "c"], concurrency=2)
    batch.submit_more()
    assert batch.client.queued == ["a", "b"] and list(batch.todo) == ["c"]
    assert set(batch.running) == batch.watched == {"p1", "p2"}


def test_a_finished_prompt_is_one_line_and_frees_a_slot(tmp_path):
    seen = []
    batch = _batch(tmp_path, ["a", "b", "c"], concurrency=2, progress=lambda done, total: seen.append((done, total)))
    batch.submit_more()
    batch.handle({"type": "done", "data": {"prompt_id": "p1", "entry": SUCCESS}})
    assert [line["user_id"] for line in _lines(tmp_path)] == ["a"] and _lines(tmp_path)[0]["status"] == "success"
    assert batch.client.queued == ["a", "b", "c"] and seen == [(1, 3)]
    assert batch.summary.done == 1 and not batch.finished


def test_a_refused_prompt_is_that_users_error_and_the_batch_goes_on(tmp_path):
    batch = _batch(tmp_path, ["a", "b"], client=FakeClient(refuse={"a"}), concurrency=1)
    batch.submit_more()
    (line,) = _lines(tmp_path)
    assert line["user_id"] == "a" and line["status"] == "error" and line["error"]["node_id"] == "3"
    assert batch.client.queued == ["b"] and batch.summary.failed_users == ["a"]


def test_an_unreachable_server_records_the_user_and_raises(tmp_path):
    batch = _batch(tmp_path, ["a", "b"], client=FakeClient(unreachable=True))
    with pytest.raises(ComfyServerError, match="refused"):
        batch.submit_more()
    assert [line["user_id"] for line in _lines(tmp_path)] == ["a"] and list(batch.todo) == ["b"]


def test_a_prompt_past_the_timeout_is_cancelled_and_recorded(tmp_path):
    batch = _batch(tmp_path, ["a"], timeout=10.0)
    batch.submit_more()
    _, began = batch.running["p1"]
    batch.expire(now=began + 5)
    assert batch.running and not batch.client.cancelled
    batch.expire(now=began + 11)
    assert batch.finished and batch.watched == set() and batch.client.cancelled == ["p1"]
    assert "timed out after 10 s" in _lines(tmp_path)[0]["error"]["message"]


def test_a_lost_server_records_the_running_and_leaves_the_waiting(tmp_path):
    batch = _batch(tmp_path, ["a", "b", "c"], concurrency=2)
    batch.submit_more()
    error = batch.server_lost(ComfyServerError("no answer."))
    assert "1 user(s) were not submitted" in str(error)
    assert sorted(line["user_id"] for line in _lines(tmp_path)) == ["a", "b"] and list(batch.todo) == ["c"]
    batch.cancel_running()
    assert batch.client.cancelled == ["p1", "p2"]


def test_events_of_running_prompts_reach_the_caller(tmp_path):
    events = []
    batch = _batch(tmp_path, ["a"], on_event=lambda user, event: events.append((user, event["type"])))
    batch.submit_more()
    batch.handle({"type": "progress", "data": {"prompt_id": "p1", "value": 1, "max": 2}})
    batch.handle({"type": "progress", "data": {"prompt_id": "other", "value": 1, "max": 2}})
    assert events == [("a", "progress")]
