"""The studio batch on several ComfyUI servers, through Ray: one actor per server, one driver.

The driver (:class:`RayBatch`) keeps ``concurrency`` prompts in flight on every live
server (Ray's ``ray.wait`` idiom for bounding pending work: whichever server finishes a
prompt gets the next user), and is the only writer of the results file and the journal:

* every user gets exactly one result line, written here when its outcome comes back;
* each prompt id is journaled (fsynced) before its actor queues it, so a killed driver
  resumes without running anyone twice: the journaled prompts are located on their
  servers and recorded, waited for, or queued again only when the server has no trace;
* a server that stops answering is marked lost (in the summary and the log), and the
  users it held go back to the waiting line for the others. A user that was in flight on
  ``max_server_losses`` servers that were lost gets an error line instead: it may be what
  brings them down.

Ray itself is imported lazily (:mod:`.ray_runtime`): ``import pmg_core`` never needs it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ComfyServerError, InvalidSettingError
from .batch import BatchRequest, entries_on, relative_images
from .journal import JournalEntry, PromptJournal
from .outcome import Outcome, OutcomeKind
from .ray_runtime import ray_session, start_actors
from .recovery import FINISHED, WAITING, choose, unsettled
from .results import BatchSummary, ResultRecorder, error_line, recorded_prompt_ids, users_to_run
from .server_worker import ComfyServerWorker

log = logging.getLogger(__name__)


@dataclass
class DistributedSummary(BatchSummary):
    """A :class:`BatchSummary` plus users finished per server and the servers lost (url → why)."""

    servers: dict[str, int] = field(default_factory=dict)
    lost_servers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "servers": dict(self.servers), "lost_servers": dict(self.lost_servers)}


@dataclass(frozen=True)
class Job:
    """A user's prompt in flight on one server."""

    user: str
    prompt_id: str
    server: str
    began: float


