"""Audio metrics against closed forms and independent reference computations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch

from m2ugen.data.synth import SR, Clip, render_clip
from m2ugen.errors import ConfigError
from m2ugen.eval.audio_metrics import (
    chroma_similarity,
    clap_scores,
    frechet_distance,
    inception_score,
    kl_per_item,
)


def _exact_gaussian(n: int, d: int, mean: float, std: float, seed: int) -> torch.Tensor:
    """n samples whose sample mean is exactly `mean` and sample covariance exactly std²·I."""
    z = np.random.default_rng(seed).standard_normal((n, d))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return torch.from_numpy(mean + std * z)


def test_fad_of_a_set_with_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    clips = [torch.randn(7, 6, generator=g) for _ in range(5)]  # frame-level embeddings
    assert frechet_distance(clips, clips) == pytest.approx(0.0, abs=1e-9)


def test_fad_of_gaussians_has_the_closed_form():
    # N(μ1, σ1² I) vs N(μ2, σ2² I) in d dims: |μ1 − μ2|² + d (σ1 − σ2)²
    d = 6
    a = _exact_gaussian(50, d, 0.0, 1.0, seed=1)
    b = _exact_gaussian(40, d, 0.5, 2.0, seed=2)
    assert frechet_distance([a], [b]) == pytest.approx(d * 0.5**2 + d * (2.0 - 1.0) ** 2,
                                                       rel=1e-9)


def test_fad_matches_the_formula_on_sample_statistics():
    g = torch.Generator().manual_seed(3)
    a = [torch.randn(8, generator=g) * 2 + 1 for _ in range(30)]  # one embedding per clip
    b = [torch.randn(8, generator=g) for _ in range(25)]
    x, y = torch.stack(a).numpy(), torch.stack(b).numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = ((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(
        s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_fad_needs_two_samples_per_set():
    with pytest.raises(ConfigError, match="at least two"):
        frechet_distance([torch.zeros(4)], [torch.zeros(4), torch.ones(4)])


def test_kl_of_identical_distributions_is_zero_and_matches_scipy():
    g = torch.Generator().manual_seed(0)
    ref, gen = torch.randn(4, 527, generator=g), torch.randn(4, 527, generator=g)
    assert torch.allclose(kl_per_item(ref, ref), torch.zeros(4), atol=1e-7)
    p, q = torch.softmax(ref.double(), -1).numpy(), torch.softmax(gen.double(), -1).numpy()
    expected = [scipy.stats.entropy(p[i], q[i]) for i in range(4)]  # KL(p ‖ q)
    assert kl_per_item(ref, gen).tolist() == pytest.approx(expected, rel=1e-5)


def test_inception_score_closed_forms():
    # confident predictions spread evenly over K classes: IS = K; identical ones: IS = 1
    assert inception_score(100 * torch.eye(5).repeat(4, 1), splits=1)[0] == pytest.approx(5.0)
    assert inception_score(torch.randn(1, 9).repeat(6, 1), splits=1)[0] == pytest.approx(1.0)
    mean, std = inception_score(100 * torch.eye(3).repeat(8, 1), splits=4, seed=0)
    assert 1.0 < mean <= 3.0 and std >= 0.0
    assert inception_score(100 * torch.eye(3).repeat(8, 1), splits=4, seed=0) == (mean, std)


def test_clap_score_is_the_cosine():
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    audio = torch.tensor([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    assert clap_scores(text, audio).tolist() == pytest.approx([1.0, 0.0, -1.0], abs=1e-6)


def test_chroma_similarity_of_music_and_its_edits():
    clip = Clip("a.wav", "piano", 100, 0, "major")
    source = render_clip(clip, seed=0)
    assert chroma_similarity(source, source, SR) == pytest.approx((1.0, 1.0), abs=1e-6)
    faster = render_clip(dataclasses.replace(clip, bpm=140), seed=0)
    other_key = render_clip(dataclasses.replace(clip, tonic=6), seed=0)  # C → F# major
    direct, aligned = chroma_similarity(source, faster, SR)
    assert aligned > direct  # DTW forgives the tempo change
    assert aligned > chroma_similarity(source, other_key, SR)[1]  # the key change it does not
