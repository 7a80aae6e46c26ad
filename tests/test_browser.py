"""The real ComfyUI front end in headless Chromium, against the session's ComfyUI server.

One Chromium for the whole module: ``tests/browser/ui_checks.mjs`` (playwright-core driving
Debian's Chromium) opens the page once, runs every check in order and writes what it saw as
JSON; each test below asserts on its part. The checks: the first-visit template browser
lists the pack's workflows with their thumbnails; each UI workflow opens and exports its API
copy: the sticker workflows with no dialog, the movie workflows with ComfyUI's missing-model
dialog offering the checkpoint they ship for (the test server has only the tiny one); the
sticker workflow as shipped runs from the Run button and its images appear; PMG Preference Extractor shows its
keywords on the node; the history loader's upload button stores and selects a good file and
shows the loader's error for a bad one; a file dropped on the node is uploaded too.

Needs Chromium (``/usr/bin/chromium`` or ``$CHROMIUM``), Node.js 20+ and
``tests/browser/node_modules`` (``scripts/bootstrap_browser.sh`` installs them when it can):
missing ones FAIL these tests with what to install; they are never skipped.
``PMG_SCREENSHOTS=1`` rewrites ``docs/screenshots/*.png`` from this run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from pmg_core.errors import PMGError
from pmg_core.loaders import load_histories

pytestmark = pytest.mark.comfy_server
REPO = Path(__file__).resolve().parents[1]
BROWSER = REPO / "tests" / "browser"
WORKFLOWS = ("pmg_movie_poster", "pmg_movie_poster_sdxl", "pmg_sticker", "pmg_alpha_sweep")
# The checkpoint each movie workflow's loader hints at (properties.models), absent on the test server.
HINTED = {"pmg_movie_poster": "v1-5-pruned-emaonly.safetensors", "pmg_movie_poster_sdxl": "sd_xl_base_1.0.safetensors"}
DATA = REPO / "tests" / "data" / "histories"
BAD_HISTORY = '{"user_id": "u1", "items": [{"item_id": "a", "title": "Alien"}]}\n["not", "an", "object"]\n'
TIMEOUT_S = 300


def missing_tools() -> list[str]:
    """What the browser checks lack, each with how to get it."""
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    missing = []
    if not os.access(chromium, os.X_OK):
        missing.append(f"Chromium at {chromium} (as root on Debian: apt-get install chromium; or set CHROMIUM=)")
    if shutil.which("node") is None:
        missing.append("Node.js 20+ (apt-get install nodejs npm)")
    if not (BROWSER / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append("playwright-core (cd tests/browser && npm ci; or rerun scripts/bootstrap_browser.sh)")
    return missing


def everything(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def ui(request, tmp_path_factory) -> dict:
    """The driver's report (one Chromium run for the module), plus the files it uploaded."""
    missing = missing_tools()
    if missing:  # before the server starts: a machine without a browser fails fast, and says why
        pytest.fail("The browser tests cannot run; install: " + "; ".join(missing), pytrace=False)
    comfy_server = request.getfixturevalue("comfy_server")
    work = tmp_path_factory.mktemp("browser")
    good = work / "browser_chats.json"
    shutil.copyfile(DATA / "chats.json", good)
    bad = work / "broken_history.jsonl"
    bad.write_text(BAD_HISTORY, encoding="utf-8")
    folder = work / "browser_movies"  # a history file with the poster images it names
    shutil.copytree(DATA, folder)
    report_path = work / "report.json"
    input_dir = comfy_server.base_dir / "input"
    before = everything(input_dir)
    command = ["node", str(BROWSER / "ui_checks.mjs"), "--url", comfy_server.url, "--repo", str(REPO),
               "--out", str(report_path), "--good-history", str(good), "--bad-history", str(bad), "--good-folder", str(folder),
               "--failure-shots", str(work)]
    if os.environ.get("PMG_SCREENSHOTS") == "1":
        (REPO / "docs" / "screenshots").mkdir(parents=True, exist_ok=True)
        command += ["--screenshots", str(REPO / "docs" / "screenshots")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO)
    if not report_path.is_file():
        pytest.fail(f"ui_checks.mjs wrote no report (exit {done.returncode}):\n{done.stderr[-3000:]}", pytrace=False)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["_added"] = everything(input_dir) - before
    report["_input"] = input_dir
    report["_good"], report["_bad"], report["_work"] = good, bad, work
    yield report
    # Leave the session's input folder as other tests expect it.
    for name in sorted(report["_added"], key=len, reverse=True):
        path = input_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def part(ui: dict, name: str) -> dict:
    """One check's result; a failed check shows its error and where its screenshot is."""
    result = ui.get(name)
    assert result is not None, f"the driver never reached the {name!r} check; report: {json.dumps(ui, default=str)[:2000]}"
    assert result["ok"], f"{name} check failed:\n{result.get('error')}\n(screenshot: {ui['_work']}/failed_{name}.png)"
    return result


def test_template_browser_lists_the_pack_workflows_with_their_thumbnails(ui):
    result = part(ui, "templates")
    assert result["first_visit"], "the template browser did not open by itself on the first visit"
    for name in WORKFLOWS:
        card = result["cards"][name]
        thumbnail = Image.open(REPO / "workflows" / f"{name}.jpg")
        # A card whose .jpg is missing shows default-template.png instead of the fetched blob.
        assert card["src"].startswith("blob:"), (name, card)
        assert (card["width"], card["height"]) == thumbnail.size, (name, card)
        # ComfyUI 1.32.9 gives a custom pack's card only its file name (README, known issues).
        assert card["title"] == name
    assert "PMGStickerGeneratorLoader" in result["opened"], "clicking the pmg_sticker card did not open it"
    assert result["dialogs_after"] == []