class RayBatch:
    """The driver of one batch over ``actors`` (server url → :class:`ComfyServerWorker` actor handle).

    ``ray`` is the Ray module (injected: the driver only calls ``wait``, ``get`` and the
    actors' ``.remote``). :meth:`adopt` takes over a killed run's prompts, :meth:`run` drives the rest.
    """

    def __init__(self, ray: Any, actors: dict[str, Any], make_graph: Callable[[str], dict], users: list[str],
                 out_jsonl: Path, journal: PromptJournal, concurrency: int = 2, timeout: float = 3600.0,
                 progress: Callable[[int, int], None] | None = None, max_server_losses: int = 2,
                 lost_servers: dict[str, str] | None = None) -> None:
        self.ray, self.live, self.make_graph, self.journal = ray, dict(actors), make_graph, journal
        self.concurrency, self.timeout = concurrency, timeout
        self.max_server_losses = max_server_losses
        self.todo: deque[str] = deque(users)
        self.in_flight: dict[Any, Job] = {}  # Ray object ref -> job
        self.losses: Counter[str] = Counter()  # user -> lost servers it was in flight on
        self.summary = DistributedSummary(servers={url: 0 for url in [*actors, *(lost_servers or {})]},
                                          lost_servers=dict(lost_servers or {}))
        self.recorder = ResultRecorder(out_jsonl, self.summary, len(users), progress)

    # --- servers --------------------------------------------------------------------------

    def server_lost(self, url: str, message: str) -> None:
        """Stop giving ``url`` users; the failure goes to the summary and the log."""
        if url in self.live:
            del self.live[url]
            self.summary.lost_servers[url] = message
            log.error("ComfyUI at %s is lost (%s); its users go to the %d other server(s). Check that server's log.",
                      url, message, len(self.live))

    def _require_a_server(self) -> None:
        if not self.live:
            require_a_server(self.summary.lost_servers, len(self.todo) + len(self.in_flight))

    # --- results ----------------------------------------------------------------------------

    def record(self, job: Job, entry: dict | None, error: dict | None, queued: bool = True) -> None:
        """Append the user's one line (with the server, and the prompt id if ComfyUI queued it) and count it."""
        self.summary.servers[job.server] = self.summary.servers.get(job.server, 0) + 1
        self.recorder.record(job.user, job.prompt_id if queued else None, entry, error, job.began, server=job.server)

    # --- resuming a killed run ----------------------------------------------------------------

    def adopt(self, entries: list[JournalEntry]) -> None:
        """Take over the journaled prompts a killed run left on the servers (see :mod:`.recovery`).

        Each server is asked where its prompts are; a finished prompt is recorded, a queued or
        running one is waited for (it holds one of that server's slots), and only users whose
        prompts no server knows are queued again.
        """
        entries = entries_on(entries, self.live)
        servers = sorted({e.server for e in entries})
        asked = {url: self.live[url].locate.remote([e.prompt_id for e in entries if e.server == url]) for url in servers}
        found = {}
        for url, ref in asked.items():
            outcome = outcome_of(self.ray, ref)
            if outcome.is_lost:
                self.server_lost(url, outcome.message)
            else:
                found.update(outcome.found)
        chosen, extra = choose(entries, found)
        for entry in extra:
            log.warning("cancelling prompt %s: user %s has another prompt on a server", entry.prompt_id, entry.user_id)
            if entry.server in self.live:
                self.ray.get(self.live[entry.server].cancel.remote([entry.prompt_id]))
        now = time.monotonic()
        for user, entry in chosen.items():
            job = Job(user, entry.prompt_id, entry.server, now)
            if found[entry.prompt_id].state == FINISHED:
                log.info("user %s: prompt %s of the killed run finished on %s; recording it",
                         user, entry.prompt_id, entry.server)
                self.record(job, found[entry.prompt_id].entry, None)
            elif found[entry.prompt_id].state == WAITING:
                log.info("user %s: prompt %s of the killed run is still on %s; waiting for it",
                         user, entry.prompt_id, entry.server)
                self.in_flight[self.live[entry.server].await_prompt.remote(entry.prompt_id, self.timeout)] = job
        self.todo = deque(u for u in self.todo if u not in chosen)
        self._require_a_server()

    # --- the run ----------------------------------------------------------------------------

    def _free_server(self) -> str | None:
        """The live server with the fewest prompts in flight, if it has a free slot."""
        load = Counter({url: 0 for url in self.live})
        load.update(job.server for job in self.in_flight.values() if job.server in self.live)
        if not load:
            return None
        url, busy = min(load.items(), key=lambda item: (item[1], item[0]))
        return url if busy < self.concurrency else None

    def submit_more(self) -> None:
        """Give waiting users to servers with free slots; each prompt id is journaled before it is sent."""
        while self.todo and (url := self._free_server()) is not None:
            user = self.todo.popleft()
            graph = self.make_graph(user)
            client_id = uuid.uuid4().hex
            entry = self.journal.new_prompt(user, url, client_id)  # fsynced before the actor can queue it
            ref = self.live[url].run_prompt.remote(graph, entry.prompt_id, client_id, self.timeout)
            self.in_flight[ref] = Job(user, entry.prompt_id, url, time.monotonic())

    def collect(self, ref: Any) -> None:
        """One finished actor call: the user's line, or the user back in line if its server was lost."""
        job = self.in_flight.pop(ref)
        outcome = outcome_of(self.ray, ref)
        if outcome.kind is OutcomeKind.FINISHED:
            self.record(job, outcome.entry, None)
        elif outcome.kind is OutcomeKind.REFUSED:  # never ran: no prompt id in the line (as on one server)
            self.record(job, None, outcome.error, queued=False)
        elif outcome.kind is OutcomeKind.FAILED:
            self.record(job, None, outcome.error)
        else:
            self.server_lost(job.server, outcome.message)
            self.losses[job.user] += 1
            if self.losses[job.user] >= self.max_server_losses:
                self.record(job, None, error_line(
                    f"{self.losses[job.user]} servers were lost while this user was in flight on them (last "
                    f"{job.server}: {outcome.message}); it may be what brings them down: check the server logs "
                    "and run the same command again to retry it."))
            else:
                log.warning("user %s (prompt %s) was in flight on the lost server %s; it goes to another server",
                            job.user, job.prompt_id, job.server)
                self.todo.appendleft(job.user)

    def cancel_in_flight(self) -> None:
        """Interrupted: take this run's prompts out of the live servers' queues (Ctrl-C leaves nothing queued)."""
        by_server: dict[str, list[str]] = {}
        for job in self.in_flight.values():
            by_server.setdefault(job.server, []).append(job.prompt_id)
        calls = [self.live[url].cancel.remote(ids) for url, ids in by_server.items() if url in self.live]
        try:
            self.ray.get(calls, timeout=60)
        except Exception as exc:  # noqa: BLE001 - best effort on the way out; say what was left
            log.warning("could not cancel prompts %s: %s", by_server, exc)

    def run(self) -> DistributedSummary:
        """Run every waiting user over the live servers; returns the summary.

        Raises :class:`ComfyServerError` when no server is left (the users not run stay for the rerun).
        """
        self.recorder.report_progress()
        finished = False
        try:
            self.submit_more()
            while self.in_flight:
                ready, _ = self.ray.wait(list(self.in_flight), num_returns=1)
                for ref in ready:
                    self.collect(ref)
                self.submit_more()
                if self.todo and not self.in_flight:
                    self._require_a_server()
            finished = True
        finally:
            if not finished and self.in_flight:
                self.cancel_in_flight()
        if self.summary.failed_users:
            log.warning("failed users (rerun to retry them): %s", ", ".join(self.summary.failed_users))
        if self.summary.lost_servers:
            log.error("lost servers: %s", "; ".join(f"{u}: {m}" for u, m in self.summary.lost_servers.items()))
        return self.summary


