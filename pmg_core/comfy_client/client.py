"""A small, blocking client for ComfyUI's HTTP + websocket API.

What a studio script needs: queue an API-format graph, follow it on ``/ws`` until it
finishes (falling back to polling ``/history`` if the socket drops), read its outputs,
fetch files with ``/view``, upload inputs. Every request has a timeout, and every
refusal becomes a :class:`~pmg_core.errors.ComfyServerError` whose message names the
node and the problem. Structured details ride on the exception as attributes:

* ``node_errors``: ``[{"node_id", "node_type", "message"}, ...]`` (validation or execution);
* ``status_code``: the HTTP status, when there was one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import websocket

from ..errors import ComfyServerError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[dict], None]
"""Called with each websocket event of the prompt: ``{"type": ..., "data": {...}}``."""


@dataclass
class EventSocket:
    """This client's ``/ws`` connection, opened by :meth:`ComfyClient.connect`.

    ComfyUI sends a prompt's events only to the sockets open when they happen, so open
    this BEFORE queueing: a prompt served from cache finishes within milliseconds, and
    a socket opened after ``POST /prompt`` would miss its ``execution_start`` and
    ``execution_cached``. ``socket`` is None when it could not open or has dropped; the
    readers then poll ``/history``. Use it as a context manager to close it.
    """

    socket: websocket.WebSocket | None

    def close(self) -> None:
        socket_, self.socket = self.socket, None
        if socket_ is not None:
            with contextlib.suppress(websocket.WebSocketException, OSError):  # already broken: nothing to close
                socket_.close()

    def __enter__(self) -> "EventSocket":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class ComfyClient:
    """One client id talking to one ComfyUI server at ``url`` (e.g. ``http://127.0.0.1:8188``)."""

    def __init__(self, url: str, client_id: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout
        self.session = requests.Session()

    # --- plain requests ---------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            return self.session.request(method, f"{self.url}{path}", **kwargs)
        except requests.Timeout as exc:
            raise ComfyServerError(
                f"ComfyUI at {self.url} did not answer {method} {path} within {kwargs['timeout']} s; "
                "is it busy or stuck? Check its log, or raise the client timeout."
            ) from exc
        except requests.ConnectionError as exc:
            raise ComfyServerError(
                f"Cannot reach ComfyUI at {self.url} ({method} {path}): {_root_cause(exc)}. "
                "Start it with `pmg serve` or fix the --url."
            ) from exc

    def _json(self, method: str, path: str, **kwargs) -> Any:
        response = self._request(method, path, **kwargs)
        if response.status_code != 200:
            raise ComfyServerError(
                f"ComfyUI refused {method} {path} with HTTP {response.status_code}: {response.text[:500]}",
                status_code=response.status_code,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise ComfyServerError(f"ComfyUI answered {method} {path} with non-JSON: {response.text[:200]!r}") from exc

    def system_stats(self) -> dict:
        """Versions, devices and memory of the server."""
        return self._json("GET", "/system_stats")

    def object_info(self, node: str | None = None) -> dict:
        """Schemas of all node classes, or of one (``{node: schema}``)."""
        return self._json("GET", f"/object_info/{node}" if node else "/object_info")

    def queue(self) -> dict:
        """``{"queue_running": [...], "queue_pending": [...]}``."""
        return self._json("GET", "/queue")

    def history(self, prompt_id: str) -> dict | None:
        """The history entry of a finished prompt, or None while it is queued or running."""
        return self._json("GET", f"/history/{prompt_id}").get(prompt_id)

    def outputs(self, prompt_id: str) -> dict[str, dict]:
        """The UI outputs of a finished prompt, by node id (``{}`` if it is not finished)."""
        entry = self.history(prompt_id)
        return (entry or {}).get("outputs", {})

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        """The bytes of a file of the server's output, input or temp folder."""
        response = self._request("GET", "/view", params={"filename": filename, "subfolder": subfolder, "type": type})
        if response.status_code != 200:
            raise ComfyServerError(
                f"ComfyUI has no {type} file {subfolder + '/' if subfolder else ''}{filename} "
                f"(HTTP {response.status_code}); check the name against the prompt's outputs.",
                status_code=response.status_code,
            )
        return response.content

    def upload_file(self, path: Path | str, subfolder: str = "", overwrite: bool = True, type: str = "input") -> dict:
        """Upload any file into the server's input folder; returns ``{"name", "subfolder", "type"}``.

        ComfyUI's ``/upload/image`` writes the bytes as they are (it does not decode
        images), so history files go through it too. Without ``overwrite`` a different
        file of the same name is renamed ``name (1).ext``: use the returned name.
        """
        path = Path(path)
        if not path.is_file():
            raise ComfyServerError(f"Cannot upload {path}: no such file. Check the path.")
        with open(path, "rb") as handle:
            response = self._request(
                "POST", "/upload/image",
                files={"image": (path.name, handle, "application/octet-stream")},
                data={"subfolder": subfolder, "type": type, "overwrite": "true" if overwrite else "false"},
            )
        if response.status_code != 200:
            raise ComfyServerError(
                f"ComfyUI refused the upload of {path.name} into {type}/{subfolder} (HTTP {response.status_code}); "
                "the subfolder must stay inside the input folder.",
                status_code=response.status_code,
            )
        return response.json()

    def interrupt(self, prompt_id: str | None = None) -> None:
        """Stop the running prompt (only ``prompt_id``, if given and running)."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {})

    def delete_queued(self, prompt_ids: Iterable[str]) -> None:
        """Remove prompts that have not started yet from the queue."""
        self._request("POST", "/queue", json={"delete": list(prompt_ids)})

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask the server to unload models and free memory after the current prompt."""
        self._request("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    # --- prompts ----------------------------------------------------------------------

    def queue_prompt(self, api_graph: dict, extra_data: dict | None = None, prompt_id: str | None = None) -> str:
        """Queue an API-format graph; returns its prompt id.

        ``prompt_id``: the id to queue it under (ComfyUI takes one from the client), so a
        caller can record it before sending (see :mod:`.journal`); by default the server makes one.

        A graph that fails validation raises :class:`ComfyServerError` whose message lists
        each node id, class and error, and whose ``node_errors`` holds them as dicts.
        A node without an ``"inputs"`` object is refused here, before it is sent: ComfyUI
        0.3.75 accepts such a graph and its queue then hangs (README, Known issues).
        """
        check_graph_shape(api_graph)
        body: dict[str, Any] = {"prompt": api_graph, "client_id": self.client_id}
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        if extra_data:
            body["extra_data"] = extra_data
        response = self._request("POST", "/prompt", json=body)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code == 200 and isinstance(answer, dict) and "prompt_id" in answer:
            partial = parse_node_errors(answer.get("node_errors") or {}, api_graph)
            if partial:  # some outputs are valid, so ComfyUI runs those and drops the others
                log.warning("ComfyUI queued %s but ignores outputs with errors: %s",
                            answer["prompt_id"], describe_node_errors(partial))
            return str(answer["prompt_id"])
        if not isinstance(answer, dict):
            raise ComfyServerError(
                f"ComfyUI refused the prompt with HTTP {response.status_code}: {response.text[:500]}",
                status_code=response.status_code,
            )
        errors = parse_node_errors(answer.get("node_errors") or {}, api_graph)
        top = answer.get("error") or {}
        if not errors and isinstance(top, dict):
            errors = [_error_from_top_level(top, api_graph)]
        summary = top.get("message", "invalid prompt") if isinstance(top, dict) else str(top)
        raise ComfyServerError(
            f"ComfyUI rejected the prompt ({summary}): {describe_node_errors(errors)}. "
            "Fix those node inputs (see GET /object_info/<class> for allowed values) and queue again.",
            node_errors=errors,
            status_code=response.status_code,
        )

    def wait(
        self,
        prompt_id: str,
        timeout: float = 600.0,
        on_progress: ProgressCallback | None = None,
        raise_on_error: bool = True,
        events: EventSocket | None = None,
    ) -> dict:
        """Block until the prompt finishes; returns its history entry.

        Follows ``/ws`` (events go to ``on_progress``) and falls back to polling
        ``/history`` if the socket cannot be opened or drops. Pass ``events`` (from
        :meth:`connect`, opened before queueing) to receive every event of the prompt;
        without it the socket opens now, and events sent before that are lost (use
        :meth:`run`). A prompt that failed raises :class:`ComfyServerError` naming the
        node (unless ``raise_on_error`` is False, then the entry is returned: see
        :func:`execution_error`).
        """
        entry = None
        for event in self.follow([prompt_id], timeout=timeout, events=events):
            if event["type"] == "done":
                entry = event["data"]["entry"]
            elif on_progress is not None:
                on_progress(event)
        assert entry is not None
        error = execution_error(entry)
        if error is not None and raise_on_error:
            raise ComfyServerError(
                f"Prompt {prompt_id} failed in node {error['node_id']} ({error['node_type']}): {error['message']} "
                "(fix that node's input; the server log has the traceback)",
                node_errors=[error],
            )
        return entry

    def run(self, api_graph: dict, timeout: float = 600.0, on_progress: ProgressCallback | None = None) -> dict:
        """Queue a graph and wait for it; returns the history entry (raises if it failed).

        The socket opens before the prompt is queued, so ``on_progress`` sees all its
        events, ``execution_start`` and ``execution_cached`` included.
        """
        with self.connect() as events:
            return self.wait(self.queue_prompt(api_graph), timeout=timeout, on_progress=on_progress, events=events)

    def connect(self) -> EventSocket:
        """Open this client's ``/ws`` now, before queueing (see :class:`EventSocket`).

        Returns once ComfyUI has registered the socket (its first ``status`` message
        arrived), so a prompt queued afterwards cannot beat it. A socket that cannot
        open gives an :class:`EventSocket` without one (the readers poll ``/history``).
        """
        return EventSocket(_open_socket(self.url, self.client_id, self.timeout))

    def follow(
        self,
        prompt_ids: Iterable[str],
        timeout: float = 600.0,
        poll_interval: float = 0.5,
        ticks: bool = False,
        events: EventSocket | None = None,
        foreign: set[str] | None = None,
    ) -> Iterator[dict]:
        """Yield the events of some prompts of this client until all of them are finished.

        Websocket events are yielded as ``{"type", "data"}``; each finished prompt yields
        ``{"type": "done", "data": {"prompt_id", "entry"}}`` with its history entry. Adding ids to
        a ``set`` passed as ``prompt_ids`` while iterating is allowed (the batch queue does it). With
        ``ticks``, quiet periods yield ``{"type": "tick"}`` (about every 2 s) for the caller's deadlines.
        ``events``: a socket from :meth:`connect` opened before the prompts were queued (the caller
        closes it); without it one is opened here, and events sent before that are lost. ``foreign``:
        ids among ``prompt_ids`` queued under another client id (a killed run's): their events go to
        that client's socket, so they are looked up on ``/history`` now, at every queue change
        (ComfyUI's ``status`` event, sent to every socket) and in quiet periods. Raises
        :class:`ComfyServerError` after ``timeout`` seconds.
        """
        pending = prompt_ids if isinstance(prompt_ids, set) else set(prompt_ids)
        foreign = foreign if foreign is not None else set()
        deadline = time.monotonic() + timeout
        own = events is None
        if own:
            events = self.connect()
        try:
            if own or events.socket is None:
                # Prompts may have finished before this socket was open: their events are gone.
                # (A socket opened before queueing holds them all, down to the final one.)
                yield from self._finished(pending)
            elif foreign & pending:
                yield from self._finished(pending, among=foreign)
            while pending:
                if time.monotonic() > deadline:
                    raise ComfyServerError(
                        f"Timed out after {timeout:.0f} s waiting for prompt(s) {sorted(pending)}; they may still "
                        "run: see GET /queue, interrupt them, or wait longer."
                    )
                yield from self._next_events(events, pending, foreign, poll_interval, ticks)
        finally:
            if own:
                events.close()

    def _next_events(
        self, events: EventSocket, pending: set[str], foreign: set[str], poll_interval: float, ticks: bool
    ) -> Iterator[dict]:
        """One turn of :meth:`follow`: the next socket message's events, or a poll of ``/history`` when quiet."""
        message = None
        if events.socket is None:
            time.sleep(poll_interval)
        else:
            try:
                message = events.socket.recv()
            except websocket.WebSocketTimeoutException:
                pass  # a quiet period
            except (websocket.WebSocketException, OSError) as exc:
                log.warning("ComfyUI websocket dropped (%s); polling /history instead", exc)
                events.close()
                return
        if message is None:
            # No socket, or a quiet one: cheap insurance against a missed final event.
            yield from self._finished(pending)
            if ticks:
                yield {"type": "tick", "data": {}}
            return
        if not isinstance(message, str):
            return  # binary preview frames
        event = json.loads(message)
        data = event.get("data") or {}
        if event.get("type") == "status" and foreign & pending:
            yield from self._finished(pending, among=foreign)
        if data.get("prompt_id") not in pending and event.get("type") != "status":
            return
        if event.get("type") != "status":
            yield event
        if event.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") in pending:
            # Sent after the history entry is written: the prompt is finished.
            yield from self._finished(pending, only=data["prompt_id"])

    def _finished(self, pending: set[str], only: str | None = None, among: set[str] | None = None) -> Iterator[dict]:
        """``done`` events for the finished prompts of ``pending`` (only ``only``, or those also in ``among``)."""
        for prompt_id in [only] if only else sorted(pending & among if among is not None else pending):
            entry = self.history(prompt_id)
            if only and entry is None:
                # Should not happen (history is written first); retry briefly rather than lose it.
                for _ in range(20):
                    time.sleep(0.1)
                    if (entry := self.history(prompt_id)) is not None:
                        break
            if entry is not None and prompt_id in pending:
                pending.discard(prompt_id)
                yield {"type": "done", "data": {"prompt_id": prompt_id, "entry": entry}}


def _open_socket(url: str, client_id: str, timeout: float) -> websocket.WebSocket | None:
    """This client id's ``/ws`` at ``url``, registered by the server (None when it cannot open)."""
    ws_url = url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    try:
        socket_ = websocket.create_connection(f"{ws_url}/ws?clientId={client_id}", timeout=timeout)
    except (websocket.WebSocketException, OSError) as exc:
        log.warning("Cannot open ComfyUI's websocket (%s); polling /history instead", exc)
        return None
    socket_.settimeout(2.0)  # the recv loop wakes up to check the deadline and /history
    try:
        # ComfyUI registers the socket, then greets it with "status": after that, every event is ours.
        socket_.recv()
    except websocket.WebSocketTimeoutException:
        log.warning("ComfyUI's websocket sent no greeting within 2 s; a prompt queued now may lose early events")
    except (websocket.WebSocketException, OSError) as exc:
        log.warning("ComfyUI's websocket closed at once (%s); polling /history instead", exc)
        socket_.close()
        return None
    return socket_


def _root_cause(exc: BaseException) -> str:
    """The innermost reason of a requests error ('[Errno 111] Connection refused'), not its wrappers."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    reason = str(exc)
    return reason.rsplit(": ", 1)[-1] if ": [Errno" in reason else reason


# --- reading answers --------------------------------------------------------------------


def check_graph_shape(api_graph: dict) -> None:
    """Refuse an API graph ComfyUI cannot run safely: not a mapping, or a node without an ``inputs`` object.

    Raises :class:`ComfyServerError` shaped like ComfyUI's own 400 refusal (``status_code``
    400, one ``node_errors`` entry per bad node), so callers handle both alike.
    """
    if not isinstance(api_graph, dict) or not api_graph:
        raise ComfyServerError(
            "The prompt is not an API-format graph ({\"<node id>\": {\"class_type\": ..., \"inputs\": {...}}}); "
            "export it with ComfyUI's 'Export (API)' or convert it with pmg_core.comfy_client.workflow_format.ui_to_api.",
            status_code=400,
        )
    errors = []
    for node_id, node in api_graph.items():
        node_type = node.get("class_type", "?") if isinstance(node, dict) else "?"
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            errors.append({
                "node_id": str(node_id), "node_type": node_type,
                "message": (
                    "has no \"inputs\" object; give it one (\"inputs\": {} for a node without inputs) "
                    "or remove the node: ComfyUI would accept the graph and then hang its queue"
                ),
            })
    if errors:
        raise ComfyServerError(
            f"Refused the prompt before queueing it: {describe_node_errors(errors)}.",
            node_errors=errors, status_code=400,
        )


def parse_node_errors(node_errors: dict, api_graph: dict | None = None) -> list[dict]:
    """ComfyUI's ``node_errors`` map as a flat list of ``{"node_id", "node_type", "message"}``."""
    errors = []
    for node_id, info in node_errors.items():
        node_type = info.get("class_type") or (api_graph or {}).get(node_id, {}).get("class_type", "?")
        for reason in info.get("errors", []) or [{"message": "invalid", "details": ""}]:
            message = reason.get("message", "")
            if reason.get("details"):
                message = f"{message}: {reason['details']}"
            errors.append({"node_id": str(node_id), "node_type": node_type, "message": message})
    return errors


def _error_from_top_level(error: dict, api_graph: dict) -> dict:
    """A graph-level refusal (unknown class, no outputs) as a node error when it names a node."""
    details = str(error.get("details", ""))
    node_id = None
    if "Node ID '#" in details:
        node_id = details.split("Node ID '#", 1)[1].split("'", 1)[0]
    node_type = api_graph.get(node_id, {}).get("class_type") if node_id else None
    message = error.get("message", "invalid prompt")
    if error.get("type") == "invalid_prompt" and node_type and "does not exist" in message:
        message += " Is its node pack installed and did it import? (see the server log)"
    return {"node_id": node_id, "node_type": node_type, "message": message}


def describe_node_errors(errors: list[dict]) -> str:
    """One readable line for a list of ``{node_id, node_type, message}`` errors."""
    return "; ".join(f"node {e['node_id']} ({e['node_type']}): {e['message']}" for e in errors) or "no details"


def execution_error(entry: dict) -> dict | None:
    """``{"node_id", "node_type", "message"}`` if a history entry records a failure, else None."""
    status = entry.get("status") or {}
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return {"node_id": str(data.get("node_id")), "node_type": data.get("node_type"),
                    "message": f"{_short_type(data.get('exception_type'))}: {data.get('exception_message', '').strip()}"}
        if kind == "execution_interrupted":
            return {"node_id": str(data.get("node_id")), "node_type": data.get("node_type"),
                    "message": "interrupted"}
    if status.get("status_str") == "error":
        return {"node_id": None, "node_type": None, "message": "the prompt failed (no details in its history)"}
    return None


def _short_type(exception_type: str | None) -> str:
    """``/path/custom_nodes/pack.pmg_core.errors.KeywordParseError`` → ``KeywordParseError``."""
    return (exception_type or "Error").rsplit(".", 1)[-1]


def output_files(entry: dict, key: str = "images") -> list[dict]:
    """All ``{"filename", "subfolder", "type"}`` records under ``key`` in a history entry's outputs."""
    files = []
    for node_output in (entry.get("outputs") or {}).values():
        files.extend(node_output.get(key, []) or [])
    return files
