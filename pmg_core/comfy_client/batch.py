"""Run one API workflow once per user on a ComfyUI server: the studio batch queue.

Each user gets a deep copy of the graph with their substitutions (user id, history
file, output prefix, ``--set`` overrides), at most ``concurrency`` prompts of this run
sit in ComfyUI's queue at once, and one JSONL line per user is appended to the results
file the moment the user finishes. Users with a ``"status": "success"`` line are skipped
on the next run, so a killed batch resumes where it stopped; failed users are retried.
With a :class:`~.journal.PromptJournal` (``pmg queue`` always keeps one), each prompt id
is recorded before it is queued, and a resumed batch takes over the prompts the killed
one left on the server instead of running those users again (:mod:`.recovery`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ComfyServerError, InvalidSettingError, PMGError
from ..loaders import list_users
from ..safe_paths import sha256_file
from .client import ComfyClient, describe_node_errors
from .journal import JournalEntry, PromptJournal
from .recovery import FINISHED, UNKNOWN, choose, locate, unsettled
from .results import (
    BatchSummary,
    ResultRecorder,
    error_line,
    read_results,
    recorded_prompt_ids,
    result_record,
    users_to_run,
)

log = logging.getLogger(__name__)

__all__ = [  # what the CLI, the Ray driver and scripts use; the results file's readers come from .results
    "BatchQueue", "BatchRequest", "BatchSummary", "abandon", "check_graph", "entries_on", "parse_overrides",
    "queue_users", "read_results", "recorded_prompt_ids", "refusal_error", "relative_images", "result_record",
    "run_batch", "server_file_users", "upload_history", "user_graph", "users_to_run",
]

HISTORY_LOADER = "PMGUserHistoryLoader"
UPLOAD_SUBFOLDER = "pmg"
EventCallback = Callable[[str, dict], None]


# --- substitutions -----------------------------------------------------------------------


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["5.seed=3", "2.text=a cat"]`` → ``{"5.seed": 3, "2.text": "a cat"}``.

    A value that parses as JSON is used as such (numbers, booleans, lists), anything else
    is a string. ``{user_id}`` inside a string value is replaced per user.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        target, sep, raw = item.partition("=")
        node_id, dot, input_name = target.partition(".")
        if not sep or not dot or not node_id or not input_name:
            raise InvalidSettingError(f"Cannot read override {item!r}; write it as NODE_ID.INPUT=VALUE, e.g. 5.seed=42.")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        overrides[f"{node_id.strip()}.{input_name.strip()}"] = value
    return overrides


def safe_path_part(user_id: str) -> str:
    """A user id usable as one folder name in ComfyUI's output folder."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", user_id).strip(".")
    return cleaned or "user"


def user_graph(api_workflow: dict, user_id: str, history_name: str | None, overrides: dict[str, Any]) -> dict:
    """A deep copy of the graph with one user's substitutions applied.

    * every ``PMGUserHistoryLoader`` gets ``user_id`` and ``history_file``;
    * every node with a ``filename_prefix`` (SaveImage, PMGScorer...) writes under
      ``pmg/<user>/`` (which also keeps ComfyUI from serving one user's cached prompt
      to another);
    * then the ``NODE_ID.INPUT`` overrides, with ``{user_id}`` filled into strings.
    """
    graph = copy.deepcopy(api_workflow)
    for node in graph.values():
        inputs = node.setdefault("inputs", {})
        if node.get("class_type") == HISTORY_LOADER:
            inputs["user_id"] = user_id
            if history_name is not None:
                inputs["history_file"] = history_name
        prefix = inputs.get("filename_prefix")
        if isinstance(prefix, str):
            stem = os.path.basename(os.path.normpath(prefix)) if prefix.strip("/ ") else ""
            inputs["filename_prefix"] = f"{UPLOAD_SUBFOLDER}/{safe_path_part(user_id)}/{stem or 'pmg'}"
    for target, value in overrides.items():
        node_id, input_name = target.split(".", 1)
        if isinstance(value, str):
            value = value.replace("{user_id}", user_id)
        graph[node_id]["inputs"][input_name] = value
    return graph


