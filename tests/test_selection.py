"""Candidate scoring and the α trade-off z = α·log d_p + (1 − α)·log d_t."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pmg_core.errors import ImageValueError, InvalidSettingError, PMGError
from pmg_core.metrics import ScoreReport, score_candidates, select_by_tradeoff, tradeoff_plot
from pmg_core.metrics.selection import D_EPSILON


def _smooth(seed: int, count: int, size: int = 64) -> torch.Tensor:
    """Smooth random images (upsampled 8x8 noise): LPIPS and SSIM behave as on real pictures."""
    coarse = torch.rand(count, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic").clamp(0, 1)


# --- select_by_tradeoff -------------------------------------------------------


def test_z_is_the_weighted_log_sum():
    d_p, d_t = [0.2, 0.5, 0.3], [0.6, 0.1, 0.4]
    best, z = select_by_tradeoff(d_p, d_t, alpha=0.25)
    expected = [0.25 * math.log(p) + 0.75 * math.log(t) for p, t in zip(d_p, d_t, strict=True)]
    assert torch.allclose(z, torch.tensor(expected, dtype=torch.float64))
    assert best == max(range(3), key=lambda i: expected[i]) == 0


def test_alpha_moves_the_choice_between_preference_and_target():
    d_p, d_t = [0.9, 0.1, 0.5], [0.1, 0.9, 0.5]
    assert select_by_tradeoff(d_p, d_t, 1.0)[0] == 0  # preference only
    assert select_by_tradeoff(d_p, d_t, 0.0)[0] == 1  # target only
    assert select_by_tradeoff(d_p, d_t, 0.5)[0] == 2  # balanced: log(.25) > log(.09)


def test_non_positive_similarities_are_clamped_not_nan():
    best, z = select_by_tradeoff(torch.tensor([-0.2, 0.0, 0.3]), torch.tensor([0.9, 0.9, 0.2]), alpha=0.5)
    assert torch.isfinite(z).all()
    assert float(z[0]) == pytest.approx(0.5 * math.log(D_EPSILON) + 0.5 * math.log(0.9))
    assert float(z[0]) == float(z[1])  # both clamped to epsilon on the preference side
    assert best == 2


def test_ties_go_to_the_first_candidate():
    assert select_by_tradeoff([0.5, 0.5], [0.5, 0.5], 2 / 3)[0] == 0


@pytest.mark.parametrize(
    ("d_p", "d_t", "alpha", "message"),
    [
        ([0.5], [0.5], 1.5, "alpha"),
        ([0.5], [0.5], float("nan"), "alpha"),
        ([0.5, 0.2], [0.5], 0.5, "same length"),
        ([], [], 0.5, "one value per candidate"),
        ([float("nan")], [0.5], 0.5, "NaN"),
    ],
)
def test_select_rejects_bad_settings(d_p, d_t, alpha, message):
    with pytest.raises(InvalidSettingError, match=message):
        select_by_tradeoff(d_p, d_t, alpha)


# --- score_candidates ---------------------------------------------------------


def test_image_side_proxies_pick_the_candidate_closest_to_history_and_target(lpips_alex):
    history = _smooth(1, 3)
    target = _smooth(2, 1)
    # Candidate 1 is a blend of a history image and the target: close to both.
    candidates = torch.cat([_smooth(3, 1), 0.5 * history[0:1] + 0.5 * target, _smooth(4, 1)])
    steps = []
    report = score_candidates(
        candidates,
        history_images=history,
        target_image=target,
        lpips=lpips_alex,
        progress=lambda done, total: steps.append((done, total)),
    )
    assert isinstance(report, ScoreReport) and len(report.candidates) == 3
    assert report.measure == {
        "d_pref": "1 - mean LPIPS(candidate, history images)",
        "d_target": "1 - LPIPS(candidate, target image)",
    }
    assert report.selected == 1
    for score in report.candidates:
        assert score.d_pref == pytest.approx(1 - score.lpips_history)
        assert score.d_target == pytest.approx(1 - score.lpips_target)
        assert -1 <= score.ssim_history <= 1 and -1 <= score.ssim_target <= 1
        assert score.clip_target is None and score.text_preference is None
    expected_history = float(lpips_alex.pairwise(candidates[1:2], history).mean())
    assert report.candidates[1].lpips_history == pytest.approx(expected_history, abs=1e-6)
    assert steps == [(1, 2), (2, 2)]


def test_report_is_json_ready(lpips_alex):
    report = score_candidates(
        _smooth(5, 2),
        history_images=[_smooth(6, 1)[0], _smooth(7, 1, size=96)],
        target_image=_smooth(8, 1)[0],
        lpips=lpips_alex,
        alpha=0.5,
    )
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["alpha"] == 0.5 and payload["selected"] in (0, 1) and payload["lpips_net"] == "alex"
    assert set(payload["candidates"][0]) >= {
        "index",
        "d_pref",
        "d_target",
        "z",
        "lpips_history",
        "ssim_history",
        "lpips_target",
        "ssim_target",
        "clip_target",
        "clip_preference",
    }
    assert all(isinstance(row["z"], float) for row in payload["candidates"])


def test_clip_defines_both_sides_when_texts_are_given(tiny_clip, lpips_alex):
    """Mechanics only (tiny random CLIP): the values must be the CLIP similarities, whatever they mean."""
    candidates = _smooth(9, 3)
    report = score_candidates(
        candidates,
        history_images=_smooth(10, 2),
        target_text="a movie poster",
        preference_text="dark, gothic, rain",
        clip=tiny_clip,
        lpips=lpips_alex,
    )
    similarity = tiny_clip.image_text(candidates, ["a movie poster", "dark, gothic, rain"])
    assert report.measure["d_pref"].startswith("CLIP") and report.measure["d_target"].startswith("CLIP")
    assert report.measure == {"d_pref": "CLIP (1 + cosine(candidate image, preference_text)) / 2",
                              "d_target": "CLIP (1 + cosine(candidate image, target_text)) / 2"}
    for i, score in enumerate(report.candidates):
        assert score.clip_target == pytest.approx(float(similarity[i, 0]), abs=1e-5)  # raw cosines reported
        assert score.clip_preference == pytest.approx(float(similarity[i, 1]), abs=1e-5)
        assert score.d_target == pytest.approx((1 + float(similarity[i, 0])) / 2, abs=1e-5)
        assert score.d_pref == pytest.approx((1 + float(similarity[i, 1])) / 2, abs=1e-5)
        assert score.lpips_history is not None  # image metrics are still reported
    closeness = (1 + similarity) / 2
    assert report.selected == select_by_tradeoff(closeness[:, 1], closeness[:, 0], 2 / 3)[0]


class _FixedCLIP:
    """Stands in for a CLIPScorer whose image–text cosines are chosen by the test."""

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table

    def image_text(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        assert images.shape[0] == self.table.shape[0] and len(texts) == self.table.shape[1]
        return self.table


def test_negative_clip_cosines_still_rank_the_candidates():
    """Cosines <= 0 (common with CLIP, the rule with a random one) map to (1 + cos) / 2 > 0: distinct z, and the
    candidate closest on both sides wins, instead of every z being clamped to one value."""
    # columns: target text, preference text
    cosines = torch.tensor([[-0.5, -0.3], [-0.2, -0.1], [-0.8, -0.6]])
    report = score_candidates(_smooth(20, 3), target_text="a poster", preference_text="rain, neon",
                              clip=_FixedCLIP(cosines), alpha=2 / 3)
    z = [score.z for score in report.candidates]
    assert len(set(z)) == 3 and all(math.isfinite(value) for value in z)
    expected = [2 / 3 * math.log((1 + p) / 2) + 1 / 3 * math.log((1 + t) / 2) for t, p in cosines.tolist()]
    assert z == pytest.approx(expected)
    assert report.selected == 1
    assert [score.clip_target for score in report.candidates] == pytest.approx([-0.5, -0.2, -0.8])


@pytest.mark.real_model
def test_captions_with_minilm_when_there_is_no_clip_and_no_target_image(minilm, lpips_alex):
    candidates = _smooth(11, 3)
    report = score_candidates(
        candidates,
        history_images=_smooth(12, 2),
        target_text="a poster for a space adventure film",
        candidate_captions=["a bowl of soup", "spaceships battle above a planet, film poster", "a sleeping cat"],
        text_similarity=minilm,
        lpips=lpips_alex,
    )
    assert report.measure["d_target"].startswith("MiniLM")
    assert report.measure["d_pref"].startswith("1 - mean LPIPS")
    best_target = max(report.candidates, key=lambda score: score.text_target)
    assert best_target.index == 1


def test_missing_side_names_what_to_supply():
    with pytest.raises(PMGError, match="target side.*target_image"):
        score_candidates(_smooth(13, 2), history_images=_smooth(14, 1))
    with pytest.raises(PMGError, match="preference side.*history_images"):
        score_candidates(_smooth(13, 2), target_image=_smooth(14, 1))


def test_bad_inputs(lpips_alex):
    candidates = _smooth(15, 2)
    with pytest.raises(ImageValueError, match="empty list"):
        score_candidates(candidates, history_images=[], target_image=_smooth(16, 1), lpips=lpips_alex)
    with pytest.raises(ImageValueError, match="one image"):
        score_candidates(candidates, history_images=_smooth(16, 1), target_image=_smooth(16, 2), lpips=lpips_alex)
    with pytest.raises(ImageValueError, match="NaN"):
        score_candidates(
            torch.full((1, 3, 64, 64), float("nan")), history_images=_smooth(16, 1), target_image=_smooth(16, 1)
        )
    with pytest.raises(ImageValueError, match=r"history_images\[0\] has 1 channels"):
        score_candidates(
            candidates, history_images=[torch.rand(1, 1, 64, 64)], target_image=_smooth(16, 1), lpips=lpips_alex
        )
    with pytest.raises(InvalidSettingError, match="one string per candidate"):
        score_candidates(candidates, target_text="x", preference_text="y", candidate_captions=["only one"])


def test_tradeoff_plot_highlights_the_selected_candidate(lpips_alex):
    report = score_candidates(
        _smooth(17, 4), history_images=_smooth(18, 2), target_image=_smooth(19, 1), lpips=lpips_alex
    )
    picture = tradeoff_plot(report)
    assert picture.size == (640, 480) and picture.mode == "RGB"
    pixels = torch.tensor(list(picture.getdata()))
    red = ((pixels[:, 0] > 200) & (pixels[:, 1] < 80) & (pixels[:, 2] < 80)).sum()
    blue = ((pixels[:, 2] > 180) & (pixels[:, 0] < 90)).sum()
    assert red > 50 and blue > 50  # the selected point (red) and the other three (blue)


def test_the_measures_are_injected_and_a_missing_one_is_named():
    """score_candidates builds no network: images without an LPIPS, captions without a text model, are refused."""
    with pytest.raises(InvalidSettingError, match=r"no LPIPS network: pass lpips=LPIPS\('alex'\)"):
        score_candidates(_smooth(21, 2), history_images=_smooth(22, 1), target_image=_smooth(23, 1))
    with pytest.raises(InvalidSettingError, match=r"no text model was given: pass text_similarity=TextSimilarity\(\)"):
        score_candidates(_smooth(21, 2), target_text="a poster", preference_text="rain",
                         candidate_captions=["a poster", "rain"])
