"""Fréchet distance, mergeable statistics, intervals, and FD growing with corruption."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.linalg
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from qa.frechet import FeatureStats, frechet_distance, merge_all, weighted_sum
from qa.inception import load_inception
from qa.uncertainty import bootstrap_ci, fd_infinity, wilson
from qa.video import clips_of, load_i3d

CPU = torch.device("cpu")


def _pair(n: int, d: int, shift: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mix, rng.normal(size=(n, d)) @ mix * 1.3 + shift


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


@pytest.mark.parametrize(
    ("n", "d"), [(500, 64), (300, 256), (40, 128)]
)  # the last one rank-deficient
def test_fd_matches_pytorch_fid_and_scipy(n, d):
    a, b = _pair(n, d, shift=0.2)
    ours = frechet_distance(FeatureStats.of(a), FeatureStats.of(b))
    reference = calculate_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    assert ours == pytest.approx(reference, rel=1e-6)
    assert ours == pytest.approx(_scipy_fd(a, b), rel=1e-6)


def test_fd_of_identical_sets_is_zero():
    a, _ = _pair(200, 32, 0.0)
    assert abs(frechet_distance(FeatureStats.of(a), FeatureStats.of(a))) < 1e-8


def test_merged_statistics_equal_single_pass():
    a, _ = _pair(301, 48, 0.0, seed=3)
    single = FeatureStats.of(a)
    parts = [FeatureStats.of(p) for p in np.array_split(a, [7, 100, 250])]
    merged = merge_all(parts)
    assert merged.count == single.count == 301
    np.testing.assert_allclose(merged.total, single.total, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(merged.outer, single.outer, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(merged.cov(), np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)
    assert frechet_distance(merged, FeatureStats.of(a[::-1])) == pytest.approx(0.0, abs=1e-8)
    twice = weighted_sum(parts, np.array([2, 0, 1, 1]))
    expected = parts[0].merge(parts[0]).merge(parts[2]).merge(parts[3])
    assert twice.count == expected.count
    np.testing.assert_allclose(twice.outer, expected.outer, rtol=1e-12)


def test_saved_statistics_are_pytorch_fid_npz_and_merge_back(tmp_path: Path):
    a, b = _pair(120, 16, 0.5, seed=4)
    stats = FeatureStats.of(a)
    buf = io.BytesIO()
    stats.save(buf)
    (tmp_path / "a.npz").write_bytes(buf.getvalue())
    with np.load(tmp_path / "a.npz") as f:  # pytorch-fid reads the keys mu and sigma
        np.testing.assert_allclose(f["mu"], a.mean(0), rtol=1e-12)
        np.testing.assert_allclose(f["sigma"], np.cov(a, rowvar=False), rtol=1e-10, atol=1e-12)
    back = FeatureStats.load(tmp_path / "a.npz").merge(FeatureStats.of(b))
    np.testing.assert_allclose(
        back.cov(), np.cov(np.concatenate([a, b]), rowvar=False), rtol=1e-9, atol=1e-12
    )


def test_bootstrap_interval_and_fd_infinity():
    rng = np.random.default_rng(5)
    same = [FeatureStats.of(rng.normal(size=(60, 16))) for _ in range(8)]
    other = [FeatureStats.of(rng.normal(size=(60, 16))) for _ in range(8)]
    value = frechet_distance(merge_all(same), merge_all(other))
    lo, hi = bootstrap_ci(same, other, value, 50, np.random.default_rng(0))
    assert 0 <= lo <= value <= hi
    assert (lo, hi) == bootstrap_ci(same, other, value, 50, np.random.default_rng(0))
    # same distribution: the distance at finite N is pure small-sample bias, FD-infinity removes
    # most of it
    inf, points = fd_infinity(same, other, np.random.default_rng(1))
    assert len({n for n, _ in points}) >= 2 and abs(inf) < 0.25 * value


def test_wilson():
    lo, hi = wilson(7, 10)
    assert 0.39 < lo < 0.40 and 0.89 < hi < 0.90
    assert wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0


def _strictly_increasing(values: list[float]) -> bool:
    return all(a < b for a, b in zip(values, values[1:], strict=False))


def test_fid_grows_with_blur_and_noise(noon_scene, weights):
    frames = np.stack([noon_scene.images(i)[v] for i in range(0, 48, 8) for v in ("left", "front")])
    extractor = load_inception(weights, CPU, dims=768)
    real = FeatureStats.of(extractor(frames))
    rng = np.random.default_rng(0)
    blurred = [frames] + [
        np.stack([cv2.GaussianBlur(f, (0, 0), s) for f in frames]) for s in (1.0, 2.0, 4.0)
    ]
    noisy = [
        np.clip(frames + rng.normal(0, s, frames.shape), 0, 255).astype(np.uint8)
        for s in (8, 24, 64)
    ]
    for levels in (blurred, [frames, *noisy]):
        fd = [frechet_distance(real, FeatureStats.of(extractor(x))) for x in levels]
        assert abs(fd[0]) < 1e-6 * fd[1] and _strictly_increasing(fd), fd


def test_fvd_grows_as_frames_are_shuffled(noon_scene, weights):
    videos = [
        np.stack([noon_scene.images(i)[v] for i in range(s, s + 16)])
        for v in ("left", "front")
        for s in (0, 20)
    ]
    extractor = load_i3d(weights, CPU)
    real = FeatureStats.of(extractor(np.concatenate([clips_of(v) for v in videos])))
    rng = np.random.default_rng(0)

    def shuffled(video: np.ndarray, block: int) -> np.ndarray:
        """Frames permuted within blocks of ``block`` frames (16: the whole clip)."""
        order = np.concatenate([s + rng.permutation(block) for s in range(0, 16, block)])
        return video[order]

    fd = [
        frechet_distance(
            real, FeatureStats.of(extractor(np.stack([shuffled(v, b) for v in videos])))
        )
        for b in (1, 4, 16)
    ]
    assert abs(fd[0]) < 1e-6 * fd[1] and _strictly_increasing(fd), fd
