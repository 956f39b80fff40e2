"""Carlini et al. (2023)'s tiled L2 distance between images, and each image's nearest under it.

Carlini et al. (arXiv 2301.13188, §4.2.1) cut each image into 4 x 4 non-overlapping tiles and take
the largest per-tile L2 distance, normalised to an RMS difference of pixel values in [0, 1]:
``tiled(x, y) = max_t sqrt(mean over tile t of (x - y)^2)``. Two images are near-identical only
when *every* tile is close. Sizes not divisible by the grid are cut as ``numpy.array_split`` does
(the first ``size mod grid`` tile rows and columns are one pixel larger); each tile's RMS is over
its own pixels.

``tiled_l2`` gives the distance between every pair of two sets (the paper compares generations
with each other); ``nearest_tiled_l2`` finds, for each image, the smallest distance over a whole
reference set, exactly, with a bound that skips most of the work: the untiled RMS distance is a
weighted mean of the tiles' mean squares, so it is never above the largest tile's RMS. Candidates
taken in order of untiled distance can stop once that distance passes the best tiled score found.
"""

from __future__ import annotations

import numpy as np

from memaudit import progress
from memaudit.errors import InputError

GRID = 4
_BLOCK_VALUES = 4_000_000  # float64 entries of one block of products (32 MB)
_RESCORE = 4  # approximate best matches per image re-scored exactly after a whole-set pass


def tile_indices(shape: tuple[int, ...], grid: int = GRID) -> list[np.ndarray]:
    """Flat indices (into an image's H*W*C values) of each of the grid x grid tiles."""
    height, width = shape[:2]
    if height < grid or width < grid:
        raise InputError(f"tiled-l2: images of {height}x{width} cannot be cut into {grid}x{grid} tiles")
    flat = np.arange(int(np.prod(shape))).reshape(shape[0], shape[1], -1)
    return [flat[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].ravel()
            for rows in np.array_split(np.arange(height), grid) for cols in np.array_split(np.arange(width), grid)]


def _flat(images: np.ndarray) -> np.ndarray:
    return np.asarray(images).reshape(len(images), -1)


def paired_tiled_l2(a: np.ndarray, b: np.ndarray, grid: int = GRID) -> np.ndarray:
    """tiled(a[i], b[i]) for each row pair, by direct float64 differences (exact to rounding)."""
    tiles = tile_indices(np.asarray(a).shape[1:], grid)
    diff = _flat(a).astype(np.float64) - _flat(b).astype(np.float64)
    diff *= diff
    worst = np.zeros(len(diff))
    for index in tiles:
        np.maximum(worst, diff[:, index].mean(1), out=worst)
    return np.sqrt(worst) / 255.0


