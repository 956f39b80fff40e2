"""Frechet distance and k-NN precision/recall against independent references."""

import numpy as np
import pytest
from scipy import linalg

from memaudit.quality import frechet_distance, precision_recall, quality


def frechet_by_matrix_square_root(a, b):
    """The textbook formula with scipy's matrix square root, as the FID reference code computes it."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(linalg.sqrtm(cov_a @ cov_b).real)


@pytest.mark.parametrize("n_a, n_b, dim", [(400, 300, 12), (30, 25, 80)])  # more points than dimensions, and fewer
def test_frechet_distance_matches_the_matrix_square_root_formula(n_a, n_b, dim):
    rng = np.random.default_rng(dim)
    a = rng.standard_normal((n_a, dim)) @ rng.standard_normal((dim, dim))
    b = 2.0 * rng.standard_normal((n_b, dim)) + 1.0
    assert frechet_distance(a, b) == pytest.approx(frechet_by_matrix_square_root(a, b), rel=1e-6)


def test_frechet_distance_of_a_translated_set_is_the_squared_shift():
    a = np.random.default_rng(0).standard_normal((500, 6))
    shift = np.array([3.0, 0, 0, 4.0, 0, 0])
    assert frechet_distance(a, a + shift) == pytest.approx(25.0, abs=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_precision_and_recall_bounds():
    rng = np.random.default_rng(1)
    train = rng.standard_normal((300, 4)).astype(np.float32)
    assert precision_recall(train, train.copy()) == (1.0, 1.0)
    assert precision_recall(train, train + 100.0) == (0.0, 0.0)
    # samples that are half the training set: full precision; recall covers at least that half
    # (each of those points is a sample) and, with the other half far from most samples, not all
    half = train[:, 0] > 0
    precision, recall = precision_recall(train, train[half])
    assert precision == 1.0 and half.mean() <= recall < 0.8


def test_quality_is_json_ready_and_says_when_it_cannot_be_computed():
    rng = np.random.default_rng(2)
    figures = quality(rng.standard_normal((50, 3)), rng.standard_normal((40, 3)))
    assert set(figures) == {"frechet_distance", "precision", "recall", "k", "points"} and figures["points"] == [50, 40]
    assert quality(rng.standard_normal((50, 3)), rng.standard_normal((1, 3)))["frechet_distance"] is None
