"""The studio batch past one machine: Ray actors, one per ComfyUI server, and one driver writing every line.

Against a local Ray (2 CPUs, no dashboard, a 100 MiB object store, shut down at the end) and
two real ComfyUI servers (a third one in the test that kills a server): users spread over
the servers, each recorded and executed exactly once; a server killed mid-run hands its
users to the other; a SIGKILLed driver resumes without running anyone twice.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter

import pytest
import requests

from fixtures_comfy import executions_by_user, start_comfy_server, stock_txt2img_graph
from pmg_core.comfy_client.distributed import queue_users_on_servers
from pmg_core.comfy_client.journal import PromptJournal
from pmg_core.comfy_client.outcome import Outcome, OutcomeKind
from pmg_core.comfy_client.ray_runtime import import_ray, node_for
from pmg_core.errors import InvalidSettingError
from test_distributed_journal import REPO, kill_after_first_line, lines, queue_command, write_users

pytestmark = pytest.mark.comfy_server


@pytest.fixture(scope="module")
def ray_cluster():
    """A small local Ray for this module; its GCS address lets a `pmg queue` subprocess join it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024,
             logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


OVERRIDES = {"2.text": "a portrait of {user_id}"}  # ComfyUI's cache cannot skip the sampler for the next user


# --- without servers -------------------------------------------------------------------------


def test_importing_the_library_and_the_queue_command_does_not_import_ray():
    code = ("import sys, pmg_core, pmg_core.comfy_client.batch, pmg_core.comfy_client.cli, "
            "pmg_core.comfy_client.distributed; print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"


def test_the_ray_driver_and_its_actors_import_no_private_names():
    """They share the one-server batch's public core (BatchRequest, ResultRecorder, Outcome), not its insides."""
    import ast

    for module in ("distributed", "server_worker"):
        tree = ast.parse((REPO / "pmg_core" / "comfy_client" / f"{module}.py").read_text(encoding="utf-8"))
        private = [alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                   for alias in node.names if alias.name.startswith("_")]
        assert private == [], (module, private)


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(InvalidSettingError, match=r"pip install ray"):
        import_ray()


def test_an_actor_runs_on_the_node_of_its_server():
    nodes = [{"NodeID": "n1", "NodeManagerAddress": "10.0.0.1", "NodeName": "10.0.0.1", "Alive": True},
             {"NodeID": "n2", "NodeManagerAddress": "10.0.0.2", "NodeName": "gpu2", "Alive": True}]
    assert node_for("http://10.0.0.2:8188", nodes, driver_node="n1") == "n2"
    assert node_for("http://127.0.0.1:8188", nodes, driver_node="n1") == "n1"  # only the driver's machine reaches it
    assert node_for("http://localhost:8188", nodes, driver_node="n1") == "n1"
    assert node_for("http://10.9.9.9:8188", nodes, driver_node="n1") is None  # not a node: anywhere


def test_prefetch_into_one_servers_cache_is_refused_with_several_servers(tmp_path, capsys):
    from pmg_core.comfy_client.cli import main

    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(stock_txt2img_graph()), encoding="utf-8")
    code = main(["queue", str(workflow), "--history", str(write_users(tmp_path / "u.jsonl", ["a"])), "--out",
                 str(tmp_path / "r.jsonl"), "--url", "http://127.0.0.1:9", "--url", "http://127.0.0.1:10",
                 "--prefetch", str(tmp_path / "cache")])
    assert code == 1 and "pmg keywords --cache-dir" in capsys.readouterr().err



class _Ref:
    """A finished call: the fake Ray below runs each call when it is made."""

    def __init__(self, value):
        self.value = value


class FakeRay:
    """What the driver uses of Ray (wait, get, exceptions), synchronous: mechanics without a cluster."""

    class exceptions:  # the name the driver reads
        RayActorError = type("RayActorError", (Exception,), {})

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, refs, timeout=None):
        return [r.value for r in refs] if isinstance(refs, list) else refs.value


class FakeServer:
    """An actor handle whose run_prompt finishes, or reports its server lost; it sees the journal at call time."""

    class _Method:
        def __init__(self, function):
            self.function = function

        def remote(self, *args):
            return _Ref(self.function(*args))

    def __init__(self, url, journal, lost=False):
        self.url, self.journal, self.lost, self.ran = url, journal, lost, []
        self.run_prompt = self._Method(self._run)
        self.cancel = self._Method(lambda prompt_ids: None)

    def _run(self, graph, prompt_id, client_id, timeout):
        assert prompt_id in {e.prompt_id for e in self.journal.entries() if e.server == self.url}, "journal first"
        if self.lost:
            return Outcome.lost(f"Cannot reach ComfyUI at {self.url}")
        self.ran.append(graph["user"])
        return Outcome(OutcomeKind.FINISHED, entry={"status": {"status_str": "success", "messages": []}, "outputs": {}})