def tiled_l2(a: np.ndarray, b: np.ndarray, grid: int = GRID) -> np.ndarray:
    """(len(a), len(b)) tiled L2 distances between two sets of uint8 images (values 0-255 read as
    [0, 1]): Carlini et al. (2023) §4.2.1's measure between generations. float64 products per tile,
    in blocks; relative rounding about 1e-12."""
    a, b = np.asarray(a), np.asarray(b)
    tiles = tile_indices(a.shape[1:], grid)
    flat_b = _flat(b).astype(np.float64)
    out = np.empty((len(a), len(b)))
    step = max(1, _BLOCK_VALUES // max(len(b), 1))
    for start in range(0, len(a), step):
        out[start:start + step] = _tile_maxima(_flat(a[start:start + step]).astype(np.float64), flat_b, tiles)
    return np.sqrt(out) / 255.0


def _tile_maxima(x: np.ndarray, y: np.ndarray, tiles: list[np.ndarray]) -> np.ndarray:
    """Largest per-tile mean squared difference of every (x, y) pair (in 0-255 units)."""
    worst = np.zeros((len(x), len(y)))
    for index in tiles:
        xt, yt = x[:, index], y[:, index]
        sq = (xt * xt).sum(1)[:, None] + (yt * yt).sum(1)[None, :] - 2.0 * (xt @ yt.T)
        np.maximum(worst, sq / len(index), out=worst)
    return worst


def nearest_tiled_l2(samples: np.ndarray, reference: np.ndarray, candidates: np.ndarray,
                     candidate_l2: np.ndarray, grid: int = GRID) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's smallest tiled L2 distance over the *whole* reference set, and the reference
    row it refers to (ties to the lower row).

    ``candidates`` (n, k) are each sample's k nearest reference rows by untiled L2 (ascending, as
    the pixel search returns them) and ``candidate_l2`` their uint8 L2 distances. The candidates
    are scored first; a sample whose best tiled score is below the untiled RMS of its k-th
    candidate is settled, since no other row can score lower. The others are compared with every
    reference row whose untiled distance is below their best score so far, in blocks.
    """
    samples = np.asarray(samples)
    n, dimension = len(samples), int(np.prod(samples.shape[1:]))
    tiles = tile_indices(samples.shape[1:], grid)
    scale = 255.0 * np.sqrt(dimension)
    best = np.full(n, np.inf)
    nearest = np.zeros(n, np.int64)
    # 1. the k candidates of the pixel search, exactly
    chunk = max(1, _BLOCK_VALUES // max(candidates.shape[1] * dimension, 1))
    for start in range(0, n, chunk):
        idx = candidates[start:start + chunk]
        rows = np.asarray(reference[np.unique(idx)])[np.searchsorted(np.unique(idx), idx)]
        reps = np.repeat(samples[start:start + chunk], idx.shape[1], axis=0)
        scores = paired_tiled_l2(reps, rows.reshape(-1, *samples.shape[1:]), grid).reshape(idx.shape)
        order = np.lexsort((idx, scores), axis=1)[:, 0]
        best[start:start + chunk] = scores[np.arange(len(idx)), order]
        nearest[start:start + chunk] = idx[np.arange(len(idx)), order]
    # 2. the bound: rows outside the candidates are at least as far (untiled) as the k-th candidate
    if candidates.shape[1] >= len(reference):
        return best, nearest
    open_rows = np.nonzero(best >= candidate_l2[:, -1] / scale)[0]
    if len(open_rows):
        _whole_set(samples, reference, open_rows, best, nearest, tiles, scale, grid)
    return best, nearest


def _whole_set(samples, reference, open_rows, best, nearest, tiles, scale, grid):
    """Settle the open samples against every reference row within their untiled bound."""
    reference_flat = _flat(reference)
    width = max(1, _BLOCK_VALUES // 256)
    query_step = 256
    with progress.task("tiled-l2 over the whole training set", total=len(open_rows)) as advance:
        for q_start in range(0, len(open_rows), query_step):
            rows = open_rows[q_start:q_start + query_step]
            x = _flat(samples[rows]).astype(np.float64)
            x_sq = (x * x).sum(1)
            # best tiled score so far, as a squared uint8 L2 bound (with room for rounding)
            bound = (best[rows] * scale) ** 2 * (1 + 1e-9) + 1e-6
            kept_i, kept_score = [], []
            prune = True  # the untiled pass costs as much as the tiles: kept only while it skips most rows
            for r_start in range(0, len(reference_flat), width):
                y = np.asarray(reference_flat[r_start:r_start + width], dtype=np.float64)
                needed = np.arange(len(y))
                if prune:
                    untiled = x_sq[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
                    needed = np.nonzero((untiled < bound[:, None]).any(0))[0]
                    prune = len(needed) < len(y) // 2
                    if not len(needed):
                        continue
                approx = _tile_maxima(x, y[needed], tiles)
                keep = min(_RESCORE, len(needed))
                part = np.argpartition(approx, keep - 1, axis=1)[:, :keep]
                kept_i.append(needed[part] + r_start)
                kept_score.append(np.take_along_axis(approx, part, 1))
            if kept_i:
                idx = np.concatenate(kept_i, axis=1)
                approx = np.concatenate(kept_score, axis=1)
                keep = min(_RESCORE, idx.shape[1])
                part = np.argpartition(approx, keep - 1, axis=1)[:, :keep]
                idx = np.take_along_axis(idx, part, 1)
                reps = np.repeat(samples[rows], keep, axis=0)
                exact = paired_tiled_l2(reps, np.asarray(reference[idx.ravel()]), grid).reshape(idx.shape)
                idx = np.concatenate([nearest[rows, None], idx], axis=1)
                exact = np.concatenate([best[rows, None], exact], axis=1)
                order = np.lexsort((idx, exact), axis=1)[:, 0]
                best[rows] = exact[np.arange(len(rows)), order]
                nearest[rows] = idx[np.arange(len(rows)), order]
            advance(len(rows))