def check_graph(api_workflow: dict, overrides: dict[str, Any]) -> None:
    """Refuse a graph that is not API format, or overrides naming nodes it does not have."""
    if not isinstance(api_workflow, dict) or not all(
        isinstance(node, dict) and "class_type" in node for node in api_workflow.values()
    ):
        raise InvalidSettingError(
            "The workflow is not in ComfyUI's API format (a map of node id → {class_type, inputs}); "
            "export it with 'Export (API)' in ComfyUI."
        )
    for target in overrides:
        node_id = target.split(".", 1)[0]
        if node_id not in api_workflow:
            raise InvalidSettingError(
                f"Override {target!r} names node {node_id!r}, which the workflow does not have; "
                f"its node ids are {sorted(api_workflow)}."
            )


# --- the history file on the server ------------------------------------------------------


def upload_history(client: ComfyClient, path: Path) -> str:
    """Upload a history file, and the images it names by relative path, into ``input/``.

    The upload goes into its own folder ``pmg-<content hash>/`` (one level deep, where
    the PMG User History Loader looks), named by the bytes of the file and its images:
    two batches whose files share a name but not their content never overwrite each
    other, and the same content uploaded again lands on itself. Images keep their
    path relative to the history file, so its relative image paths still resolve on
    the server. Returns the name the loader takes (``pmg-<hash>/<file name>``).
    """
    images = relative_images(path)
    digest = hashlib.sha256(path.read_bytes())
    for image in images:
        digest.update(image.as_posix().encode())
        digest.update(sha256_file(path.parent / image).encode())
    folder = f"{UPLOAD_SUBFOLDER}-{digest.hexdigest()[:12]}"
    for image in images:
        client.upload_file(path.parent / image, subfolder=(Path(folder) / image.parent).as_posix(), overwrite=True)
    uploaded = client.upload_file(path, subfolder=folder, overwrite=True)
    return f"{uploaded['subfolder']}/{uploaded['name']}" if uploaded.get("subfolder") else uploaded["name"]


def relative_images(path: Path) -> list[Path]:
    """Images of a history file (items and targets) as paths relative to its folder."""
    from ..loaders import load_histories

    try:
        histories = load_histories(path)
    except PMGError as exc:  # the server's loader will report the same problem per user
        log.warning("could not read the images of %s (%s); uploading the file alone", path, exc)
        return []
    base = path.parent.resolve()
    found: dict[Path, None] = {}
    for history in histories.values():
        for item in (*history.items, history.target):
            if item is None or item.image_path is None:
                continue
            try:
                found[Path(item.image_path).resolve().relative_to(base)] = None
            except ValueError:
                log.warning("image %s lies outside %s: it is not uploaded, so the server must be able to read "
                            "it at that same path", item.image_path, base)
    return list(found)


def server_file_users(client: ComfyClient, name: str) -> list[str]:
    """The users of a history file in the server's input folder (fetched through /view)."""
    import tempfile

    subfolder, _, filename = name.rpartition("/")
    data = client.view(filename, subfolder, type="input")
    if filename.lower().endswith(".jsonl"):
        # Read the ids alone: the loaders would also look for the images, which live on the server.
        try:
            return [str(json.loads(line)["user_id"]) for line in data.decode("utf-8").split("\n") if line.strip()]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidSettingError(f"{name} on the server is not a history JSONL file ({exc}); check the name.") from exc
    with tempfile.TemporaryDirectory() as folder:
        local = Path(folder) / filename
        local.write_bytes(data)
        return list_users(local)


# --- the queue -------------------------------------------------------------------------------

def refusal_error(exc: ComfyServerError) -> dict:
    """A result line's error for a prompt ComfyUI refused (validation): its first node, every node's message."""
    errors = exc.node_errors
    if not errors:
        return error_line(str(exc))
    return {**errors[0], "message": describe_node_errors(errors)}