def _driver(tmp_path, servers, users, **kwargs):
    from pmg_core.comfy_client.distributed import RayBatch

    return RayBatch(FakeRay(), {s.url: s for s in servers}, lambda user: {"user": user}, users,
                    tmp_path / "out.jsonl", PromptJournal(tmp_path / "j.jsonl"), **kwargs)


def test_a_lost_servers_users_finish_on_the_others_and_the_loss_is_reported(tmp_path):
    journal = PromptJournal(tmp_path / "j.jsonl")
    lost, good = FakeServer("http://a", journal, lost=True), FakeServer("http://b", journal)
    summary = _driver(tmp_path, [lost, good], ["u1", "u2", "u3"], concurrency=1).run()
    assert sorted(good.ran) == ["u1", "u2", "u3"] and summary.done == 3
    assert list(summary.lost_servers) == ["http://a"] and summary.servers == {"http://a": 0, "http://b": 3}
    assert sorted((r["user_id"], r["server"]) for r in lines(tmp_path / "out.jsonl")) == [
        ("u1", "http://b"), ("u2", "http://b"), ("u3", "http://b")]


def test_a_user_in_flight_on_two_lost_servers_gets_an_error_line(tmp_path):
    journal = PromptJournal(tmp_path / "j.jsonl")
    servers = [FakeServer("http://a", journal, lost=True), FakeServer("http://b", journal, lost=True),
               FakeServer("http://c", journal)]
    batch = _driver(tmp_path, servers, ["poison"], concurrency=1)
    batch.live.pop("http://c")  # held back, so the second try lands on b (which is lost too)
    batch.submit_more()
    batch.collect(next(iter(batch.in_flight)))  # lost on a
    batch.submit_more()
    batch.collect(next(iter(batch.in_flight)))  # lost on b
    (line,) = lines(tmp_path / "out.jsonl")
    assert line["status"] == "error" and "2 servers were lost" in line["error"]["message"]
    assert not batch.todo and set(batch.summary.lost_servers) == {"http://a", "http://b"}


def test_with_every_server_lost_the_driver_stops_and_says_how_to_resume(tmp_path):
    from pmg_core.errors import ComfyServerError

    journal = PromptJournal(tmp_path / "j.jsonl")
    with pytest.raises(ComfyServerError, match="run the same command again to resume"):
        _driver(tmp_path, [FakeServer("http://a", journal, lost=True)], ["u1", "u2"], concurrency=1).run()
    assert not (tmp_path / "out.jsonl").exists()  # nobody ran: the rerun queues them


# --- two servers ------------------------------------------------------------------------------


def test_users_spread_over_both_servers_and_each_runs_exactly_once(ray_cluster, comfy_server, comfy_server_b,
                                                                  tmp_path):
    users = [f"spread{i}" for i in range(8)]
    out = tmp_path / "results.jsonl"
    seen = []
    summary = queue_users_on_servers(
        [comfy_server.url, comfy_server_b.url], stock_txt2img_graph(seed=91, prefix="spread"), None, users, out,
        concurrency=2, substitutions=OVERRIDES, progress=lambda done, total: seen.append((done, total)))
    assert (summary.done, summary.failed, summary.lost_servers) == (8, 0, {})
    assert seen[-1] == (8, 8)
    records = lines(out)
    assert sorted(r["user_id"] for r in records) == sorted(users), "exactly one line per user"
    on = {url: executions_by_user(url, "spread") for url in (comfy_server.url, comfy_server_b.url)}
    assert all(on[url] for url in on), f"both servers ran some users: {on}"
    assert on[comfy_server.url] + on[comfy_server_b.url] == Counter({u: 1 for u in users}), "each user ran once"
    for record in records:
        assert record["status"] == "success" and on[record["server"]][record["user_id"]] == 1
        assert record["images"][0]["subfolder"] == f"pmg/{record['user_id']}"
    assert summary.servers == {url: sum(on[url].values()) for url in on}


