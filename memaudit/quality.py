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
    (Heusel et al. 2017, the FID formula, here in any feature space).

    Tr (S_a S_b)^1/2 is the sum of the square roots of the eigenvalues of S_a S_b, computed without
    a matrix square root: from the singular values of A B^T (A, B the centred, scaled point sets)
    when there are fewer points than dimensions, else from the symmetric S_a^1/2 S_b S_a^1/2.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    centred_a = (a - mu_a) / np.sqrt(max(len(a) - 1, 1))
    centred_b = (b - mu_b) / np.sqrt(max(len(b) - 1, 1))
    trace_a, trace_b = float((centred_a ** 2).sum()), float((centred_b ** 2).sum())
    if min(len(a), len(b)) < a.shape[1]:
        trace_root = float(np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum())
    else:
        values, vectors = np.linalg.eigh(centred_a.T @ centred_a)
        root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        product = root_a @ (centred_b.T @ centred_b) @ root_a
        trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh(product), 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + trace_a + trace_b - 2.0 * trace_root)


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
