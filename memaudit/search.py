"""Exact k-nearest-neighbour search in L2, through faiss, in bounded memory.

The database is visited in blocks (so a memory-mapped training set never has to fit in RAM);
each block is searched with an exact flat index and the running top candidates are merged.
faiss computes L2 through ``|q|^2 + |b|^2 - 2 q.b`` in float32, which loses a few units in the
last place on large pixel vectors, so the merged candidates (k plus a margin) are re-scored
exactly in float64 before the final top k is taken: the distances returned are exact and ties
are broken by the lower index.
"""

from __future__ import annotations

import numpy as np

from memaudit import progress
from memaudit.errors import InputError

DEFAULT_BLOCK_BYTES = 256 * 2**20  # float32 bytes of one database block
RESCORE_MARGIN = 8  # extra faiss candidates re-scored exactly, to absorb float32 rounding
_RESCORE_CHUNK_BYTES = 64 * 2**20


def _import_faiss():
    try:
        import faiss
    except ImportError:
        raise InputError(
            "faiss is not installed; install memaudit with the 'cpu' extra (faiss-cpu) or the 'gpu' extra (faiss-gpu)"
        ) from None
    return faiss


def _as_matrix(array: np.ndarray, name: str) -> np.ndarray:
    if not hasattr(array, "shape") or len(array.shape) < 1:
        raise InputError(f"{name}: expected an array of shape (n, ...), got {type(array).__name__}")
    return array.reshape(len(array), -1) if len(array.shape) != 2 else array


def knn(queries: np.ndarray, database: np.ndarray, k: int, *,
        block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each query among the database rows, by L2 distance.

    ``queries`` (nq, ...) and ``database`` (nb, ...) are flattened per row; any numeric dtype,
    including a ``np.memmap``. Returns ``(distances, indices)``: float32 L2 distances (not
    squared) and int64 database row indices, both (nq, k), sorted ascending by distance, ties
    by index.
    """
    queries = _as_matrix(queries, "queries")
    database = _as_matrix(database, "database")
    nq, dim = queries.shape
    nb = database.shape[0]
    if database.shape[1] != dim:
        raise InputError(f"database: rows have {database.shape[1]} values but queries have {dim}; both must match")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= nb:
        raise InputError(f"k: must be an integer from 1 to the database size {nb}, got {k!r}")
    if nq == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

    faiss = _import_faiss()
    candidates = min(nb, k + RESCORE_MARGIN)
    query_f32 = np.ascontiguousarray(queries, dtype=np.float32)
    best_d = np.full((nq, 0), np.inf, np.float32)
    best_i = np.zeros((nq, 0), np.int64)
    block_rows = max(1, block_bytes // (4 * dim))
    blocks = range(0, nb, block_rows)
    with progress.task("nearest neighbours", total=len(blocks)) as advance:
        for start in blocks:
            block = np.ascontiguousarray(database[start:start + block_rows], dtype=np.float32)
            index = faiss.IndexFlatL2(dim)
            index.add(block)
            d, i = index.search(query_f32, min(candidates, len(block)))
            best_d, best_i = _merge(best_d, best_i, d, i + start, candidates)
            advance()
    return _rescore(queries, database, best_i, k)


def _merge(d_a, i_a, d_b, i_b, keep):
    d = np.concatenate([d_a, d_b], axis=1)
    i = np.concatenate([i_a, i_b], axis=1)
    if d.shape[1] > keep:
        part = np.argpartition(d, keep - 1, axis=1)[:, :keep]
        d, i = np.take_along_axis(d, part, 1), np.take_along_axis(i, part, 1)
    return d, i


def _rescore(queries, database, candidate_idx, k):
    """Exact float64 distances to each query's candidates, sorted by (distance, index)."""
    nq, width = candidate_idx.shape
    dim = queries.shape[1]
    chunk = max(1, _RESCORE_CHUNK_BYTES // (8 * width * dim))
    out_d = np.empty((nq, k), np.float32)
    out_i = np.empty((nq, k), np.int64)
    for start in range(0, nq, chunk):
        idx = candidate_idx[start:start + chunk]
        q = np.asarray(queries[start:start + chunk], dtype=np.float64)
        unique = np.unique(idx)  # sorted, so a memmap is read forwards once
        rows = np.asarray(database[unique], dtype=np.float64)
        diff = q[:, None, :] - rows[np.searchsorted(unique, idx)]
        d2 = np.einsum("qcd,qcd->qc", diff, diff)
        order = np.lexsort((idx, d2), axis=1)[:, :k]
        out_d[start:start + chunk] = np.sqrt(np.take_along_axis(d2, order, 1))
        out_i[start:start + chunk] = np.take_along_axis(idx, order, 1)
    return out_d, out_i

