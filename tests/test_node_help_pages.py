"""Every PMG node has a help page where the front end's node help panel reads it, in step with its schema.

Front end 1.32.9 (the pinned comfyui-frontend-package) asks a custom node's page at
``/extensions/<pack folder>/docs/<node id>.md`` (after ``.../<node id>/<locale>.md``); ComfyUI serves
the pack's ``WEB_DIRECTORY`` (``web/``) there. tests/test_browser.py opens them in the real panel.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "web" / "docs"


def test_the_help_pages_live_in_the_web_directory_the_pack_exports(pmg_pack):
    assert (REPO / pmg_pack.module.WEB_DIRECTORY / "docs").resolve() == DOCS.resolve()


def test_every_node_has_a_page_naming_each_input_and_output(pmg_pack):
    pages = {path.stem for path in DOCS.glob("*.md")}
    assert set(pmg_pack.nodes) <= pages, f"nodes without a help page: {sorted(set(pmg_pack.nodes) - pages)}"
    assert pages <= set(pmg_pack.nodes), f"help pages of no node: {sorted(pages - set(pmg_pack.nodes))}"
    for node_id, cls in pmg_pack.nodes.items():
        schema = cls.GET_SCHEMA()
        text = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
        assert text.startswith(f"# {schema.display_name}\n"), node_id
        assert f"node id `{node_id}`" in text
        named = set(re.findall(r"^\| `([^`]+)`", text, re.M))
        inputs = {item.id for item in schema.inputs}
        outputs = {item.display_name or item.id for item in schema.outputs}
        assert inputs | outputs == named, f"{node_id}: page and schema differ: {sorted((inputs | outputs) ^ named)}"


@pytest.mark.comfy_server
def test_comfyui_serves_the_pages_where_the_front_end_asks(comfy_server):
    import requests

    info = comfy_server.client.object_info("PMGScorer")["PMGScorer"]
    pack = info["python_module"].split(".")[1]  # custom_nodes.<pack folder>, as the front end reads it
    answer = requests.get(f"{comfy_server.url}/extensions/{pack}/docs/PMGScorer.md", timeout=30)
    assert answer.status_code == 200
    assert answer.text == (DOCS / "PMGScorer.md").read_text(encoding="utf-8")
