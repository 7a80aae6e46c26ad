"""Ray, imported only when a batch runs on it: the session, and where each server's actor lives.

Ray is an optional dependency (``pip install ray``, or ``pip install "comfyui-pmg[distributed]"``):
nothing else in ``pmg_core`` imports it, and :func:`import_ray` says how to install it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidSettingError

log = logging.getLogger(__name__)

LOCAL = "local"  # --ray-address value for a Ray started in this process (the default)
LOCAL_OBJECT_STORE_BYTES = 100 * 1024 * 1024  # prompts and results are small; Ray's floor is 75 MiB


def import_ray() -> Any:
    """The ``ray`` module, or an error that says how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise InvalidSettingError(
            f"Queueing on several ComfyUI servers runs on Ray, which cannot be imported here ({exc}). "
            "Install it with `pip install ray` (or `pip install \"comfyui-pmg[distributed]\"`), "
            "or give a single --url without --ray-address to queue on one server without Ray."
        ) from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int = 1,
                object_store_memory: int = LOCAL_OBJECT_STORE_BYTES) -> Iterator[Any]:
    """Ray for one batch: the caller's if Ray is already initialised (left running), else one started here.

    ``address`` None or ``"local"``: a small Ray in this process (``num_cpus``, no dashboard,
    ``object_store_memory`` bytes of object store), shut down at the end. ``"auto"``: the cluster
    this machine joined with ``ray start``; ``"ray://HEAD:10001"``: a remote cluster through Ray Client.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address in (None, LOCAL):
            ray.init(num_cpus=num_cpus, include_dashboard=False, object_store_memory=object_store_memory,
                     logging_level=logging.WARNING)
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, ImportError, RuntimeError, ValueError) as exc:
        raise InvalidSettingError(
            f"Cannot start or join Ray at {address or 'a local Ray'}: {exc}. For --ray-address auto, run "
            "`ray start --head` on this machine (or `ray start --address=HEAD:6379` to join a cluster) first; "
            "for ray://HOST:10001, install `pip install \"ray[client]\"` and check the head runs a client server."
        ) from exc
    try:
        yield ray
    finally:
        ray.shutdown()


def node_for(url: str, nodes: list[dict], driver_node: str | None) -> str | None:
    """The id of the Ray node an actor for the ComfyUI at ``url`` should run on, or None for anywhere.

    A loopback URL (``127.0.0.1``, ``localhost``) is only reachable from the driver's machine;
    a host that is one node's address is that node's own server. ``nodes`` is ``ray.nodes()``.
    """
    host = urlsplit(url).hostname or ""
    if host == "localhost" or _is_loopback(host):
        return driver_node
    addresses = {host}
    with contextlib.suppress(OSError):
        addresses.add(socket.gethostbyname(host))
    for node in nodes:
        if node.get("Alive", True) and (node.get("NodeManagerAddress") in addresses or node.get("NodeName") in addresses):
            return node.get("NodeID")
    return None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def start_actors(ray: Any, worker_class: type, urls: list[str], concurrency: int, **worker_kwargs) -> dict[str, Any]:
    """One actor of ``worker_class`` per server URL, each able to follow ``concurrency`` prompts at once.

    The actors take no CPU (they wait on HTTP), and run on the node of their server when
    :func:`node_for` knows it (a soft preference: anywhere else if that node is gone).
    """
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote = ray.remote(worker_class)
    nodes = ray.nodes()
    driver_node = ray.get_runtime_context().get_node_id()
    actors = {}
    for url in urls:
        options: dict[str, Any] = {"num_cpus": 0, "max_concurrency": concurrency + 2}  # + locate, cancel
        node = node_for(url, nodes, driver_node)
        if node is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=True)
        actors[url] = remote.options(**options).remote(url, **worker_kwargs)
    return actors