@pytest.mark.parametrize("name", WORKFLOWS)
def test_each_workflow_opens_and_exports_its_api_copy_and_a_missing_checkpoint_is_offered(ui, name):
    opened = part(ui, "open")["workflows"][name]
    assert opened["unknown"] == []
    assert opened["api_equal"], f"the front end's export of {name} differs from workflows/api/{name}.json"
    if name not in HINTED:
        assert opened["dialogs"] == [], f"{name} opened with a dialog (missing nodes or models?): {opened['dialogs']}"
        return
    # The movie workflows name the checkpoint users have; ComfyUI's dialog offers it for download.
    (dialog,) = opened["dialogs"]
    assert "Missing Models" in dialog and "Missing Nodes" not in dialog
    (offered,) = opened["missing_models"]
    assert f"checkpoints / {HINTED[name]}" in offered["text"]
    assert "not allowed" not in offered["text"] and "Only allowed" not in offered["text"], offered


def test_sticker_workflow_runs_from_the_run_button_and_shows_its_images(ui):
    result = part(ui, "run")
    types = [event["type"] for event in result["events"]]
    assert "execution_success" in types and "execution_error" not in types, result["events"]
    saved = next(event["images"] for event in result["events"] if event["type"] == "executed" and event["node"] == "12")
    assert len(saved) == 3  # one candidate per alpha of 0.33, 0.5, 0.67
    shown = result["shown"]
    assert [s["src"].split("filename=")[1].split("&")[0] for s in shown] == [image["filename"] for image in saved]
    assert all((s["width"], s["height"]) == (64, 64) for s in shown)
    shipped = json.loads((REPO / "workflows" / "api" / "pmg_sticker.json").read_text(encoding="utf-8"))
    assert result["steps"] == shipped["9"]["inputs"]["steps"]  # the workflow as a user gets it
    logging.getLogger(__name__).info("sticker workflow from the Run button: %.1f s", result["seconds"])


def test_preference_extractor_shows_its_keywords_on_the_node(ui):
    result = part(ui, "keywords")
    record = result["record"]
    assert record and record["preference_keywords"], result
    assert result["visible"], "the keywords box is not on screen"
    assert f"preference: {', '.join(record['preference_keywords'])}" in result["text"]
    assert f"target: {', '.join(record['target_keywords'])}" in result["text"]
    assert result["text"].startswith(f"user {record['user_id']} (sticker)")


def test_upload_button_stores_and_selects_a_good_file_and_shows_the_loaders_error_for_a_bad_one(ui):
    result = part(ui, "upload")
    good, bad, input_dir = ui["_good"], ui["_bad"], ui["_input"]
    assert result["selected"] == {"value": good.name, "listed": True}
    assert (input_dir / good.name).read_bytes() == good.read_bytes()
    assert any(not t["error"] and f"{good.name}: 2 user(s) (first: mei), chat" in t["text"] for t in result["good_toasts"])
    # The bad file: the loader's own message in an error toast, nothing stored, selection kept.
    with pytest.raises(PMGError) as loader:
        load_histories(bad, image_root=bad.parent)
    expected = str(loader.value).replace(str(bad), str(input_dir.resolve() / bad.name))
    errors = [t["text"] for t in result["bad_toasts"] if t["error"]]
    assert errors and expected in errors[0], (expected, result["bad_toasts"])
    assert bad.name not in ui["_added"] and result["after_bad"] == good.name
    # The folder button stores the folder with its images and selects its first history file.
    assert result["folder"] == "browser_movies/chat.txt"
    assert (input_dir / "browser_movies" / "posters" / "orbit_of_ashes.png").is_file()
    assert "browser_movies/posters/make_posters.py" not in ui["_added"]  # only histories and images
    # A file dropped on the node takes the same way.
    assert result["dropped"] == result["drop_name"] and result["drop_name"] in ui["_added"]


def test_the_pack_extensions_raise_no_errors_in_the_page(ui):
    ours = [e for e in ui["console_errors"] if "comfyui-pmg" in e or "pmg_" in e]
    assert ours == []
    assert ui["timings"]["total"] < 240, ui["timings"]


def test_every_pmg_node_opens_its_own_help_page_in_the_node_help_panel(comfy_server, tmp_path):
    """The front end (1.32.9) reads a custom node's page from /extensions/<pack>/docs/<node id>.md
    (WEB_DIRECTORY/docs): the selection toolbox's info button must show the pack's page, not the description.
    A Chromium of its own (tests/browser/node_help.mjs), so it does not depend on the module's run."""
    missing = missing_tools()
    if missing:
        pytest.fail("The browser tests cannot run; install: " + "; ".join(missing), pytrace=False)
    nodes = sorted(name for name, info in comfy_server.client.object_info().items() if info["category"].startswith("PMG/"))
    assert len(nodes) >= 8
    expect = tmp_path / "expect.json"
    expect.write_text(json.dumps({node: f"node id {node}" for node in nodes}), encoding="utf-8")
    out = tmp_path / "help.json"
    done = subprocess.run(["node", str(BROWSER / "node_help.mjs"), "--url", comfy_server.url, "--out", str(out),
                           "--expect", str(expect)], capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO)
    assert out.is_file(), f"node_help.mjs wrote no report (exit {done.returncode}):\n{done.stderr[-3000:]}"
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report.get("error") is None, report["error"]
    not_shown = {node: entry for node, entry in report["nodes"].items() if not entry["shown"]}
    assert not_shown == {}, json.dumps(not_shown, indent=1)
    assert report["ok"] and set(report["nodes"]) == set(nodes)