class BatchQueue:
    """The users of one batch run and the transitions between their states.

    A user is *waiting* (in ``todo``), *running* (its prompt id in ``running``, at most
    ``concurrency`` of them) or *recorded* (its line appended to ``out_jsonl``, counted
    in ``summary``). Each transition is one method: :meth:`submit_more` (waiting →
    running, or recorded when ComfyUI refuses the prompt), :meth:`prompt_done`,
    :meth:`expire` and :meth:`server_lost` (running → recorded), :meth:`cancel_running`
    (running → taken out of ComfyUI's queue, left for the rerun). :meth:`run` drives
    them from ComfyUI's ``/ws`` events.

    With a ``journal``, each prompt id is recorded (fsynced) before its prompt is queued,
    and :meth:`adopt` takes over the prompts a killed run left on the server.
    """

    def __init__(self, client: ComfyClient, make_graph: Callable[[str], dict], users: list[str], out_jsonl: Path,
                 concurrency: int = 2, timeout: float = 3600.0, progress: Callable[[int, int], None] | None = None,
                 on_event: EventCallback | None = None, journal: PromptJournal | None = None) -> None:
        self.client, self.make_graph = client, make_graph
        self.concurrency, self.timeout, self.on_event = concurrency, timeout, on_event
        self.journal = journal
        self.todo: deque[str] = deque(users)
        self.running: dict[str, tuple[str, float]] = {}  # prompt id -> (user, submitted at)
        self.watched: set[str] = set()  # the prompt ids `ComfyClient.follow` waits for (it drops finished ones)
        self.foreign: set[str] = set()  # adopted prompts of a killed run: their events go to its client id
        self.summary = BatchSummary()
        self.recorder = ResultRecorder(out_jsonl, self.summary, len(users), progress)

    @property
    def finished(self) -> bool:
        return not self.running and not self.todo

    def record(self, user: str, prompt_id: str | None, entry: dict | None, error: dict | None, began: float) -> None:
        """Append the user's line and count it."""
        self.recorder.record(user, prompt_id, entry, error, began)

    def submit_more(self) -> None:
        """Queue waiting users until ``concurrency`` run; a refused prompt is recorded as that user's error.

        A server that does not answer at all raises :class:`ComfyServerError` (the user is recorded first).
        """
        while self.todo and len(self.running) < self.concurrency:
            user = self.todo.popleft()
            began = time.monotonic()
            try:
                graph = self.make_graph(user)
                if self.journal is None:
                    prompt_id = self.client.queue_prompt(graph)
                else:  # recorded before it is sent: a kill between the two leaves no untraceable prompt
                    entry = self.journal.new_prompt(user, self.client.url, self.client.client_id)
                    prompt_id = self.client.queue_prompt(graph, prompt_id=entry.prompt_id)
            except ComfyServerError as exc:
                if not exc.refused:
                    self.record(user, None, None, error_line(str(exc)), began)
                    raise
                self.record(user, None, None, refusal_error(exc), began)
                continue
            self.running[prompt_id] = (user, began)
            self.watched.add(prompt_id)

    def prompt_done(self, prompt_id: str, entry: dict) -> None:
        """A prompt of this run finished (its /history entry says how)."""
        user, began = self.running.pop(prompt_id)
        self.foreign.discard(prompt_id)
        self.record(user, prompt_id, entry, None, began)

    def adopt(self, entries: list[JournalEntry]) -> None:
        """Take over the journaled prompts a killed run left on this server (see :mod:`.recovery`).

        A finished one is recorded now, a queued or running one is waited for like a prompt
        of this run; either way its user is not queued again. Users whose prompt the server
        has no trace of stay waiting. A user's extra waiting prompts are cancelled.
        """
        if not entries:
            return
        found = locate(self.client, [e.prompt_id for e in entries])
        chosen, extra = choose(entries, found)
        if extra:
            log.warning("cancelling %d duplicate prompt(s) of a killed run: %s", len(extra), [e.prompt_id for e in extra])
            abandon(self.client, {e.prompt_id: None for e in extra})
        now = time.monotonic()
        for user, entry in chosen.items():
            if found[entry.prompt_id].state == FINISHED:
                log.info("user %s: prompt %s of the killed run finished; recording it", user, entry.prompt_id)
                self.record(user, entry.prompt_id, found[entry.prompt_id].entry, None, now)
            else:
                log.info("user %s: prompt %s of the killed run is still queued or running; waiting for it",
                         user, entry.prompt_id)
                self.running[entry.prompt_id] = (user, now)
                self.watched.add(entry.prompt_id)
                self.foreign.add(entry.prompt_id)
        lost = {e.user_id for e in entries if found[e.prompt_id].state == UNKNOWN} - set(chosen)
        if lost:
            log.info("%d user(s) of the killed run left no trace on %s; queueing them again", len(lost), self.client.url)
        self.todo = deque(u for u in self.todo if u not in chosen)

    def expire(self, now: float | None = None) -> None:
        """Cancel and record the prompts that ran past ``timeout``."""
        now = time.monotonic() if now is None else now
        for prompt_id, (user, began) in list(self.running.items()):
            if now - began > self.timeout:
                del self.running[prompt_id]
                self.watched.discard(prompt_id)
                abandon(self.client, {prompt_id: (user, began)})
                self.record(user, prompt_id, None, error_line(f"timed out after {self.timeout:.0f} s"), began)

    def server_lost(self, exc: ComfyServerError) -> ComfyServerError:
        """The server stopped answering: the running users get a line saying so (one of them may have
        brought it down); the waiting ones are left for the rerun. Returns the error to raise."""
        for prompt_id, (user, began) in self.running.items():
            self.record(user, prompt_id, None, error_line(str(exc)), began)
        return ComfyServerError(f"{exc} {len(self.todo)} user(s) were not submitted; run the same command again to resume.")

    def cancel_running(self) -> None:
        """Interrupted (Ctrl-C, a progress callback that raised): leave nothing of this run in ComfyUI's queue."""
        if self.running:
            abandon(self.client, self.running)

    def handle(self, event: dict) -> None:
        """One /ws event (or a tick): a finished prompt, progress for the caller, expiry, refill."""
        data = event.get("data") or {}
        prompt_id = data.get("prompt_id")
        if event["type"] == "done" and prompt_id in self.running:
            self.prompt_done(prompt_id, data["entry"])
        elif prompt_id in self.running and self.on_event is not None:
            self.on_event(self.running[prompt_id][0], event)
        self.expire()
        self.submit_more()

    def run(self) -> BatchSummary:
        """Run every waiting user; returns the summary (a lost server raises after recording)."""
        self.recorder.report_progress()
        # The socket opens before the first prompt is queued: a prompt served from ComfyUI's
        # cache finishes within milliseconds, and its events would be gone otherwise.
        events = self.client.connect()
        try:
            self.submit_more()
            for event in self.client.follow(self.watched, timeout=float("inf"), ticks=True, events=events,
                                            foreign=self.foreign):
                self.handle(event)
                if self.finished:
                    break
        except ComfyServerError as exc:
            if exc.refused:
                raise
            lost = self.server_lost(exc)  # the running users stay, so cancel_running below still tries
            raise lost from exc
        finally:
            events.close()
            self.cancel_running()
        if self.summary.failed_users:
            log.warning("failed users (rerun to retry them): %s", ", ".join(self.summary.failed_users))
        return self.summary


