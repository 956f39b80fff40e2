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
    assert {"frechet_distance", "precision", "recall", "density", "coverage", "k", "points", "subsampled"} <= set(figures)
    assert figures["points"] == [50, 40] and figures["subsampled"]["applied"] is False
    assert quality(rng.standard_normal((50, 3)), rng.standard_normal((1, 3)))["frechet_distance"] is None


def exhaustive_manifold(train, samples, k=3, k_dc=5):
    """Every distance by direct float64 differences; the official codes' rules (<= for P/R, < for D/C)."""
    train, samples = np.asarray(train, np.float64), np.asarray(samples, np.float64)

    def distances(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    tt, ss, st = distances(train, train), distances(samples, samples), distances(samples, train)
    r_train = np.sort(tt, axis=1)[:, k]  # the point itself is the 0-th
    r_samples = np.sort(ss, axis=1)[:, k]
    r_train_dc = np.sort(tt, axis=1)[:, k_dc]
    inside_dc = st < r_train_dc[None, :]
    return {"precision": (st <= r_train[None, :]).any(1).mean(), "recall": (st <= r_samples[:, None]).any(0).mean(),
            "density": inside_dc.sum() / (k_dc * len(samples)), "coverage": inside_dc.any(0).mean()}


def outlier_case():
    """A tight cluster of training points plus a few far outliers: their huge k-NN balls hold the
    samples, which a search over each sample's nearest points alone never finds."""
    rng = np.random.default_rng(5)
    cluster = rng.standard_normal((300, 8)) * 0.01
    outliers = 100.0 * np.eye(8)[:4]  # each one's 3rd neighbour is the cluster, 100 away
    train = np.concatenate([cluster, outliers])
    samples = 30.0 * np.eye(8)[0] + rng.standard_normal((200, 8))
    return train, samples


@pytest.mark.parametrize("case", ["outlier", "duplicates", "digits"])
def test_manifold_metrics_equal_an_exhaustive_float64_computation(case):
    from memaudit.quality import manifold_metrics

    if case == "outlier":
        train, samples = outlier_case()
    elif case == "duplicates":  # repeated points: zero radii, distances exactly on ball edges
        rng = np.random.default_rng(3)
        base = rng.integers(0, 4, (60, 5)).astype(np.float64)
        train = np.concatenate([base, base[:20], base[:7]])
        samples = np.concatenate([base[10:40], rng.integers(0, 4, (30, 5)).astype(np.float64)])
    else:
        from sklearn.datasets import load_digits

        images = load_digits().images.reshape(-1, 64) * 16.0
        train, samples = images[:900], images[900:1500]
    expected = exhaustive_manifold(train, samples)
    figures = manifold_metrics(train, samples)
    for name, value in expected.items():
        assert figures[name] == pytest.approx(value, abs=1e-12), name
    if case == "outlier":
        assert figures["precision"] > 0.9  # the old 64-neighbour search reported 0


def test_manifold_metrics_are_blocked_without_changing_a_count(monkeypatch):
    from memaudit import quality as q

    train, samples = outlier_case()
    whole = q.manifold_metrics(train, samples)
    monkeypatch.setattr(q, "_BLOCK_VALUES", 1000)  # blocks of a few rows
    assert q.manifold_metrics(train, samples) == whole


def test_training_radii_are_kept_between_audits(tmp_path, monkeypatch):
    from memaudit import quality as q

    train, samples = outlier_case()
    cache = tmp_path / q.radii_cache_name("features-key")
    first = q.manifold_metrics(train, samples, radii_cache=cache)
    assert cache.exists() and first == q.manifold_metrics(train, samples)
    computed = []
    original = q.kth_neighbour_sq
    monkeypatch.setattr(q, "kth_neighbour_sq", lambda points, ks: computed.append(len(points)) or original(points, ks))
    assert q.manifold_metrics(train, samples[:150], radii_cache=cache) == q.manifold_metrics(train, samples[:150])
    assert computed == [150, 304, 150]  # the cached call computed only the samples' radii
    assert q.radii_cache_name("features-key") != q.radii_cache_name("other-features")
