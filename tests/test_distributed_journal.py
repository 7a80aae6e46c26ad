"""Exactly once on resume: each prompt id is journaled before it is queued, and a resumed batch takes over
the prompts a killed one left on the server (recorded, waited for, or queued again only if the server has no trace).

Mechanics against scripted clients first, then a SIGKILLed `pmg queue` against the real server,
counting the server's executions per user.
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

from fixtures_comfy import executions_by_user, stock_txt2img_graph
from pmg_core.comfy_client.batch import BatchQueue
from pmg_core.comfy_client.journal import PromptJournal
from pmg_core.comfy_client.recovery import FINISHED, UNKNOWN, WAITING, Whereabouts, choose, locate, unsettled
from pmg_core.history import Item, UserHistory
from pmg_core.loaders import write_jsonl

REPO = Path(__file__).resolve().parents[1]
SUCCESS = {"status": {"status_str": "success", "completed": True, "messages": []}, "outputs": {}}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class ScriptedServer:
    """A server whose queue and history are dicts; it checks the journal names each prompt before it arrives."""

    url = "http://studio:8188"
    client_id = "run-2"

    def __init__(self, journal: PromptJournal | None = None, queued=(), history=None):
        self.journal, self.live, self.finished = journal, list(queued), dict(history or {})
        self.calls: list[str] = []
        self.sent: list[tuple[str, str]] = []  # (user, prompt id)
        self.cancelled: list[str] = []

    def queue_prompt(self, graph, extra_data=None, prompt_id=None):
        journaled = {e.prompt_id for e in self.journal.entries()} if self.journal else set()
        assert prompt_id in journaled, "the prompt id must be on disk before the prompt is sent"
        self.sent.append((graph["user"], prompt_id))
        return prompt_id

    def queue(self):
        self.calls.append("queue")
        return {"queue_running": [[0, p, {}, {}, []] for p in self.live[:1]],
                "queue_pending": [[1, p, {}, {}, []] for p in self.live[1:]]}

    def history(self, prompt_id):
        self.calls.append(f"history {prompt_id}")
        return self.finished.get(prompt_id)

    def delete_queued(self, prompt_ids):
        self.cancelled += list(prompt_ids)

    def interrupt(self, prompt_id=None):
        pass


# --- the journal and the recovery rules -----------------------------------------------------


def test_the_journal_sits_beside_the_results_and_survives_a_line_cut_by_a_kill(tmp_path):
    journal = PromptJournal.beside(tmp_path / "results.jsonl")
    assert journal.path == tmp_path / "results.journal.jsonl"
    first = journal.new_prompt("u1", "http://a:8188/", "c1")
    with open(journal.path, "a", encoding="utf-8") as handle:
        handle.write('{"user_id": "u2", "prompt_')  # killed mid-write
    second = journal.new_prompt("u3", "http://a:8188", "c1")
    assert journal.entries() == [first, second]
    assert first.server == "http://a:8188" and first.prompt_id != second.prompt_id


def test_only_prompts_of_users_still_to_do_without_a_result_line_are_unsettled(tmp_path):
    journal = PromptJournal(tmp_path / "j.jsonl")
    done, failed_then_retried, pending, _other = (journal.new_prompt(u, "http://a", "c") for u in ("d", "f", "p", "x"))
    left = unsettled(journal.entries(), {done.prompt_id, failed_then_retried.prompt_id}, todo=["f", "p"])
    assert left == [pending]


def test_locate_reads_the_queue_before_the_history():
    """A prompt only moves queue → history: reading /queue first means one absent from both looks is truly unknown."""
    server = ScriptedServer(queued=["run", "wait"], history={"done": SUCCESS})
    found = locate(server, ["done", "run", "wait", "gone"])
    assert server.calls[0] == "queue" and "history run" not in server.calls
    assert {p: w.state for p, w in found.items()} == {"done": FINISHED, "run": WAITING, "wait": WAITING,
                                                     "gone": UNKNOWN}
    assert found["done"].entry == SUCCESS


def test_choose_prefers_a_finished_prompt_and_cancels_a_users_second_live_one(tmp_path):
    journal = PromptJournal(tmp_path / "j.jsonl")
    a1, a2, b1, c1 = (journal.new_prompt(u, "http://a", "c") for u in ("a", "a", "b", "c"))
    found = {a1.prompt_id: Whereabouts(WAITING), a2.prompt_id: Whereabouts(FINISHED, SUCCESS),
             b1.prompt_id: Whereabouts(WAITING), c1.prompt_id: Whereabouts(UNKNOWN)}
    chosen, extra = choose([a1, a2, b1, c1], found)
    assert chosen == {"a": a2, "b": b1} and extra == [a1]


# --- the batch queue with a journal ------------------------------------------------------------


def test_each_prompt_id_is_journaled_before_it_is_sent(tmp_path):
    journal = PromptJournal(tmp_path / "j.jsonl")
    server = ScriptedServer(journal)
    batch = BatchQueue(server, lambda user: {"user": user}, ["a", "b"], tmp_path / "out.jsonl", journal=journal)
    batch.submit_more()
    entries = journal.entries()
    assert [(e.user_id, e.prompt_id) for e in entries] == server.sent
    assert {e.server for e in entries} == {server.url} and {e.client_id for e in entries} == {"run-2"}
    assert set(batch.running) == {e.prompt_id for e in entries}


def test_a_resumed_batch_takes_over_the_killed_runs_prompts(tmp_path):
    """finished → recorded from /history; queued or running → waited for; unknown → queued again."""
    journal = PromptJournal(tmp_path / "j.jsonl")
    finished, running, _never_sent = (journal.new_prompt(u, ScriptedServer.url, "run-1") for u in ("f", "r", "n"))
    server = ScriptedServer(journal, queued=[running.prompt_id], history={finished.prompt_id: SUCCESS})
    out = tmp_path / "out.jsonl"
    batch = BatchQueue(server, lambda user: {"user": user}, ["f", "r", "n", "w"], out, concurrency=2, journal=journal)
    batch.adopt(unsettled(journal.entries(), set(), ["f", "r", "n", "w"]))
    assert [(r["user_id"], r["prompt_id"], r["status"]) for r in lines(out)] == [("f", finished.prompt_id, "success")]
    assert batch.running == {running.prompt_id: ("r", batch.running[running.prompt_id][1])}
    assert batch.foreign == batch.watched == {running.prompt_id}
    assert list(batch.todo) == ["n", "w"]
    batch.submit_more()  # one slot is the adopted prompt's
    assert [user for user, _ in server.sent] == ["n"]
    batch.handle({"type": "done", "data": {"prompt_id": running.prompt_id, "entry": SUCCESS}})
    assert [r["user_id"] for r in lines(out)] == ["f", "r"] and not batch.foreign
    assert [user for user, _ in server.sent] == ["n", "w"]


# --- a SIGKILLed `pmg queue` against the real server ------------------------------------------------


def write_users(path: Path, user_ids: list[str]) -> Path:
    histories = [UserHistory(user_id=u, items=(Item(item_id="1", title=f"Movie of {u}"),), scene="movie")
                 for u in user_ids]
    return write_jsonl(path, histories)


def queue_command(workflow: Path, history: Path, urls: list[str], out: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "pmg_core.comfy_client.cli", "queue", str(workflow), "--history", str(history),
               "--out", str(out), "--concurrency", "2", "--set", "2.text=a portrait of {user_id}", *extra]
    for url in urls:
        command += ["--url", url]
    return command


def kill_after_first_line(command: list[str], out: Path, env: dict) -> list[str]:
    """Start `pmg queue`, SIGKILL it once one user is recorded; the users recorded by then."""
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not (out.exists() and lines(out)) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    _, stderr = first.communicate()
    assert first.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    return [r["user_id"] for r in lines(out)]


@pytest.mark.comfy_server
def test_a_killed_pmg_queue_resumes_and_the_server_runs_each_user_exactly_once(comfy_server, tmp_path):
    users = [f"once{i}" for i in range(6)]
    history = write_users(tmp_path / "users.jsonl", users)
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(stock_txt2img_graph(seed=81, prefix="exactly_once", steps=8)), encoding="utf-8")
    out = tmp_path / "results.jsonl"
    command = queue_command(workflow, history, [comfy_server.url], out)
    env = dict(os.environ, OMP_NUM_THREADS="1")

    done_at_kill = kill_after_first_line(command, out, env)
    assert 1 <= len(done_at_kill) < len(users) - 2, "the kill should land with users in flight and users waiting"
    journaled = PromptJournal.beside(out).entries()
    in_flight = {e.user_id for e in journaled} - set(done_at_kill)
    assert in_flight, "the killed run had prompts in flight"

    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    records = lines(out)
    assert sorted(r["user_id"] for r in records) == sorted(users), "exactly one line per user"
    assert all(r["status"] == "success" for r in records)
    executions = executions_by_user(comfy_server.url, "exactly_once")
    assert executions == {user: 1 for user in users}, "the server ran every user exactly once"
    assert "of the killed run" in second.stderr, "the resumed run took over the killed run's prompts"
