"""Studio batch throughput: one ComfyUI server vs two, through Ray (`pmg queue --url A --url B`).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python -m benchmarks.bench_distributed [--users 16] [--steps 4]
        [--size 64] [--concurrency 2] [--repeats 2] [--json out.json]

In ONE process: two embedded ComfyUI servers (CPU, one torch thread each, the tiny random
SD1.5 checkpoint) and one local Ray (2 CPUs, no dashboard). Each server first runs one
warm-up user (loading the checkpoint is not part of the figures). Then, on the same kind of
users (the stock txt2img graph, ``--size`` px, ``--steps`` steps, a per-user prompt text so
ComfyUI's cache cannot skip the sampler), each condition with users of its own:

* **one server, no Ray**: ``queue_users`` (``pmg queue --url A``);
* **one server, Ray**: ``queue_users_on_servers([A])`` (``pmg queue --url A --ray-address local``);
* **two servers, Ray**: ``queue_users_on_servers([A, B])`` (``pmg queue --url A --url B``).

The conditions run in turn, ``--repeats`` rounds (fresh users each time); the figures are
over all rounds (users/s = users / seconds summed). Prints users/s, the users each server ran,
and the ratio two servers / one server (both on Ray). Ray's start-up (once per ``pmg queue`` run) is printed
apart. Not a test: the figures
depend on the machine. On a 2-core machine each server gets one core, but the driver, Ray's
processes and the other users of the machine share the same two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

from pmg_core.comfy_client.batch import queue_users
from pmg_core.comfy_client.client import ComfyClient
from pmg_core.comfy_client.distributed import queue_users_on_servers
from pmg_core.comfy_client.ray_runtime import import_ray
from pmg_tools.server import (
    EmbeddedComfyUI,
    ensure_tiny_checkpoint,
    install_default_models,
)

log = logging.getLogger("bench_distributed")


def graph(steps: int, size: int, prefix: str) -> dict:
    """The stock txt2img API graph on the tiny checkpoint (node 2's text is set per user)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "pmg-tiny-sd15.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 0, "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


def conditions(urls: list[str], n_users: int, steps: int, size: int, concurrency: int, work: Path) -> dict:
    """The three ways to run one round of users, by name: each takes the round's tag and returns its summary."""
    overrides = {"2.text": "a portrait of {user_id}"}

    def users(tag: str) -> list[str]:
        return [f"{tag}{i:03d}" for i in range(n_users)]

    return {
        "one server, no Ray": lambda tag: queue_users(
            ComfyClient(urls[0]), graph(steps, size, tag), None, users(tag), work / f"{tag}.jsonl",
            concurrency=concurrency, substitutions=overrides),
        "one server, Ray": lambda tag: queue_users_on_servers(
            urls[:1], graph(steps, size, tag), None, users(tag), work / f"{tag}.jsonl",
            concurrency=concurrency, substitutions=overrides),
        "two servers, Ray": lambda tag: queue_users_on_servers(
            urls, graph(steps, size, tag), None, users(tag), work / f"{tag}.jsonl",
            concurrency=concurrency, substitutions=overrides),
    }


class CpuMeter:
    """CPU seconds of the servers, of this driver and of Ray's processes."""

    def __init__(self, servers: list):
        self.server_pids = {server.pid for server in servers}
        self.processes = [psutil.Process(server.pid) for server in servers]

    def servers(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes)

    def ray_by_pid(self) -> dict[int, float]:
        """CPU of Ray's processes (GCS, raylet, the actors' workers: this process's other descendants),
        each with its reaped children's, so a worker that ended still counts in its parent."""
        found = {}
        for child in psutil.Process().children(recursive=True):
            if child.pid not in self.server_pids:
                with contextlib.suppress(psutil.NoSuchProcess):  # ended meanwhile: counted in its parent
                    found[child.pid] = sum(child.cpu_times()[:4])  # user, system, children's user and system
        return found

    def ray_since(self, before: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in self.ray_by_pid().items())


def run_rounds(runs: dict, urls: list[str], meter: CpuMeter, n_users: int, repeats: int) -> dict:
    """Each condition ``repeats`` times, in turn: seconds, users per server and CPU seconds summed per condition."""
    rows = {name: {"seconds": [], "users_per_server": [0, 0], "server_cpu_s": 0.0, "driver_cpu_s": 0.0,
                   "ray_cpu_s": 0.0} for name in runs}
    for round_ in range(repeats):
        for number, (name, run) in enumerate(runs.items()):
            began, cpu_began, driver_began, ray_began = (time.perf_counter(), meter.servers(), time.process_time(),
                                                         meter.ray_by_pid())
            summary = run(f"r{round_}c{number}u")
            seconds = time.perf_counter() - began
            rows[name]["server_cpu_s"] += meter.servers() - cpu_began
            rows[name]["driver_cpu_s"] += time.process_time() - driver_began
            rows[name]["ray_cpu_s"] += meter.ray_since(ray_began)
            assert summary.done == n_users and summary.failed == 0, summary.to_dict()
            per_server = getattr(summary, "servers", {urls[0]: summary.done})
            rows[name]["seconds"].append(round(seconds, 2))
            rows[name]["users_per_server"] = [a + per_server.get(url, 0)
                                              for a, url in zip(rows[name]["users_per_server"], urls, strict=True)]
            log.info("round %d, %s: %.1f s", round_ + 1, name, seconds)
    for row in rows.values():
        row["users_per_s"] = round(n_users * repeats / sum(row["seconds"]), 3)
        # CPU the servers used per user, and how many cores they kept busy on average.
        row["server_cpu_s_per_user"] = round(row["server_cpu_s"] / (n_users * repeats), 3)
        row["server_cores_busy"] = round(row.pop("server_cpu_s") / sum(row["seconds"]), 2)
        row["driver_cpu_s_per_user"] = round(row.pop("driver_cpu_s") / (n_users * repeats), 3)
        row["ray_cpu_s_per_user"] = round(row.pop("ray_cpu_s") / (n_users * repeats), 3)
    return rows


def benchmark(n_users: int, steps: int, size: int, concurrency: int, repeats: int, work: Path) -> dict:
    ray = import_ray()
    ensure_tiny_checkpoint()
    servers = []
    for name in ("a", "b"):
        install_default_models(work / name)
        servers.append(EmbeddedComfyUI(base_dir=work / name))
    try:
        for server in servers:
            server.start(timeout=180)
        urls = [server.url for server in servers]
        began = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
                 object_store_memory=100 * 1024 * 1024)
        ray_start_s = time.perf_counter() - began
        for number, url in enumerate(urls):  # load the checkpoint on each server
            queue_users(ComfyClient(url), graph(steps, size, "warmup"), None, [f"warmup{number}"],
                        work / f"warmup{number}.jsonl", substitutions={"2.text": "a portrait of {user_id}"})
        load_before = [round(x, 2) for x in os.getloadavg()]
        runs = conditions(urls, n_users, steps, size, concurrency, work)
        rows = run_rounds(runs, urls, CpuMeter(servers), n_users, repeats)
        ray.shutdown()
    finally:
        for server in servers:
            server.stop()
    return {
        "users": n_users, "steps": steps, "size": size, "concurrency_per_server": concurrency,
        "cpu_cores": os.cpu_count(), "server_threads": int(os.environ.get("PMG_COMFY_THREADS", "1")),
        "repeats": repeats, "ray_version": ray.__version__, "ray_start_s": round(ray_start_s, 2), "conditions": rows,
        "load_average_before": load_before,
        "ratio_two_over_one": round(rows["two servers, Ray"]["users_per_s"] / rows["one server, Ray"]["users_per_s"], 2),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=16, help="users per condition")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=2, help="prompts in flight per server")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three conditions")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="pmg-bench-dist-") as temporary:
        result = benchmark(args.users, args.steps, args.size, args.concurrency, args.repeats, Path(temporary))
    out = sys.stdout
    out.write(f"{'condition':22} {'seconds per round':>20} {'users/s':>9} {'users on A / B':>15} "
              f"{'server CPU s/user':>18} {'server cores busy':>18} {'driver CPU s/user':>18} {'Ray CPU s/user':>15}\n")
    for name, row in result["conditions"].items():
        split = " / ".join(str(n) for n in row["users_per_server"])
        rounds = ", ".join(f"{s:.1f}" for s in row["seconds"])
        out.write(f"{name:22} {rounds:>20} {row['users_per_s']:9.3f} {split:>15} {row['server_cpu_s_per_user']:18.2f} "
                  f"{row['server_cores_busy']:18.2f} {row['driver_cpu_s_per_user']:18.3f} "
                  f"{row['ray_cpu_s_per_user']:15.3f}\n")
    out.write(f"{'two / one server (Ray)':22} {'':>20} {result['ratio_two_over_one']:9.2f}\n")
    out.write(f"{result['users']} users per round, {result['steps']} steps, {result['size']} px, concurrency "
              f"{result['concurrency_per_server']} per server; Ray start-up (once per run) {result['ray_start_s']:.1f} s; "
              f"load average before {result['load_average_before']}, after {result['load_average_after']}\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