def test_a_server_killed_mid_run_hands_its_users_to_the_other(ray_cluster, comfy_server, tmp_path_factory,
                                                             tmp_path, caplog):
    doomed = start_comfy_server(tmp_path_factory.mktemp("comfy_base_doomed"))
    users = [f"lost{i}" for i in range(8)]
    out = tmp_path / "results.jsonl"

    def kill_after_two(done: int, total: int) -> None:
        if done == 2 and doomed.server.is_running():
            doomed.server.process.kill()  # SIGKILL: no goodbye on the socket

    try:
        with caplog.at_level(logging.ERROR, logger="pmg_core.comfy_client.distributed"):
            summary = queue_users_on_servers(
                [comfy_server.url, doomed.url], stock_txt2img_graph(seed=92, prefix="lost", steps=6), None, users, out,
                concurrency=2, substitutions=OVERRIDES, progress=kill_after_two)
    finally:
        doomed.server.stop()
    assert list(summary.lost_servers) == [doomed.url] and "Cannot reach ComfyUI" in summary.lost_servers[doomed.url]
    assert any(doomed.url in r.getMessage() and "is lost" in r.getMessage() for r in caplog.records)
    records = lines(out)
    assert sorted(r["user_id"] for r in records) == sorted(users) and all(r["status"] == "success" for r in records)
    sent_to_doomed = {e.user_id for e in PromptJournal.beside(out).entries() if e.server == doomed.url}
    moved = {r["user_id"] for r in records if r["server"] == comfy_server.url} & sent_to_doomed
    assert moved, "users the lost server held finished on the other one"
    executions = executions_by_user(comfy_server.url, "lost")
    assert all(executions[r["user_id"]] == 1 for r in records if r["server"] == comfy_server.url)
    assert summary.servers[comfy_server.url] == sum(executions.values())


def test_a_killed_driver_resumes_without_running_anyone_twice(ray_cluster, comfy_server, comfy_server_b, tmp_path):
    users = [f"driver{i}" for i in range(10)]
    history = write_users(tmp_path / "users.jsonl", users)
    workflow = tmp_path / "workflow.json"
    workflow.write_text(json.dumps(stock_txt2img_graph(seed=93, prefix="driver", steps=8)), encoding="utf-8")
    out = tmp_path / "results.jsonl"
    urls = [comfy_server.url, comfy_server_b.url]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    # The killed run joins this module's Ray (--ray-address): a SIGKILLed driver that started its own
    # Ray would leave Ray's agent processes behind.
    done_at_kill = kill_after_first_line(queue_command(workflow, history, urls, out, "--ray-address", ray_cluster),
                                         out, env)
    assert 1 <= len(done_at_kill) < len(users) - 4, "the kill should land with users in flight and users waiting"
    journaled = {e.user_id for e in PromptJournal.beside(out).entries()}
    assert journaled - set(done_at_kill), "the killed run had prompts in flight"

    resumed = subprocess.run(queue_command(workflow, history, urls, out), cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)  # the default: a Ray started in the process
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["skipped"] == len(done_at_kill) and summary["failed"] == 0 and summary["lost_servers"] == {}
    records = lines(out)
    assert sorted(r["user_id"] for r in records) == sorted(users), "exactly one line per user"
    assert all(r["status"] == "success" for r in records)
    executions = executions_by_user(urls[0], "driver") + executions_by_user(urls[1], "driver")
    assert executions == Counter({u: 1 for u in users}), "no user ran twice"
    assert "of the killed run" in resumed.stderr, "the resumed run took over the killed run's prompts"


def test_an_interrupted_run_leaves_nothing_queued_on_any_server(ray_cluster, comfy_server, comfy_server_b, tmp_path):
    users = [f"stop{i}" for i in range(10)]
    out = tmp_path / "results.jsonl"
    urls = [comfy_server.url, comfy_server_b.url]

    def interrupt_after_one(done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt  # what Ctrl-C raises in the driver

    with pytest.raises(KeyboardInterrupt):
        queue_users_on_servers(urls, stock_txt2img_graph(seed=94, prefix="stop", steps=8), None, users, out,
                               concurrency=2, substitutions=OVERRIDES, progress=interrupt_after_one)
    ours = {e.prompt_id for e in PromptJournal.beside(out).entries()}
    assert len(ours) > 1, "prompts were in flight at the interrupt"
    for url in urls:
        pending = {item[1] for item in requests.get(f"{url}/queue", timeout=30).json()["queue_pending"]}
        assert not pending & ours, f"{url} still has prompts of the interrupted run queued"
    assert len(lines(out)) == 1

