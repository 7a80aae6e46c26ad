"""Training examples from histories (real Twemoji sticker users; no model involved)."""

from __future__ import annotations

import dataclasses

import pytest

from pmg_core.errors import MissingImageError, TrainingError
from pmg_core.history import Item, UserHistory
from pmg_core.loaders import load_histories
from pmg_core.training.data import build_examples, split_users
from pmg_core.training.examples import load_training_image


@pytest.fixture(scope="module")
def sticker_users(sticker_set):
    return list(load_histories(sticker_set).values())


def test_examples_from_sticker_users(sticker_users):
    """Real data: one example per user, soft prompt names the history, caption the target, negative is another target."""
    examples = build_examples(sticker_users, seed=0)
    assert [e.user_id for e in examples] == [h.user_id for h in sticker_users]
    targets = {h.user_id: h.target for h in sticker_users}
    for example, history in zip(examples, sticker_users, strict=True):
        assert history.items[0].title in example.soft_prompt_text
        assert example.target_caption.startswith("a cute emoji, sticker, white background, " + history.target.title)
        assert example.target_image == history.target.image_path and example.target_image.is_file()
        assert example.negative_image != example.target_image
        assert example.negative_image in {t.image_path for t in targets.values()}
    assert build_examples(sticker_users, seed=0) == examples
    assert [e.negative_image for e in build_examples(sticker_users, seed=1)] != [e.negative_image for e in examples]


def test_training_image_is_square_rgb_on_white(sticker_users):
    """Real data: a 72 px transparent Twemoji becomes [3, R, R] in [0, 1] with a white surround."""
    image = load_training_image(sticker_users[0].target.image_path, 64)
    assert image.shape == (3, 64, 64)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image[:, 0, 0].min()) > 0.95  # the transparent corner is composited on white


def test_users_without_target_image_are_refused_or_skipped(sticker_users):
    """Users without a target image raise TrainingError naming them; skip_incomplete drops them."""
    no_image = dataclasses.replace(sticker_users[0], target=dataclasses.replace(sticker_users[0].target, image_path=None))
    no_target = dataclasses.replace(sticker_users[1], target=None)
    users = [no_image, no_target, *sticker_users[2:]]
    with pytest.raises(TrainingError, match="sticker_user_000.*sticker_user_001"):
        build_examples(users)
    assert len(build_examples(users, skip_incomplete=True)) == len(sticker_users) - 2


def test_missing_image_and_too_few_targets(sticker_users, tmp_path):
    """A target image path that does not exist -> MissingImageError; one distinct target -> TrainingError."""
    missing_image = dataclasses.replace(sticker_users[0].target, image_path=tmp_path / "x.png")
    gone = dataclasses.replace(sticker_users[0], target=missing_image)
    with pytest.raises(MissingImageError, match="x.png"):
        build_examples([gone, *sticker_users[1:]])
    same = [dataclasses.replace(h, target=sticker_users[0].target) for h in sticker_users[:3]]
    with pytest.raises(TrainingError, match="two users with different target"):
        build_examples(same)


def test_custom_target_keywords_and_split(sticker_users):
    """target_keywords replaces the caption keywords; split_users holds out a seeded subset."""
    examples = build_examples(sticker_users, target_keywords=lambda item: ["waving", "confetti"])
    assert examples[0].target_caption.endswith("waving, confetti")
    train, held = split_users(sticker_users, 2, seed=0)
    assert len(held) == 2 and len(train) == len(sticker_users) - 2
    assert not {h.user_id for h in held} & {h.user_id for h in train}
    assert split_users(sticker_users, 2, seed=0) == (train, held)
    with pytest.raises(TrainingError, match="fewer than two"):
        split_users(sticker_users, len(sticker_users) - 1)
    generic = UserHistory("g", (Item("1", "a"),), target=Item("2", "b"))
    with pytest.raises(TrainingError, match="no target item with an image"):
        build_examples([generic])
