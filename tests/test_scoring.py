"""pmg_core.scoring: the policy PMG Scorer and `pmg score` share (target choice, measures, each candidate's alpha)."""

from __future__ import annotations

import pytest
import torch

from pmg_core.errors import InvalidSettingError
from pmg_core.history import Item, UserHistory
from pmg_core.scoring import candidate_alphas, choose_target, score_sweep


def _images(count: int, seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _never(path):
    raise AssertionError(f"{path} must not be opened")


def test_the_given_target_wins_over_the_history_target_item():
    history = UserHistory("u", (Item("1", "a"),), scene="sticker", target=Item("2", "b", image_path="t.png"))
    given = _images(2, seed=1)
    image, source = choose_target(given, history, _never)
    assert torch.equal(image, given[:1]) and source == "target_image input"


def test_the_history_target_item_image_is_opened_when_none_is_given():
    history = UserHistory("u", (Item("1", "a"),), scene="sticker", target=Item("2", "b", image_path="t.png"))
    opened = _images(1, seed=2)
    image, source = choose_target(None, history, lambda path: (opened, f"input/{path}"))
    assert image is opened and source == "history target item: input/t.png"
    no_image = UserHistory("u", (Item("1", "a"),), scene="movie", target=Item("2", "b"))
    assert choose_target(None, no_image, _never) == (None, None)
    assert choose_target(None, None, _never) == (None, None)


def test_the_record_gives_each_candidates_alpha(lpips_alex):
    target = _images(1, seed=3)
    candidates = torch.cat([_images(1, seed=4), target, _images(1, seed=5)])
    report, record = score_sweep(candidates, alphas=(0.25, 0.75), history_images=_images(1, seed=6),
                                 target_image=target, target_source="given", user_id="u", alpha=0.0, lpips=lpips_alex)
    assert report.selected == 1 and record["selected"] == 1
    assert record["candidate_alphas"] == [0.25, 0.75, 0.25] and record["selected_alpha"] == 0.75
    assert record["user_id"] == "u" and record["target_image"] == "given"
    _, without = score_sweep(candidates, history_images=_images(1, seed=6), target_image=target, lpips=lpips_alex)
    assert without["candidate_alphas"] is None and without["selected_alpha"] is None


def test_a_side_without_a_measure_names_what_to_connect():
    with pytest.raises(InvalidSettingError, match="target_image"):
        score_sweep(_images(2, seed=7), history_images=_images(1, seed=8), target_text="a cat")  # no CLIP
    with pytest.raises(InvalidSettingError, match="no images"):
        score_sweep(_images(2, seed=7), target_image=_images(1, seed=8), preference_text="cats")
    assert candidate_alphas([0.3, 0.7], 3) == [0.3, 0.7, 0.3]


@pytest.mark.real_model
def test_without_clip_or_target_image_the_target_side_is_the_prompts_minilm_similarity(lpips_alex, caplog):
    """A MovieLens user (no target image) and no CLIP: d_t from the candidate's prompt, said in the log."""
    candidates = _images(3, seed=9)
    with caplog.at_level("INFO", logger="pmg_core"):
        report, record = score_sweep(
            candidates, alphas=(0.2, 0.5, 0.9), history_images=_images(2, seed=10),
            target_text="a poster of a space adventure", preference_text="romance, paris, black and white",
            alpha=0.5, lpips=lpips_alex,
        )
    assert record["measure"]["d_pref"] == "1 - mean LPIPS(candidate, history images)"
    assert "the candidate's prompt, not its image" in record["measure"]["d_target"]
    d_target = [score.d_target for score in report.candidates]
    # The more a candidate's prompt leans to the preference, the further it is from the target text.
    assert d_target[0] > d_target[1] > d_target[2] and d_target[0] < 1.0
    assert "not from its image: there is no target image and no CLIP" in caplog.text
    assert f"generated with alpha={record['selected_alpha']:.2f} (trade-off weight 0.50" in caplog.text


def test_without_clip_and_without_the_texts_the_target_side_still_names_what_to_connect():
    with pytest.raises(InvalidSettingError, match="preference .* together with the alphas"):
        score_sweep(_images(2, seed=7), alphas=(0.3, 0.7), history_images=_images(1, seed=8), target_text="a cat")