@dataclass
class BatchRequest:
    """One batch as asked: the workflow, where the history is, the users, where results go; checked once.

    ``history_file`` (a local file) is uploaded into the server's ``input/pmg-<content hash>/``
    with the images it names by relative path (see :func:`upload_history`); or
    ``server_history`` names a file already in the server's input folder
    (``pmg_stickers/history.jsonl``). ``users=None`` means every user of that file.
    ``substitutions`` are ``{"NODE_ID.INPUT": value}`` overrides (see :func:`parse_overrides`).
    ``progress`` gets (users finished, users to run); ``timeout`` bounds each user's run.
    ``journal`` (a :class:`~.journal.PromptJournal` or its path) records each prompt id
    before it is queued, so a resumed run never executes a user twice.
    """

    api_workflow: dict
    out_jsonl: Path
    history_file: Path | None = None
    server_history: str | None = None
    users: list[str] | None = None
    concurrency: int = 2
    substitutions: dict[str, Any] = field(default_factory=dict)
    timeout: float = 3600.0
    progress: Callable[[int, int], None] | None = None
    journal: PromptJournal | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InvalidSettingError(f"concurrency must be at least 1 (got {self.concurrency}).")
        if self.history_file is not None and self.server_history is not None:
            raise InvalidSettingError("Give either a local history file or a server_history name, not both.")
        self.substitutions = dict(self.substitutions or {})
        check_graph(self.api_workflow, self.substitutions)
        self.out_jsonl = Path(self.out_jsonl)
        if self.history_file is not None:
            self.history_file = Path(self.history_file)
            if not self.history_file.is_file():
                raise InvalidSettingError(
                    f"History file {self.history_file} does not exist; pass the path of a local file."
                )
        if self.journal is not None and not isinstance(self.journal, PromptJournal):
            self.journal = PromptJournal(self.journal)

    def graphs(self, history_name: str | None) -> Callable[[str], dict]:
        """Each user's graph: the workflow with that user's substitutions (see :func:`user_graph`)."""
        return lambda user: user_graph(self.api_workflow, user, history_name, self.substitutions)

    def history_and_users(self, upload: Callable[[Path, list[str]], str],
                          users_on_server: Callable[[str], list[str]]) -> tuple[str | None, list[str]]:
        """The history name the loader gets on the server(s) and the users to run (in order, no repeats).

        ``upload(path, users)`` puts a local history file on the server(s) and returns its name
        there; ``users_on_server(name)`` lists the users of a file already on a server.
        """
        users = self.users
        history_name = self.server_history
        if self.history_file is not None:
            if users is None:
                users = list_users(self.history_file)
            history_name = upload(self.history_file, users)
        elif self.server_history is not None and users is None:
            users = users_on_server(self.server_history)
        if users is None:
            raise InvalidSettingError("No users given and no history file to list them from; pass users or a history file.")
        return history_name, list(dict.fromkeys(str(u) for u in users))  # keep order, drop repeats


