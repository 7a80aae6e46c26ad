"""PMGScorer on random candidate images with the real LPIPS AlexNet (the selection mechanics, files and UI)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from PIL import Image

from fixtures_nodes import make_bundle


@pytest.fixture(scope="module")
def scorer(pmg_pack):
    return pmg_pack.nodes["PMGScorer"]


def _images(count: int, seed: int, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, size, size, 3, generator=generator)


def test_selects_by_the_tradeoff_and_saves_image_and_report(scorer, pmg_pack, comfy_base):
    history = _images(2, seed=1, size=96)
    target = _images(1, seed=2)
    # candidate 1 is the target itself: with alpha 0 (accuracy only) it must win
    candidates = torch.cat([_images(1, seed=3), target, _images(1, seed=4)])
    bundle = make_bundle(pmg_pack)
    output = scorer.execute(
        images=candidates, history_images=history, target_image=target, preference=bundle,
        alphas=(0.3, 0.5, 0.7), alpha=0.0, lpips_net="alex", filename_prefix="pmg/test_score",
    )
    selected, plot, scores_json = output.args
    assert torch.equal(selected, candidates[1:2])
    assert plot.ndim == 4 and plot.shape[0] == 1 and plot.shape[-1] == 3
    record = json.loads(scores_json)
    assert record["selected"] == 1 and record["selected_alpha"] == 0.5
    assert record["candidate_alphas"] == [0.3, 0.5, 0.7]
    assert record["user_id"] == "ada"
    assert record["candidates"][1]["lpips_target"] == pytest.approx(0.0, abs=1e-6)
    assert all(c["lpips_history"] is not None and c["ssim_history"] is not None for c in record["candidates"])

    ui = output.ui
    assert ui["pmg_scores"] == [record]
    image_entry = ui["images"][0]
    assert image_entry == record["selected_image"]
    assert image_entry["type"] == "output" and image_entry["subfolder"] == "pmg"
    png = comfy_base.output / "pmg" / image_entry["filename"]
    report = comfy_base.output / "pmg" / record["report_file"]["filename"]
    assert png.is_file() and report.is_file()
    assert json.loads(report.read_text())["selected"] == 1
    assert png.stem == report.stem  # image and report share one counter


def test_alpha_one_prefers_the_history_and_counters_advance(scorer, pmg_pack, comfy_base):
    history = _images(1, seed=5)
    target = _images(1, seed=6)
    candidates = torch.cat([target, history])
    first = scorer.execute(images=candidates, history_images=history, target_image=target,
                           alphas=(0.2, 0.8), alpha=1.0, lpips_net="alex", filename_prefix="pmg/advance")
    second = scorer.execute(images=candidates, history_images=history, target_image=target,
                            alphas=(0.2, 0.8), alpha=1.0, lpips_net="alex", filename_prefix="pmg/advance")
    assert json.loads(first.args[2])["selected"] == 1
    assert first.ui["images"][0]["filename"] != second.ui["images"][0]["filename"]
    assert json.loads(first.args[2])["user_id"] is None  # no preference connected


def test_more_candidates_than_alphas_cycle_like_the_sampler():
    from pmg_core import scoring

    assert scoring.candidate_alphas([0.3, 0.7], 5) == [0.3, 0.7, 0.3, 0.7, 0.3]
    assert scoring.candidate_alphas([0.3, 0.5, 0.7], 2) == [0.3, 0.5]


def test_no_way_to_measure_is_a_clear_error(scorer, pmg_pack):
    history_nodes = __import__("comfyui_pmg.nodes.history_nodes", fromlist=["x"])
    with pytest.raises(pmg_pack.errors.InvalidSettingError, match="target_image"):
        scorer.execute(images=_images(2, 7), history_images=_images(1, 8), alphas=(0.5,), alpha=0.5,
                       lpips_net="alex", filename_prefix="pmg/err")
    with pytest.raises(pmg_pack.errors.InvalidSettingError, match="no images"):
        scorer.execute(images=_images(2, 7), history_images=history_nodes.placeholder_image(),
                       target_image=_images(1, 9), alphas=(0.5,), alpha=0.5, lpips_net="alex",
                       filename_prefix="pmg/err")
    with pytest.raises(pmg_pack.errors.ImageValueError):
        scorer.execute(images=torch.rand(2, 4, 64, 64), history_images=_images(1, 8), target_image=_images(1, 9),
                       alphas=(0.5,), alpha=0.5, lpips_net="alex", filename_prefix="pmg/err")


def test_a_clip_folder_in_models_pmg_measures_texts(scorer, pmg_pack, comfy_base):
    """With a (tiny random) CLIP folder both sides are CLIP text similarities; no target image needed."""
    from pmg_tools.tiny_models import clip as tiny_clip

    tiny_clip.save_tiny_clip(comfy_base.models / "pmg" / "pmg-tiny-clip")
    options = [s for s in scorer.GET_SCHEMA().inputs if s.id == "clip_model"][0].options
    assert options == ["none", "pmg-tiny-clip"]
    history_nodes = __import__("comfyui_pmg.nodes.history_nodes", fromlist=["x"])
    output = scorer.execute(images=_images(3, 10), history_images=history_nodes.placeholder_image(),
                            preference=make_bundle(pmg_pack), alphas=(0.3, 0.5, 0.7), alpha=0.67,
                            lpips_net="alex", filename_prefix="pmg/clip", clip_model="pmg-tiny-clip")
    record = json.loads(output.args[2])
    assert record["measure"]["d_pref"].startswith("CLIP") and record["measure"]["d_target"].startswith("CLIP")
    assert all(c["clip_target"] is not None for c in record["candidates"])


def _sticker_bundle(pmg_pack, comfy_base, target_path):
    """A sticker user whose target item has an image (as the sticker set's users have), history images in input/."""
    history_module = pmg_pack.core.history
    folder = comfy_base.input / "pmg_test_target"
    folder.mkdir(exist_ok=True)
    liked = folder / "liked.png"
    Image.fromarray((_images(1, seed=12)[0].numpy() * 255).astype("uint8")).save(liked)
    history = history_module.UserHistory(
        user_id="sticker_ada", scene="sticker",
        items=(history_module.Item(item_id="e1", title="grinning face", image_path=liked),),
        target=history_module.Item(item_id="e2", title="cat face", image_path=target_path),
    )
    return make_bundle(pmg_pack, history=history, user_id="sticker_ada", scene="sticker")


def test_the_history_target_image_is_used_when_no_target_image_is_wired(scorer, pmg_pack, comfy_base, caplog):
    """No target_image and no CLIP: the sticker target's own image (inside input/) measures accuracy."""
    target_pixels = (_images(1, seed=13)[0].numpy() * 255).astype("uint8")
    target_path = comfy_base.input / "pmg_test_target" / "target.png"
    target_path.parent.mkdir(exist_ok=True)
    Image.fromarray(target_pixels).save(target_path)
    target = torch.from_numpy(target_pixels).float().div(255).unsqueeze(0)  # the PNG's exact pixels
    candidates = torch.cat([_images(1, seed=14), target, _images(1, seed=15)])
    with caplog.at_level(logging.INFO):
        output = scorer.execute(images=candidates, history_images=_images(1, seed=12),
                                preference=_sticker_bundle(pmg_pack, comfy_base, target_path),
                                alphas=(0.3, 0.5, 0.7), alpha=0.0, lpips_net="alex", filename_prefix="pmg/hist_target")
    record = json.loads(output.args[2])
    assert all(c["lpips_target"] is not None and c["ssim_target"] is not None for c in record["candidates"])
    assert record["candidates"][1]["lpips_target"] == pytest.approx(0.0, abs=1e-6)
    assert record["selected"] == 1  # alpha 0: accuracy only, and candidate 1 is the target itself
    assert record["measure"]["d_target"] == "1 - LPIPS(candidate, target image)"
    assert record["target_image"] == "history target item: pmg_test_target/target.png"
    assert "target item's image pmg_test_target/target.png" in caplog.text


def test_a_history_target_image_outside_the_input_folder_is_refused(scorer, pmg_pack, comfy_base, tmp_path):
    outside = tmp_path / "secret.png"
    Image.fromarray((_images(1, seed=16)[0].numpy() * 255).astype("uint8")).save(outside)
    with pytest.raises(pmg_pack.errors.UnsafePathError, match="outside the allowed folder"):
        scorer.execute(images=_images(2, seed=17), history_images=_images(1, seed=12),
                       preference=_sticker_bundle(pmg_pack, comfy_base, outside),
                       alphas=(0.5,), alpha=0.5, lpips_net="alex", filename_prefix="pmg/outside")


@pytest.mark.real_model
def test_a_movie_user_without_clip_is_scored_from_the_prompts_and_the_log_names_the_candidates_alpha(
        scorer, pmg_pack, caplog):
    """The shipped movie workflow's case: no CLIP, no target image, no history images (MovieLens has no posters)."""
    history_nodes = __import__("comfyui_pmg.nodes.history_nodes", fromlist=["x"])
    with caplog.at_level(logging.INFO):
        output = scorer.execute(images=_images(3, 18), history_images=history_nodes.placeholder_image(),
                                preference=make_bundle(pmg_pack), alphas=(0.33, 0.5, 0.67), alpha=0.67,
                                lpips_net="alex", filename_prefix="pmg/movie_no_clip", clip_model="none")
    record = json.loads(output.args[2])
    assert record["measure"]["d_pref"].endswith("the candidate's prompt, not its image")
    assert record["measure"]["d_target"].endswith("the candidate's prompt, not its image")
    assert [c["prompt_target"] > 0 for c in record["candidates"]] == [True] * 3
    selected_alpha = record["candidate_alphas"][record["selected"]]
    assert f"generated with alpha={selected_alpha:.2f} (trade-off weight 0.67" in caplog.text
    assert "no history image and no CLIP" in caplog.text and "no target image and no CLIP" in caplog.text


def test_validation_checks_the_files_and_the_graph_before_anything_runs(scorer, pmg_pack, comfy_base):
    """What ComfyUI 0.3.75 passes to validate_inputs: linked inputs as None, unconnected ones left out."""
    assert scorer.validate_inputs(lpips_net="alex", clip_model="none", preference=None) is True
    assert scorer.validate_inputs(lpips_net="vgg", clip_model="none", target_image=None) is True
    missing = scorer.validate_inputs(lpips_net="alex", clip_model="my-clip", preference=None)
    assert "CLIP folder 'my-clip' was not found" in missing and str(comfy_base.models / "pmg") in missing
    assert "not one of alex, vgg" in scorer.validate_inputs(lpips_net="squeeze", clip_model="none", preference=None)
    unconnected = scorer.validate_inputs(lpips_net="alex", clip_model="none")
    assert "connect its target_image input, or its preference input" in unconnected
