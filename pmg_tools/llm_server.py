"""Run ``transformers serve`` on a local model folder: a real OpenAI-compatible LLM server.

Tests, benchmarks and ``python -m scripts.keyword_quality --served`` start one through
:class:`TransformersServe` (127.0.0.1, a free port, CPU, offline) and end it by its PID.
``requests_logged()`` counts the chat requests the server itself logged, so a benchmark
counts at the server, not in the client.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from pmg_core.atomic import atomic_path
from pmg_core.comfy_client.lifetime import die_with_owner
from pmg_core.errors import ServedLLMError

from .server import free_port, stop_process

log = logging.getLogger(__name__)


def saved_smollm2_folder(cache_dir: Path | None = None) -> Path:
    """The offline SmolLM2 as a Hugging Face folder ``transformers serve`` can read (written once).

    Saved from the loaded model, so the server runs the very weights, tokenizer and chat
    template the local LLM does: the same model, only asked over HTTP.
    """
    from pmg_core.assets import default_cache_dir, smollm2_gguf
    from pmg_core.llm import load_llm

    cache = Path(cache_dir or default_cache_dir())
    folder = cache / "served" / "smollm2"
    if not (folder / "config.json").is_file():
        llm = load_llm(smollm2_gguf(), cache_dir=cache)
        with atomic_path(folder) as tmp:  # a concurrent save that finished first is kept
            llm.model.save_pretrained(tmp, safe_serialization=True)
            llm.tokenizer.save_pretrained(tmp)
        log.info("Saved %s to %s for transformers serve", llm.identity, folder)
    return folder


class TransformersServe:
    """``transformers serve <folder>`` as a child process; use as a context manager.

    The model is pinned (the server serves only ``folder``), and its name on the API is the
    folder's path as given (:attr:`model`).
    """

    def __init__(self, folder: Path | str, port: int | None = None, log_path: Path | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = str(self.folder)
        self.log_path = log_path or Path(tempfile.mkdtemp(prefix="pmg-transformers-serve-")) / "serve.log"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cli = Path(sys.executable).with_name("transformers")
        return [str(cli), "serve", self.model, "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]

    def start(self, timeout: float = 180.0) -> None:
        env = dict(os.environ)
        env.update(OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(self.command(), env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=die_with_owner())
        deadline = time.monotonic() + timeout
        try:
            while not self._healthy():
                if self.process.poll() is not None:
                    raise ServedLLMError(f"transformers serve exited with code {self.process.returncode}; "
                                         f"its log:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise ServedLLMError(f"transformers serve did not answer {self.url}/health within "
                                         f"{timeout:.0f} s; its log:\n{self.log_tail()}")
                time.sleep(0.3)
        except BaseException:
            self.stop()
            raise
        log.info("transformers serve (pid %d) answers at %s", self.process.pid, self.url)

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def requests_logged(self, path: str = "/v1/chat/completions") -> int:
        """How many requests to ``path`` the server has logged (uvicorn's access log)."""
        return self.log_text().count(f'"POST {path} HTTP')

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        """End the server by its PID: SIGTERM, then SIGKILL."""
        process, self.process = self.process, None
        stop_process(process, timeout, "transformers serve")

    def __enter__(self) -> TransformersServe:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