def outcome_of(ray: Any, ref: Any) -> Outcome:
    """An actor call's outcome; a dead actor (its Ray node gone) counts as a lost server."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        return Outcome.lost(f"its Ray actor died ({exc})")


def require_a_server(lost_servers: dict[str, str], not_run: int) -> None:
    """Raise the error of a batch with no server left."""
    lost = "; ".join(f"{url}: {why}" for url, why in lost_servers.items())
    raise ComfyServerError(
        f"No ComfyUI server is left ({lost}). {not_run} user(s) were not run: start the servers (check their "
        "logs) and run the same command again to resume."
    )


def check_servers(ray: Any, actors: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The actors whose server answers now, and the others' urls with the reason (logged)."""
    checks = {url: actor.check.remote() for url, actor in actors.items()}
    live, lost = {}, {}
    for url, ref in checks.items():
        outcome = outcome_of(ray, ref)
        if outcome.is_lost:
            lost[url] = outcome.message
            log.error("ComfyUI at %s does not answer (%s); the batch runs on the other servers.", url, outcome.message)
        else:
            live[url] = actors[url]
    return live, lost


def queue_users_on_servers(
    servers: list[str],
    api_workflow: dict,
    history_file: Path | str | None,
    users: list[str] | None,
    out_jsonl: Path | str,
    concurrency: int = 2,
    substitutions: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 3600.0,
    server_history: str | None = None,
    ray_address: str | None = None,
    journal: PromptJournal | Path | str | None = None,
    max_server_losses: int = 2,
) -> DistributedSummary:
    """:func:`.batch.queue_users` over several ComfyUI servers, one Ray actor each.

    ``servers``: the ComfyUI URLs (each must have the pack and the workflow's models).
    ``ray_address``: None or ``"local"`` for a Ray started in this process, ``"auto"`` or
    ``"ray://HEAD:10001"`` for a cluster (if Ray is already initialised, that one is used).
    ``journal`` defaults to :meth:`PromptJournal.beside` the results file. The rest is a
    :class:`~.batch.BatchRequest`; every result line also names the ``server`` that ran the user.
    Servers lost before or during the run are in the summary's ``lost_servers``; with none left,
    :class:`ComfyServerError` is raised (the users not run stay for the rerun).
    """
    request = BatchRequest(api_workflow, out_jsonl, history_file, server_history, users, concurrency,
                           substitutions or {}, timeout, progress, journal)
    return run_batch_on_servers(servers, request, ray_address, max_server_losses)


def run_batch_on_servers(servers: list[str], request: BatchRequest, ray_address: str | None = None,
                         max_server_losses: int = 2) -> DistributedSummary:
    """Run a checked :class:`~.batch.BatchRequest` over ``servers`` (see :func:`queue_users_on_servers`)."""
    servers = list(dict.fromkeys(url.rstrip("/") for url in servers))
    if not servers:
        raise InvalidSettingError("No ComfyUI server given; pass at least one --url.")
    journal = request.journal if request.journal is not None else PromptJournal.beside(request.out_jsonl)
    with ray_session(ray_address) as ray:
        actors = start_actors(ray, ComfyServerWorker, servers, request.concurrency)
        try:
            live, lost = check_servers(ray, actors)
            if not live:
                require_a_server(lost, len(request.users) if request.users is not None else 0)
            history_name, users = request.history_and_users(
                lambda path, listed: upload_everywhere(ray, live, lost, path, len(listed)),
                lambda name: ray.get(next(iter(live.values())).server_file_users.remote(name)),
            )
            todo = users_to_run(users, request.out_jsonl)
            batch = RayBatch(ray, live, request.graphs(history_name), todo, request.out_jsonl, journal,
                             concurrency=request.concurrency, timeout=request.timeout, progress=request.progress,
                             max_server_losses=max_server_losses, lost_servers=lost)
            batch.summary.skipped = len(users) - len(todo)
            batch.adopt(unsettled(journal.entries(), recorded_prompt_ids(request.out_jsonl), todo))
            return batch.run()
        finally:
            for actor in actors.values():
                ray.kill(actor)


def upload_everywhere(ray: Any, live: dict[str, Any], lost: dict[str, str], path: Path, not_run: int) -> str:
    """Upload a history file and its images to every live server; the one name they all store it under.

    A server that fails is moved from ``live`` to ``lost``; with none left, the batch stops
    (``not_run`` users were not run).
    """
    files = {path.name: path.read_bytes()}
    files.update({image.as_posix(): (path.parent / image).read_bytes() for image in relative_images(path)})
    files_ref = ray.put(files)
    calls = {url: actor.upload_history.remote(files_ref, path.name) for url, actor in live.items()}
    names = set()
    for url, ref in calls.items():
        outcome = outcome_of(ray, ref)
        if outcome.is_lost:
            lost[url] = outcome.message
            del live[url]
            log.error("ComfyUI at %s is lost while uploading the history (%s)", url, outcome.message)
        else:
            names.add(outcome.name)
    if not live:
        require_a_server(lost, not_run)
    if len(names) != 1:
        raise ComfyServerError(f"The servers stored the history file under different names {sorted(names)}; "
                               "check that they run the same ComfyUI and pack version.")
    return names.pop()
