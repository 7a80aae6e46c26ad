"""One ComfyUI server as seen from a Ray actor: queue a prompt and follow it to the end, answer where prompts are.

A plain class (no Ray import): :func:`.ray_runtime.start_actors` makes it an actor, one
per server, threaded so that it follows several prompts at once. Each prompt gets its
own :class:`ComfyClient` (the client id the driver journaled), so every call is
independent. Calls do not raise for what a batch expects; they return an
:class:`~.outcome.Outcome` (finished, refused, failed, lost...: see :class:`~.outcome.OutcomeKind`).

The driver alone writes the results file and the journal; this class writes nothing.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..errors import ComfyServerError
from .batch import abandon, refusal_error, server_file_users, upload_history
from .client import ComfyClient, EventSocket
from .outcome import Outcome, OutcomeKind
from .recovery import locate
from .results import error_line

log = logging.getLogger(__name__)


class ComfyServerWorker:
    """The Ray actor of the ComfyUI at ``url`` (``timeout``: seconds for one HTTP request)."""

    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _client(self, client_id: str | None = None) -> ComfyClient:
        return ComfyClient(self.url, client_id=client_id, timeout=self.timeout)

    def check(self) -> Outcome:
        """OK if the server answers ``/system_stats``, else LOST."""
        try:
            self._client().system_stats()
        except ComfyServerError as exc:
            return Outcome.lost(str(exc))
        return Outcome(OutcomeKind.OK)

    def upload_history(self, files: dict[str, bytes], name: str) -> Outcome:
        """Upload a history file (``files[name]``) and its images (the other keys, relative paths).

        Returns UPLOADED with the loader's ``history_file`` as ``name``; the name depends
        on the bytes only (see :func:`.batch.upload_history`), so every server gets the same one.
        """
        with tempfile.TemporaryDirectory(prefix="pmg-upload-") as folder:
            for relative, data in files.items():
                path = Path(folder, relative)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            try:
                return Outcome(OutcomeKind.UPLOADED, name=upload_history(self._client(), Path(folder, name)))
            except ComfyServerError as exc:
                return Outcome.lost(str(exc))

    def server_file_users(self, name: str) -> list[str]:
        """The users of a history file already in the server's input folder."""
        return server_file_users(self._client(), name)

    def run_prompt(self, graph: dict, prompt_id: str, client_id: str, timeout: float) -> Outcome:
        """Queue ``graph`` as ``prompt_id`` under ``client_id`` and wait until it finishes (an outcome)."""
        client = self._client(client_id)
        try:
            with client.connect() as events:  # open before queueing: a cached prompt ends within milliseconds
                client.queue_prompt(graph, prompt_id=prompt_id)
                entry = client.wait(prompt_id, timeout=timeout, raise_on_error=False, events=events)
        except ComfyServerError as exc:
            return self._failure(exc, prompt_id)
        return Outcome(OutcomeKind.FINISHED, entry=entry)

    def await_prompt(self, prompt_id: str, timeout: float) -> Outcome:
        """Wait for a prompt queued by a killed run (its events go to that run's client id: poll /history)."""
        client = self._client()
        try:
            entry = client.wait(prompt_id, timeout=timeout, raise_on_error=False, events=EventSocket(None))
        except ComfyServerError as exc:
            return self._failure(exc, prompt_id)
        return Outcome(OutcomeKind.FINISHED, entry=entry)

    def locate(self, prompt_ids: list[str]) -> Outcome:
        """LOCATED with ``found`` = {prompt id: Whereabouts} (see :func:`.recovery.locate`), or LOST."""
        try:
            return Outcome(OutcomeKind.LOCATED, found=locate(self._client(), prompt_ids))
        except ComfyServerError as exc:
            return Outcome.lost(str(exc))

    def cancel(self, prompt_ids: list[str]) -> None:
        """Take prompts out of the server's queue and stop the running one, best effort."""
        if prompt_ids:
            abandon(self._client(), {prompt_id: None for prompt_id in prompt_ids})

    def _failure(self, exc: ComfyServerError, prompt_id: str) -> Outcome:
        """A refusal, a timeout (the server still answers: the prompt is cancelled) or a lost server."""
        if exc.refused:
            return Outcome(OutcomeKind.REFUSED, error=refusal_error(exc))
        if not self.check().is_lost:  # it answers: the prompt, not the server, is the problem
            self.cancel([prompt_id])
            return Outcome(OutcomeKind.FAILED, error=error_line(str(exc)))
        log.error("ComfyUI at %s is lost: %s", self.url, exc)
        return Outcome.lost(str(exc))