def queue_users(
    client: ComfyClient,
    api_workflow: dict,
    history_file: Path | str | None,
    users: list[str] | None,
    out_jsonl: Path | str,
    concurrency: int = 2,
    substitutions: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    timeout: float = 3600.0,
    on_event: EventCallback | None = None,
    server_history: str | None = None,
    journal: PromptJournal | Path | str | None = None,
) -> BatchSummary:
    """Queue ``api_workflow`` once per user and append one result line per user to ``out_jsonl``.

    The arguments are those of :class:`BatchRequest`, plus ``on_event`` (gets (user id,
    websocket event)). ``pmg queue`` keeps the journal :meth:`PromptJournal.beside` the
    results file; without one, users whose prompts were in flight at a kill run again.
    Returns a :class:`BatchSummary`; a lost server raises :class:`ComfyServerError` after
    recording the users being submitted or running.
    """
    request = BatchRequest(api_workflow, out_jsonl, history_file, server_history, users, concurrency,
                           substitutions or {}, timeout, progress, journal)
    return run_batch(client, request, on_event)


def run_batch(client: ComfyClient, request: BatchRequest, on_event: EventCallback | None = None) -> BatchSummary:
    """Run a checked :class:`BatchRequest` on the one server of ``client`` (see :func:`queue_users`)."""
    history_name, users = request.history_and_users(
        lambda path, _users: upload_history(client, path), lambda name: server_file_users(client, name)
    )
    todo = users_to_run(users, request.out_jsonl)
    batch = BatchQueue(client, request.graphs(history_name), todo, request.out_jsonl, concurrency=request.concurrency,
                       timeout=request.timeout, progress=request.progress, on_event=on_event, journal=request.journal)
    batch.summary.skipped = len(users) - len(todo)
    if request.journal is not None:
        left = unsettled(request.journal.entries(), recorded_prompt_ids(request.out_jsonl), todo)
        batch.adopt(entries_on(left, [client.url]))
    return batch.run()


def entries_on(entries: list[JournalEntry], servers: Iterable[str]) -> list[JournalEntry]:
    """The entries of ``servers``; those of other servers are named in a warning (this run cannot ask them)."""
    servers = {server.rstrip("/") for server in servers}
    elsewhere = sorted({e.server for e in entries} - servers)
    if elsewhere:
        log.warning("the journal has unfinished prompts on %s, which this run does not use (or has lost): if those "
                    "servers still run them, their users run twice. Resume with the same --url list as the killed "
                    "run.", ", ".join(elsewhere))
    return [e for e in entries if e.server in servers]


def abandon(client: ComfyClient, running: dict) -> None:
    """Take prompts out of ComfyUI's queue and stop the one running, best effort."""
    try:
        client.delete_queued(list(running))
        for prompt_id in running:
            client.interrupt(prompt_id)
    except ComfyServerError as exc:
        log.warning("could not cancel prompts %s: %s", sorted(running), exc)
