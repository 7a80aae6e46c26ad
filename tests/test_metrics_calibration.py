"""LPIPS and SSIM reproduce the official values on public calibration pairs (tests/data/calib/README.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from pmg_core.metrics import load_image, ssim, ssim_pairwise
from pmg_core.metrics.ssim import to_gray8

OFFICIAL = {"I03": {"lpips": 0.7237, "ssim": 0.6993}, "I04": {"lpips": 0.2572, "ssim": 0.9978}}
ROOT = Path(__file__).resolve().parents[1]


def _pair(calib_dir, name):
    return load_image(calib_dir / f"{name}_ref.png"), load_image(calib_dir / f"{name}_dist.png")


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_lpips_alex_matches_official(lpips_alex, calib_dir, name):
    reference, distorted = _pair(calib_dir, name)
    assert reference.shape == (1, 3, 384, 512)
    value = lpips_alex.distance(reference, distorted)
    assert value.shape == (1,)
    assert abs(float(value[0]) - OFFICIAL[name]["lpips"]) < 1e-3


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_ssim_matches_official_and_scikit_image(calib_dir, name):
    reference, distorted = _pair(calib_dir, name)
    value = float(ssim(reference, distorted)[0])
    assert abs(value - OFFICIAL[name]["ssim"]) < 2e-3
    gray_ref = np.asarray(Image.open(calib_dir / f"{name}_ref.png").convert("L"))
    gray_dist = np.asarray(Image.open(calib_dir / f"{name}_dist.png").convert("L"))
    expected = structural_similarity(
        gray_ref, gray_dist, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert abs(value - expected) < 1e-6
    # Our 8-bit grayscale is PIL's convert("L") exactly.
    np.testing.assert_array_equal(to_gray8(reference)[0, 0].numpy(), gray_ref)


def test_pairwise_ssim_on_calibration_pairs(calib_dir):
    ref3, dist3 = _pair(calib_dir, "I03")
    ref4, dist4 = _pair(calib_dir, "I04")
    import torch

    table = ssim_pairwise(torch.cat([ref3, ref4]), [dist3, dist4, ref3])
    assert table.shape == (2, 3)
    assert abs(float(table[0, 0]) - OFFICIAL["I03"]["ssim"]) < 2e-3
    assert abs(float(table[1, 1]) - OFFICIAL["I04"]["ssim"]) < 2e-3
    assert float(table[0, 2]) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_cli_prints_official_values(calib_dir, name):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pmg_core.metrics",
            str(calib_dir / f"{name}_ref.png"),
            str(calib_dir / f"{name}_dist.png"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == 1
    payload = json.loads(lines[0])
    assert payload["lpips_net"] == "alex"
    assert abs(payload["lpips"] - OFFICIAL[name]["lpips"]) < 1e-3
    assert abs(payload["ssim"] - OFFICIAL[name]["ssim"]) < 2e-3


def test_cli_missing_image_fails_with_one_line(calib_dir, tmp_path):
    absent = tmp_path / "absent.png"
    result = subprocess.run(
        [sys.executable, "-m", "pmg_core.metrics", str(calib_dir / "I03_ref.png"), str(absent)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "absent.png" in errors[0]


def test_cli_unreadable_image_fails_with_one_line(calib_dir, tmp_path, capsys):
    from pmg_core.metrics.__main__ import main

    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    assert main([str(garbage), str(calib_dir / "I03_dist.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.strip()]
    assert len(errors) == 1 and "garbage.png" in errors[0] and "cannot be read" in errors[0]
