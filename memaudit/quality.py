"""Generation quality beside memorization: Frechet distance and k-NN precision/recall.

A model that memorizes nothing may simply generate nothing useful; these figures, computed in each
feature space between the samples and the training set, give the memorization ratio its context.
"""

from __future__ import annotations

import numpy as np

from memaudit.search import knn

PR_NEIGHBOURS = 3  # Kynkaanniemi et al. (2019) use k = 3
MAX_POINTS = 10_000  # each side is subsampled (deterministically) beyond this


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted to two sets
    (Heusel et al. 2017, the FID formula, here in any feature space)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():  # near-singular product: regularise, as the FID reference code does
        offset = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root.real))


def _radii(points: np.ndarray, k: int) -> np.ndarray:
    distances, _ = knn(points, points, min(k + 1, len(points)))
    return distances[:, -1].astype(np.float64)  # the first neighbour is the point itself


def precision_recall(train: np.ndarray, samples: np.ndarray, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): precision is the share of samples
    inside some training point's k-NN ball; recall the share of training points inside some
    sample's k-NN ball."""
    def coverage(manifold, probes):
        radii = _radii(manifold, k)
        distances, indices = knn(probes, manifold, min(len(manifold), 64))
        return float(np.mean((distances <= radii[indices]).any(axis=1)))

    return coverage(train, samples), coverage(samples, train)


def _subsample(points: np.ndarray) -> np.ndarray:
    if len(points) <= MAX_POINTS:
        return np.asarray(points, np.float32)
    rows = np.sort(np.random.default_rng(0).choice(len(points), MAX_POINTS, replace=False))
    return np.asarray(points[rows], np.float32)


def quality(train_features: np.ndarray, sample_features: np.ndarray) -> dict:
    """Frechet distance and precision/recall between samples and training set, JSON-ready."""
    train, samples = _subsample(train_features), _subsample(sample_features)
    if len(train) < 2 or len(samples) < 2:
        return {"frechet_distance": None, "precision": None, "recall": None, "k": PR_NEIGHBOURS}
    precision, recall = precision_recall(train, samples)
    return {"frechet_distance": frechet_distance(train, samples), "precision": precision, "recall": recall,
            "k": PR_NEIGHBOURS, "points": [len(train), len(samples)]}
