"""The evaluation harness: statistics, weightings, the methods' shared seeds, reports.

Mechanics on a seeded random generator and an untrained judge (no LLM: the
users' keywords are written by hand); the real figures come from ``pmg eval``
on the shipped generator (docs/EVALUATION.md).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pmg_core.conditioning import EncodedText, build_conditions
from pmg_core.errors import InvalidSettingError
from pmg_core.evaluation import report, stats
from pmg_core.evaluation.responsiveness import frechet_distance
from pmg_core.keywords import Preference


def test_bootstrap_interval_holds_the_mean_and_is_seeded():
    values = np.random.default_rng(3).normal(1.0, 0.5, size=40)
    a, b = stats.bootstrap_mean(values, seed=1), stats.bootstrap_mean(values, seed=1)
    assert a == b and a.low < a.mean < a.high
    assert a.mean == pytest.approx(values.mean())
    wide = stats.bootstrap_mean(values[:8], seed=1)
    assert (wide.high - wide.low) > (a.high - a.low)


def test_relative_change_is_paired_and_signed():
    base = np.linspace(0.5, 0.7, 20)
    assert stats.bootstrap_relative_change(base, base).mean == pytest.approx(0.0)
    lower = stats.bootstrap_relative_change(base * 0.9, base)
    assert lower.mean == pytest.approx(-0.1) and lower.excludes_zero()
    with pytest.raises(ValueError, match="one value per user"):
        stats.bootstrap_relative_change(base[:3], base)


def test_frechet_distance_is_zero_for_the_same_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(6.0, rel=0.05)


class _Encoder:
    """A fake 4-wide text encoder: each text becomes 2 tokens of its length and a constant."""

    width = 4

    def encode(self, texts):
        rows = [torch.tensor([[len(t), 1.0, 0.0, 0.0], [0.0, 0.0, len(t), 1.0]]) for t in texts]
        return EncodedText(torch.stack(rows), None)


def test_interpolate_weighting_moves_from_the_empty_prompt():
    encoder = _Encoder()
    target, empty = encoder.encode(["cat"]).embeddings, encoder.encode([""]).embeddings
    half = build_conditions(encoder, "cat", None, None, alphas=(0.5,), weighting="interpolate").embeddings
    assert torch.allclose(half, target)  # weight 1: the part as encoded
    zero = build_conditions(encoder, "cat", None, None, alphas=(1.0,), weighting="interpolate").embeddings
    assert torch.allclose(zero, empty)  # weight 0: the empty prompt, not a zero vector


def test_repeat_weighting_repeats_parts_by_their_weight():
    encoder = _Encoder()
    even = build_conditions(encoder, "cat", "dog", None, alphas=(0.5,), weighting="repeat").embeddings
    assert even.shape[1] == 2 * 2 + 2 * 2  # two copies of each two-token part
    target_only = build_conditions(encoder, "cat", "dog", None, alphas=(0.0,), weighting="repeat").embeddings
    assert target_only.shape[1] == 4 * 2 and torch.allclose(target_only[0, :2], encoder.encode(["cat"]).embeddings[0])
    with pytest.raises(InvalidSettingError, match="Unknown weighting"):
        build_conditions(encoder, "cat", "dog", None, weighting="loud")


def test_markdown_table_has_a_row_per_method_with_intervals():
    estimate = stats.Estimate(0.5, 0.4, 0.6)
    summary = {"target only": {"lpips_history": estimate}, "keywords": {"lpips_history": estimate,
               "lpips_history_change": stats.Estimate(-0.05, -0.08, -0.02)}}
    table = report.markdown_table(summary)
    assert table.count("\n") == 3
    assert "0.500 [0.400, 0.600]" in table and "-5.0% [-8.0, -2.0]" in table


def test_paired_changes_are_per_user_and_skip_methods_that_did_not_run():
    per_user = {"image prompt": {"lpips_history": [0.45, 0.9], "lpips_target": [0.5, 0.5]},
                "history names": {"lpips_history": [0.5, 1.0], "lpips_target": [0.5, 0.5]}}
    table = report.paired_changes_table(per_user)
    assert table.count("\n") == 2  # header, rule and the one pair whose methods both ran
    assert "| image prompt vs history names | -10.0% [-10.0, -10.0] | +0.0% [+0.0, +0.0] |" in table


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    from pmg_core.evaluation.judge import CategoryJudge
    from pmg_core.evaluation.sticker_eval import (
        EvalSettings,
        StickerEvaluation,
        StickerPipeline,
    )
    from pmg_core.sticker_model.autoencoder import TinyAutoencoder
    from pmg_core.sticker_model.denoiser import UNET_CONFIG, StickerDenoiser
    from pmg_core.sticker_model.text_encoder import MiniLMTextEncoder
    from pmg_core.sticker_model.weights import load_sticker_model, save_sticker_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gen") / "g.safetensors"
    save_sticker_model(path, TinyAutoencoder(16), StickerDenoiser(**UNET_CONFIG), {"image_size": 64})
    pipeline = StickerPipeline(load_sticker_model(path), MiniLMTextEncoder())
    settings = EvalSettings(steps=2, images_per_user=2, sweep=(0.3, 0.7))
    return StickerEvaluation(pipeline, CategoryJudge().eval(), settings)


def _case(user_id: str):
    from pmg_core.evaluation.cases import item_image
    from pmg_core.evaluation.sticker_eval import UserCase
    from pmg_core.loaders.stickers import build_sticker_histories

    history = build_sticker_histories(n_users=1, seed=5)[0]
    preference = Preference(
        user_id=user_id, scene="sticker", history_text="", preference_keywords=("cat", "smile"),
        target_keywords=("happy",), target_text="a cute emoji, sticker, white background, cat face, happy",
        preference_text="cat, smile", soft_prompt_text="", negative_prompt="",
    )
    return UserCase(history, preference, torch.stack([item_image(i) for i in history.items]),
                    item_image(history.target).unsqueeze(0), target_category=2)


def test_methods_share_each_users_noise(evaluation):
    case = _case("u1")
    condition = evaluation.condition(case, "target only")
    assert torch.equal(evaluation.images(case, condition), evaluation.images(case, condition))
    keywords = evaluation.condition(case, "keywords")
    assert keywords.shape[1] > condition.shape[1]


def test_run_measures_every_method_and_the_sweep(evaluation):
    from pmg_core.evaluation.sticker_eval import summarise

    cases = [_case("u1"), _case("u2")]
    results = evaluation.run(cases, ["target only", "keywords", "PMG sweep + z"])
    assert set(results) == {"target only", "keywords", "keywords a=0.3", "keywords a=0.7", "PMG sweep + z"}
    for result in results.values():
        assert len(result.metrics["lpips_history"]) == 2
        assert all(0 <= v <= 1 for v in result.metrics["judge_target"])
    summary = summarise(results)
    assert "lpips_history_change" in summary["keywords"] and "lpips_history_change" not in summary["target only"]
    image = report.tradeoff_curve(summary)
    assert image.size == (640, 460)


def test_history_names_baseline_uses_the_items_names_and_is_compared_with(evaluation):
    """The no-LLM baseline conditions on the history's own names (not the LLM's keywords); every other
    method gets a paired change against it beside the one against target only."""
    from pmg_core.conditioning import build_conditions
    from pmg_core.evaluation.sticker_eval import history_names_text, summarise

    case = _case("u1")
    names = history_names_text(case.history)
    assert names.split(", ")[0] == case.history.items[0].title and "cat, smile" not in names
    expected = build_conditions(evaluation.pipeline.encoder, case.preference.target_text, names, None,
                                alphas=(evaluation.settings.alpha,), weighting=evaluation.settings.weighting).embeddings
    assert torch.equal(evaluation.condition(case, "history names"), expected)
    assert not torch.equal(expected, evaluation.condition(case, "keywords"))

    results = evaluation.run([_case("u1"), _case("u2")], ["target only", "history names", "keywords"])
    summary = summarise(results)
    assert "lpips_history_vs_names" in summary["keywords"] and "lpips_history_vs_names" in summary["target only"]
    assert "lpips_history_vs_names" not in summary["history names"]
    assert "Δ LPIPS→history vs history names" in report.markdown_table(summary)


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 4 against 4 images: the Fréchet covariances are singular
def test_responsiveness_decodes_given_latents_without_sampling_and_reports_the_reconstruction(evaluation):
    """compare_generators hands one file's latents to a file with the same denoiser: only decoding is redone.
    The autoencoder's ceiling carries SSIM and L1 beside LPIPS (a perceptual loss could game LPIPS alone)."""
    from pmg_core.evaluation.responsiveness import decode_in_batches, responsiveness_report
    from pmg_core.evaluation.sticker_eval import StickerPipeline
    from pmg_core.sticker_model import dataset

    generator = evaluation.pipeline.generator

    class _NoSampling(torch.nn.Module):
        def forward(self, *args):
            raise AssertionError("given latents must not be sampled again")

    no_sampling = type(generator)(generator.autoencoder, _NoSampling(), generator.metadata)
    pipeline = StickerPipeline(no_sampling, evaluation.pipeline.encoder)
    held_out = dataset.split()[1][:8]
    latents = torch.randn(8, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    report = responsiveness_report(pipeline, evaluation.judge, evaluation.lpips, held_out, latents=latents)
    assert report["latents"] is latents
    assert torch.equal(report["images"], decode_in_batches(generator.autoencoder, latents))
    assert 0 < report["reconstruction_l1"]["mean"] < 1 and -1 <= report["reconstruction_ssim"]["mean"] < 0.99  # a random decoder
    low, high = report["reconstruction_lpips"]["ci95"]
    assert low <= report["reconstruction_lpips"]["mean"] <= high
