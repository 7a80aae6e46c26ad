"""The pack passes what `comfy node validate` checks, without installing comfy-cli.

comfy-cli 1.23.0 (``comfy_cli/command/custom_nodes/command.py::validate_node_for_publishing``)
parses ``pyproject.toml``, requires ``project.version``, and runs
``ruff check . --select S102,S307,E702`` (exec, eval, two statements on one line).
comfy-cli itself is not a test pin: it pulls telemetry clients (mixpanel, posthog), uv,
cookiecutter and ffmpeg. These tests run the same lint with the pinned ruff, and check
the [project] / [tool.comfy] fields against docs.comfy.org/registry/specifications.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*$")  # no leading/double special characters


def test_registry_security_lint_is_clean():
    """The exact lint `comfy node validate` runs: no exec, no eval, no `a; b` lines."""
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", ".", "-q", "--select", "S102,S307,E702",
         "--extend-exclude", ".cache,comfy_base,results"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_project_fields_meet_the_registry_specification():
    project = PYPROJECT["project"]
    assert NAME.match(project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert (REPO / project["license"]["file"]).is_file()
    assert project["description"].strip()
    for label, url in project.get("urls", {}).items():  # optional; when present, a real https address
        parsed = urlparse(url)
        assert parsed.scheme == "https" and parsed.netloc and not parsed.username, (label, url)


def test_tool_comfy_names_a_publisher_and_a_real_icon():
    comfy = PYPROJECT["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"])
    assert comfy["DisplayName"].strip()
    icon = comfy["Icon"]
    assert icon
    if urlparse(icon).scheme:  # once published: the raw https URL of this repository's own file
        assert urlparse(icon).scheme == "https" and icon.endswith("/docs/icon.png"), icon
        icon = "docs/icon.png"
    path = REPO / icon
    assert path.is_file(), f"{icon} is missing; run scripts/make_icon.py"
    with Image.open(path) as image:
        assert image.format in {"PNG", "JPEG", "GIF"}
        assert image.width <= 800 and image.height <= 400
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colours is None or len(colours) > 8, "the icon is a blank image"


def test_the_icon_is_the_one_the_script_draws(tmp_path):
    out = tmp_path / "icon.png"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_icon.py"), "--out", str(out)], check=True,
                   capture_output=True, timeout=120)
    with Image.open(out) as drawn, Image.open(REPO / "docs" / "icon.png") as shipped:
        assert drawn.size == shipped.size and drawn.convert("RGB").tobytes() == shipped.convert("RGB").tobytes()
