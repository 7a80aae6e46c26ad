"""``pmg demo`` against the session ComfyUI (its ``--url`` path): the results folder a user looks at.

By default the demo shows only real images: sticker users on the trained sticker generator,
movie users as keywords and prompts (no checkpoint given). With ``--checkpoint`` it draws
posters; the test gives it the offline tiny checkpoint (random weights, so those are noise)
to check that path's files, and that the sheet and summary say what the images are.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pmg_tools.contact_sheet import SheetRow, contact_sheet
from pmg_tools.demo import (
    NO_POSTERS,
    DemoOptions,
    DemoSettings,
    apply_settings,
    keywords_graph,
    load_api_workflow,
    run_demo,
    settings_overrides,
    split_users,
)
from pmg_core.errors import InvalidSettingError


def test_settings_reach_the_nodes_as_set_overrides_by_class_and_through_the_alphas_node():
    workflow = load_api_workflow("pmg_movie_poster")
    real = DemoSettings(checkpoint="real.safetensors", alphas="0.2, 0.8", seed=7).resolved()
    # A real checkpoint runs with the shared workflow's own steps and size.
    assert settings_overrides(workflow, real) == {"1.ckpt_name": "real.safetensors", "6.value": "0.2, 0.8",
                                                  "8.width": 512, "8.height": 512, "9.seed": 7, "9.steps": 25}
    graph = apply_settings(workflow, real)
    by_class = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert by_class["PrimitiveString"]["value"] == "0.2, 0.8"  # feeds both PMG Conditioning and PMG Scorer
    assert workflow["1"]["inputs"]["ckpt_name"] == "v1-5-pruned-emaonly.safetensors"  # the file is not edited
    assert DemoSettings(checkpoint="x").resolved("pmg_movie_poster_sdxl").size == 1024
    tiny = DemoSettings().resolved()
    assert (tiny.checkpoint, tiny.size, tiny.steps) == ("pmg-tiny-sd15.safetensors", 64, 4)
    assert "1.ckpt_name" not in settings_overrides(workflow, DemoSettings(checkpoint=None).resolved())
    assert split_users(5) == (3, 2) and split_users(1) == (1, 0)
    with pytest.raises(InvalidSettingError):
        split_users(0)


def test_without_a_checkpoint_the_movie_graph_is_only_history_llm_and_keywords():
    graph = keywords_graph(load_api_workflow("pmg_movie_poster"))
    assert sorted(node["class_type"] for node in graph.values()) == [
        "PMGLLMLoader", "PMGPreferenceExtractor", "PMGUserHistoryLoader"]


def test_a_row_without_posters_says_why_where_the_posters_would_be():
    history = ["Toy Story", "Heat"]
    plain = contact_sheet([SheetRow("1", "movie", history=history, keywords=["heists"])])
    told = contact_sheet([SheetRow("1", "movie", history=history, keywords=["heists"], placeholder=NO_POSTERS)])
    assert told.width > plain.width  # room for the note where three candidates would be
    assert "--checkpoint" in NO_POSTERS


@pytest.mark.comfy_server
def test_demo_on_a_running_server_shows_stickers_and_movie_keywords_but_no_noise(comfy_server, tmp_path):
    """No checkpoint given: the sticker user gets real stickers, the movie user keywords and a prompt, no images."""
    out = tmp_path / "results"
    result = run_demo(DemoOptions(url=comfy_server.url, out=out, movie_users=["1"], sticker_users=["sticker_user_000"]))
    assert result.users_ok == 2 and result.users_failed == []

    scores = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    keywords = [json.loads(line) for line in (out / "keywords.jsonl").read_text().splitlines()]
    assert [s["user_id"] for s in scores] == [k["user_id"] for k in keywords] == ["1", "sticker_user_000"]
    assert all(k["preference_keywords"] and k["target_text"] for k in keywords)
    assert scores[0]["images"] == [] and scores[0]["scores"] is None  # no checkpoint: no posters at all
    assert not (out / "images" / "1").exists()
    stickers = sorted(p.name for p in (out / "images" / "sticker_user_000").glob("*.png"))
    assert len([f for f in stickers if "_candidates" in f]) == 3 and any("_selected" in f for f in stickers)

    sheet = Image.open(out / "contact_sheet.png")
    assert sheet.width > 800 and sheet.height > 2 * 96
    summary = (out / "summary.md").read_text()
    assert "keywords and prompts only" in summary and "--checkpoint" in summary and "--url" in summary
    assert "RANDOM" not in summary and "Wall time" in summary


@pytest.mark.comfy_server
def test_demo_with_a_checkpoint_draws_the_posters_and_labels_random_weights(comfy_server, tmp_path):
    out = tmp_path / "results"
    options = DemoOptions(url=comfy_server.url, out=out, movie_users=["1"], sticker_users=[],
                          settings=DemoSettings(checkpoint="pmg-tiny-sd15.safetensors", steps=2))
    result = run_demo(options)
    assert result.users_ok == 1
    files = sorted(p.name for p in (out / "images" / "1").glob("*.png"))
    assert len([f for f in files if "_candidates" in f]) == 3 and any("_selected" in f for f in files)
    summary = (out / "summary.md").read_text()
    assert "RANDOM weights" in summary and "| steps, size | 2, 64×64 |" in summary


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
