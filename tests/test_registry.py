"""The pack passes `comfy node validate`, and the registry's pyproject rules.

`comfy node validate` (comfy-cli, pinned in requirements/comfy-cli.txt and installed into its own
environment at .comfy-cli by scripts/bootstrap_comfy_cli.sh) parses ``pyproject.toml`` and runs
``ruff check . --select S102,S307,E702`` (exec, eval, two statements on one line). It exits 0 even
when that lint finds something (comfy-cli 1.23.0 only warns), so the tests read what it printed.
The [project] / [tool.comfy] fields are checked against docs.comfy.org/registry/specifications.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import tomllib
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*$")  # no leading/double special characters


COMFY_CLI = REPO / ".comfy-cli" / "bin" / "comfy"
LINT_RULES = ("S102", "S307", "E702")


def comfy_node_validate(folder: Path, home: Path) -> subprocess.CompletedProcess:
    assert COMFY_CLI.is_file(), "comfy-cli is not installed; run scripts/bootstrap_env.sh (it runs bootstrap_comfy_cli.sh)"
    # Its own HOME: comfy-cli writes its settings there; no prompt, no telemetry, no network.
    return subprocess.run(
        [str(COMFY_CLI), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
        check=False, cwd=folder, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )


def test_comfy_node_validate_passes_with_no_lint_finding(tmp_path):
    result = comfy_node_validate(REPO, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "All validation checks passed" in output, output
    assert not [rule for rule in LINT_RULES if rule in output], output


def test_comfy_node_validate_reports_an_eval(tmp_path):
    """The control: the same check on a copy with one eval() names the rule (so a clean run means something)."""
    folder = tmp_path / "pack"
    folder.mkdir()
    for name in ("pyproject.toml", "LICENSE"):
        (folder / name).write_bytes((REPO / name).read_bytes())
    (folder / "bad.py").write_text('value = eval("1 + 1")\n', encoding="utf-8")
    result = comfy_node_validate(folder, tmp_path)
    assert "S307" in result.stdout + result.stderr


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
