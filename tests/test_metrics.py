"""Tests of anchor_reg.metrics: agreement with speechbrain.utils.metric_stats,
DET curves and embedding geometry."""

import math

import pytest
import torch
from speechbrain.utils.metric_stats import EER, minDCF

from anchor_reg.metrics import (
    det_curve,
    eer,
    embedding_drift,
    mean_and_sd,
    min_dcf,
    speaker_geometry,
)


def _random_scores(seed, n_pos, n_neg, levels=None):
    """Overlapping target / non-target scores; ``levels`` quantises them (ties)."""
    generator = torch.Generator().manual_seed(seed)
    pos = torch.randn(n_pos, generator=generator) + 1.5
    neg = torch.randn(n_neg, generator=generator)
    if levels:
        pos, neg = (torch.round(x * levels) / levels for x in (pos, neg))
    return pos, neg


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 4])
def test_eer_equals_speechbrain(seed, levels):
    # Power-of-two trial counts make speechbrain's float32 rates exact, so
    # both implementations must pick the same operating point.
    pos, neg = _random_scores(seed, 64, 256, levels)
    ours, ours_threshold = eer(pos, neg)
    reference, reference_threshold = EER(pos, neg)
    assert ours == pytest.approx(reference, abs=1e-7)
    assert ours_threshold == pytest.approx(reference_threshold, abs=1e-6)
    assert 0.0 < ours < 0.5


@pytest.mark.parametrize("seed", range(3))
def test_eer_close_to_speechbrain_for_any_counts(seed):
    pos, neg = _random_scores(seed, 37, 301)
    # Exact ties of |p_fa - p_miss| may be broken differently by float32;
    # the two candidates then differ by at most one error step.
    assert eer(pos, neg)[0] == pytest.approx(EER(pos, neg)[0], abs=1 / 37)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [None, 4])
def test_min_dcf_is_speechbrain_normalised(seed, levels):
    pos, neg = _random_scores(seed, 50, 413, levels)
    ours, ours_threshold = min_dcf(pos, neg)
    reference, reference_threshold = minDCF(pos, neg, c_miss=1.0, c_fa=1.0, p_target=0.01)
    # Normalised by min(p_target * c_miss, (1 - p_target) * c_fa) = 0.01.
    assert ours == pytest.approx(reference / 0.01, rel=1e-5)
    assert ours_threshold == pytest.approx(reference_threshold, abs=1e-6)
    assert 0.0 < ours <= 1.0


def test_min_dcf_normalisation_with_other_costs():
    pos, neg = _random_scores(7, 40, 200)
    ours = min_dcf(pos, neg, p_target=0.05, c_miss=10.0, c_fa=1.0)[0]
    reference = minDCF(pos, neg, c_miss=10.0, c_fa=1.0, p_target=0.05)[0]
    assert ours == pytest.approx(reference / min(0.05 * 10.0, 0.95 * 1.0), rel=1e-5)


def test_perfect_separation():
    pos, neg = torch.tensor([0.8, 0.9]), torch.tensor([0.1, 0.2, 0.3])
    assert eer(pos, neg)[0] == 0.0
    assert min_dcf(pos, neg)[0] == 0.0


def test_missing_class_is_an_error():
    with pytest.raises(ValueError, match="non-target"):
        eer(torch.tensor([0.5]), torch.tensor([]))


def test_det_curve_is_monotonic_and_spans_the_rates():
    pos, neg = _random_scores(3, 30, 90)
    p_fa, p_miss = det_curve(pos, neg)
    assert torch.all(p_fa[1:] <= p_fa[:-1]) and torch.all(p_miss[1:] >= p_miss[:-1])
    assert p_miss[-1] == 1.0 and p_fa[-1] == 0.0
    # The lowest threshold is the lowest score, here a non-target one.
    assert neg.min() < pos.min()
    assert p_miss[0] == 0.0 and p_fa[0] == pytest.approx(89 / 90)


def test_geometry_of_known_configuration():
    # Speaker a: two unit vectors 0.2 rad either side of x; speaker b along y.
    angle = 0.2
    emb = torch.tensor(
        [
            [math.cos(angle), math.sin(angle), 0.0],
            [math.cos(angle), -math.sin(angle), 0.0],
            [0.0, 2.0, 0.0],
            [0.0, 3.0, 0.0],
            [0.0, 0.0, 5.0],
        ]
    )
    geo = speaker_geometry(emb, ["a", "a", "b", "b", "c"])
    # c has one utterance: left out of compactness.
    assert geo["compactness"] == pytest.approx((2 * math.cos(angle) + 2) / 4)
    assert geo["separation"] == pytest.approx(1.0)  # mutually orthogonal centroids
    assert geo["nearest_centroid_distance"] == pytest.approx(1.0)

    close = speaker_geometry(
        torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 1.0], [0.0, 1.0]]),
        ["a", "a", "b", "b", "c"],
    )
    nearest = 1 - math.cos(math.pi / 4)
    assert close["compactness"] == pytest.approx(1.0)
    assert close["separation"] == pytest.approx((nearest + 1 + nearest) / 3)
    assert close["nearest_centroid_distance"] == pytest.approx(nearest)


def test_geometry_of_one_speaker():
    geo = speaker_geometry(torch.randn(3, 4), ["a"] * 3)
    assert geo["separation"] is None and geo["nearest_centroid_distance"] is None
    assert -1.0 <= geo["compactness"] <= 1.0


def test_drift():
    clean = torch.randn(6, 8)
    assert embedding_drift(clean, 3 * clean) == pytest.approx(0.0, abs=1e-12)
    assert embedding_drift(clean, -clean) == pytest.approx(2.0)


def test_mean_and_sd():
    assert mean_and_sd([2.0]) == (2.0, 0.0)
    assert mean_and_sd([None, None]) == (None, None)
    mean, sd = mean_and_sd([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and sd == pytest.approx(1.0)
