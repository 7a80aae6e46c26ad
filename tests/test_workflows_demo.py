"""``pmg demo`` against the session ComfyUI (its ``--url`` path): the results folder a user looks at.

Mechanics only: the checkpoint and the scorer's CLIP have random weights, so the images
are noise; the test checks that every promised file is there and says so.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pmg_tools.demo import (
    DemoOptions,
    DemoSettings,
    apply_settings,
    load_api_workflow,
    run_demo,
    split_users,
)
from pmg_core.errors import InvalidSettingError


def test_settings_reach_the_nodes_by_class_and_through_the_alphas_node():
    graph = apply_settings(load_api_workflow("pmg_movie_poster"),
                           DemoSettings(checkpoint="real.safetensors", alphas="0.2, 0.8", seed=7).resolved())
    by_class = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert by_class["CheckpointLoaderSimple"]["ckpt_name"] == "real.safetensors"
    assert by_class["KSampler"]["steps"] == 20 and by_class["KSampler"]["seed"] == 7  # real checkpoint: 20 steps
    assert by_class["EmptyLatentImage"]["width"] == by_class["EmptyLatentImage"]["height"] == 512
    assert by_class["PrimitiveString"]["value"] == "0.2, 0.8"  # feeds both PMG Conditioning and PMG Scorer
    assert DemoSettings().resolved().size == 64 and DemoSettings().resolved().steps == 4
    assert split_users(5) == (3, 2) and split_users(1) == (1, 0)
    with pytest.raises(InvalidSettingError):
        split_users(0)


@pytest.mark.comfy_server
def test_demo_on_a_running_server_writes_the_results_folder(comfy_server, tmp_path):
    """One movie and one sticker user through --url: images, JSONL files, contact sheet and an honest summary."""
    out = tmp_path / "results"
    result = run_demo(DemoOptions(url=comfy_server.url, out=out, movie_users=["1"], sticker_users=["sticker_user_000"]))
    assert result.users_ok == 2 and result.users_failed == []

    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    keywords = [json.loads(line) for line in (out / "keywords.jsonl").read_text().splitlines()]
    assert [s["user_id"] for s in scores] == [k["user_id"] for k in keywords] == ["1", "sticker_user_000"]
    assert all(k["preference_keywords"] for k in keywords)
    for user in ("1", "sticker_user_000"):
        files = sorted(p.name for p in (out / "images" / user).glob("*.png"))
        assert len([f for f in files if "_candidates" in f]) == 3 and any("_selected" in f for f in files)

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 800 and sheet.height > 2 * 96
    summary = (out / "summary.md").read_text()
    assert "RANDOM weights" in summary and "--checkpoint" in summary and "--url" in summary
    assert "Wall time" in summary


@pytest.mark.comfy_server
def test_demo_refuses_a_checkpoint_the_server_does_not_have(comfy_server, tmp_path):
    options = DemoOptions(url=comfy_server.url, out=tmp_path / "r", movie_users=["1"], sticker_users=[],
                          settings=DemoSettings(checkpoint="missing.safetensors"))
    with pytest.raises(InvalidSettingError, match="missing.safetensors.*models/checkpoints"):
        run_demo(options)


def test_a_downloaded_image_stays_in_the_results_folder(tmp_path):
    """A file name the server reports ("../../x.png") must not write outside the user's image folder."""
    from pmg_tools.demo import _download

    class Server:
        def view(self, filename, subfolder="", type="output"):
            return b"png bytes"

    folder = tmp_path / "results" / "images" / "u1"
    path = _download(Server(), {"filename": "../../escaped.png", "subfolder": "pmg/u1", "type": "output"}, folder)
    assert path == folder / "escaped.png" and path.read_bytes() == b"png bytes"
    assert not (tmp_path / "results" / "escaped.png").exists()
