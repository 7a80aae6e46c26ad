"""The embedded ComfyUI never outlives the process that started it, even one killed by SIGKILL.

The server here is a stand-in ``main.py`` (a tiny HTTP server answering ``/system_stats``)
started through the real launcher, :class:`EmbeddedComfyUI`: what is tested is the
launcher's process wiring (``PR_SET_PDEATHSIG``), in a second instead of a 1.4 GB ComfyUI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_MAIN = textwrap.dedent('''
    import http.server
    import sys

    port = int(sys.argv[sys.argv.index("--port") + 1])


    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass


    http.server.HTTPServer(("127.0.0.1", port), Answer).serve_forever()
''')

OWNER = textwrap.dedent('''
    import sys, time
    from pathlib import Path
    from pmg_tools.server import EmbeddedComfyUI
    comfy_dir, base, pid_file = map(Path, sys.argv[1:4])
    server = EmbeddedComfyUI(comfy_dir=comfy_dir, base_dir=base, pack_dir=None)
    server.start(timeout=30)
    pid_file.write_text(str(server.pid))
    time.sleep(600)  # killed by the test long before
''')


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie is dead, only not reaped
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_the_server_dies_when_its_owner_is_killed(tmp_path):
    comfy_dir = tmp_path / "comfy"
    comfy_dir.mkdir()
    (comfy_dir / "main.py").write_text(FAKE_MAIN, encoding="utf-8")
    pid_file = tmp_path / "server.pid"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(comfy_dir), str(tmp_path / "base"), str(pid_file)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    server_pid = None
    try:
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline and owner.poll() is None:
            time.sleep(0.1)
        assert pid_file.exists(), f"the owner did not start the server (exit code {owner.poll()})"
        server_pid = int(pid_file.read_text())
        assert alive(server_pid)
        owner.send_signal(signal.SIGKILL)  # no cleanup code can run in the owner
        owner.wait(timeout=10)
        deadline = time.monotonic() + 5
        while alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(server_pid), "the server outlived its SIGKILLed owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(timeout=10)
        if server_pid is not None and alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)
