"""Exact k-nearest-neighbour search in one pass over the database, at the speed of its float32 product.

Each block of database rows is read once and converted to float32 once; a flat backend
(``memaudit.flat``) finds every query's ``want`` best rows of it by float32 keys (squared L2 or
negated inner product: smaller is nearer). Float32 keys are not the field's numbers (on 3072-dim
pixel vectors ``|q|^2 + |b|^2 - 2 q.b`` loses whole units), so results come from exact keys only:
int32 arithmetic on byte images, float64 otherwise. But a candidate is re-scored only when it can
matter: when its float32 key, less a rigorous bound on that key's rounding error
(``key_error_factor``), could still beat the query's running exact k-th best. After the first
block few candidates pass, so later blocks cost little beyond their matrix product.

The ``want`` candidates are enough when every row left out (float32 key at least the largest one
returned) provably cannot enter the top k; for a query where that is not proven (many rows within
rounding of each other) the block is searched again with four times the candidates, up to the
whole block. So the result is what float64 (or integer) keys over every row give, ties to the
lower index.
"""

from __future__ import annotations

import numpy as np

from memaudit import progress
from memaudit.flat import FLAT_BACKENDS, as_float32, flat_backend, reading_read_only_arrays
from memaudit.storage import release_mapped_pages

NO_ROW = np.iinfo(np.int64).max  # index of an empty slot (key +inf): sorts after every real row
WIDEN = 4  # a block searched again for a query asks for this many times the candidates
_PAIR_CHUNK_BYTES = 64 * 2**20  # working memory of one chunk of exact re-scoring


def key_error_factor(dim: int) -> float:
    """A factor c with |float32 key - exact key| <= c * scale for every flat backend, where scale
    is ``|q|^2 + |b|^2`` (squared L2) or ``|q| |b|`` (inner product) of the original vectors.

    With u = eps32 / 2 and gamma_n = n u / (1 - n u) (Higham's bound for a sum of n rounded terms,
    whatever the order of summation, so for any BLAS blocking): a float32 dot product of D terms is
    off by at most gamma_D sum|q_i b_i| <= gamma_D |q| |b|, and so is each float32 squared norm
    relative to itself. The matrix-product key (faiss: ``|q|^2 + |b|^2 - 2 q.b``; torch: ``|b|^2 -
    2 q.b`` with ``|q|^2`` added after) adds two more roundings of values up to 2 scale, and
    rounding the inputs to float32 moves the exact key by up to u (2 + u) (|q| + |b|)^2 <= 4.1 u scale:
    in all about (2 gamma_D + 8 u) scale, plus terms of order D u^2. faiss's direct
    ``sum (q_i - b_i)^2`` (fewer than 20 queries) is off by at most gamma_{D+2} |q - b|^2 <=
    (2 gamma_D + 4 u) scale before input rounding. 2 gamma_{D+8} covers both with u to spare
    while D u <= 1/2 (beyond it the factor is infinite: everything is re-scored). Inner products
    have half of these terms against |q| |b|. The float64 re-score of non-integer data is itself
    off by at most 2 gamma_{D+8} in float64, added. A float32 product of reduced precision (TF32,
    bfloat16) breaks the bound: ``memaudit.flat`` runs torch's in full float32 (faiss's GPU
    cuBLAS handles disallow reduced precision themselves).
    """
    u32, u64 = np.finfo(np.float32).eps / 2, np.finfo(np.float64).eps / 2
    n = dim + 8
    if n * u32 >= 0.5:
        return np.inf
    return 2 * n * u32 / (1 - n * u32) + 2 * n * u64 / (1 - n * u64)


def key_error(factor: float, metric: str, query_sq, row_sq):
    """The bound on float32 key errors: ``factor`` times the scale of (query, row) pairs, from
    upper bounds on their squared norms (broadcast)."""
    scale = query_sq + row_sq if metric == "l2" else np.sqrt(query_sq * row_sq)
    return factor * scale


def squared_norms_above(rows_f32: np.ndarray, factor: float) -> np.ndarray:
    """An upper bound (float64) on the exact squared norm of each row of the vectors that
    ``rows_f32`` rounds: the float32 sum is within the factor's relative error of it."""
    import torch

    with reading_read_only_arrays(), torch.inference_mode():
        norms = torch.linalg.vector_norm(torch.from_numpy(rows_f32), dim=1).numpy().astype(np.float64)
    return norms * norms * (1 + 2 * factor)


def merge_exact(keys: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of exactly scored candidates from disjoint row ranges: by key, ties by index."""
    order = np.lexsort((indices, keys), axis=1)[:, :k]
    return np.take_along_axis(keys, order, 1), np.take_along_axis(indices, order, 1)


def fused_exact(queries, database, k: int, want: int, metric: str, block_bytes: int):
    """Exact keys (float64, smaller is nearer) and indices of each query's k best rows of
    ``database``, searched in blocks of about ``block_bytes`` float32 bytes with ``want`` float32
    candidates per query and block to start from; and the backend that searched."""
    nq, dim = queries.shape
    nb = len(database)
    backend = flat_backend()
    factor = key_error_factor(dim)
    query_f32 = as_float32(queries)
    search = _BlockSearch(queries, query_f32, squared_norms_above(query_f32, factor), k, metric, factor,
                          FLAT_BACKENDS[backend])
    best_key = np.full((nq, k), np.inf)
    best_i = np.full((nq, k), NO_ROW, np.int64)
    block_rows = max(1, block_bytes // (4 * dim))
    blocks = range(0, nb, block_rows)
    with progress.task(f"nearest neighbours ({nq} queries, {nb} rows)", total=len(blocks)) as advance:
        for start in blocks:
            raw = np.asarray(database[start:start + block_rows])  # read once: the search and the re-score use it
            search.load(raw, start)
            pending, width = np.arange(nq), min(want, len(raw))
            while len(pending):
                key, index, settled = search.merge(pending, best_key[pending], best_i[pending], width)
                best_key[pending[settled]], best_i[pending[settled]] = key[settled], index[settled]
                pending, width = pending[~settled], min(WIDEN * width, len(raw))
            del raw
            search.unload()
            release_mapped_pages(database)
            advance()
    return best_key, best_i, backend


class _BlockSearch:
    """The queries, and the database block resident now: one block's pass for some of the queries."""

    def __init__(self, queries, query_f32, query_sq, k, metric, factor, search_block):
        self.queries, self.query_f32, self.query_sq = queries, query_f32, query_sq
        self.k, self.metric, self.factor, self.search_block = k, metric, factor, search_block

    def load(self, raw: np.ndarray, start: int) -> None:
        self.raw, self.start = raw, start
        self.block_f32 = as_float32(raw)  # converted once, searched by every pass over this block
        self.row_sq = squared_norms_above(self.block_f32, self.factor)

    def unload(self) -> None:
        self.raw = self.block_f32 = self.row_sq = None

    def merge(self, rows, best_key, best_i, want):
        """Merge this block into the exact top k of queries ``rows`` (their running ``best_key``,
        ``best_i``) from each query's ``want`` float32 candidates; and for each query whether the
        candidates provably held every row of the block that belongs in its top k."""
        k, metric = self.k, self.metric
        queries_f32 = self.query_f32 if len(rows) == len(self.query_f32) else self.query_f32[rows]
        key32, local = self.search_block(queries_f32, self.block_f32, want, metric)
        key32 = key32.astype(np.float64)
        query_sq = self.query_sq[rows, None]
        error = key_error(self.factor, metric, query_sq, self.row_sq[local])
        # the k-th best exact key after this block is at most the k-th smallest of the running
        # exact keys and the candidates' float32 keys plus their error; a candidate whose key less
        # its error exceeds that cannot enter the top k (an unknown, NaN, comparison re-scores)
        ceiling = np.partition(np.concatenate([best_key, key32 + error], 1), k - 1, axis=1)[:, k - 1]
        rescore = ~(key32 - error > ceiling[:, None])
        query_of, slot = np.nonzero(rescore)
        candidate_key = np.full(key32.shape, np.inf)
        candidate_key[query_of, slot] = exact_pair_keys(self.queries, rows[query_of], self.raw, local[query_of, slot],
                                                        metric)
        candidate_i = np.where(rescore, local + self.start, NO_ROW)
        key, index = merge_exact(np.concatenate([best_key, candidate_key], 1),
                                 np.concatenate([best_i, candidate_i], 1), k)
        if want >= len(self.raw):
            return key, index, np.ones(len(rows), bool)
        # a row not returned has a float32 key at least the largest returned, K; it cannot enter
        # the top k (ties included: it might have the lower index) when K exceeds the new exact
        # k-th best, t, by more than any such row's error
        return key, index, key32.max(1) - key[:, -1] > self._unseen_error(query_sq[:, 0], key[:, -1])

    def _unseen_error(self, query_sq, kth):
        """A bound on the float32 key error of any row of the block whose exact key is at most
        ``kth``: the block's largest; for squared L2 also that of a row with |b| <= |q| + sqrt(kth),
        which every such row has (|b| <= |q| + |q - b|)."""
        largest = key_error(self.factor, self.metric, query_sq, self.row_sq.max())
        if self.metric != "l2":
            return largest
        with np.errstate(invalid="ignore"):
            near = key_error(self.factor, "l2", query_sq, (np.sqrt(query_sq) + np.sqrt(np.maximum(kth, 0))) ** 2)
        return np.fmin(largest, near)


def exact_dtype(queries, rows):
    """The torch dtype exact keys are computed in: int32 (with int64 sums) on byte images, exact
    while dim * 255^2 < 2^31 and an eighth of float64's memory traffic; float64 otherwise."""
    import torch

    small_ints = (queries.dtype.itemsize == 1 and rows.dtype.itemsize == 1 and queries.dtype.kind in "iu"
                  and rows.dtype.kind in "iu" and queries.shape[1] * 255 * 255 < 2**31)
    return torch.int32 if small_ints else torch.float64


def exact_pair_keys(queries, query_rows, rows, row_index, metric) -> np.ndarray:
    """Exact keys (float64: squared L2, or negated inner product) of the pairs (``queries[query_rows]``,
    ``rows[row_index]``): int32 arithmetic with int64 sums on byte images, exact while dim * 255^2
    < 2^31, else float64; elementwise on all cores, in chunks of bounded memory."""
    import torch

    dim = queries.shape[1]
    work = exact_dtype(queries, rows)
    chunk = max(1, _PAIR_CHUNK_BYTES // (2 * 8 * dim))
    out = np.empty(len(query_rows), np.float64)
    for start in range(0, len(query_rows), chunk):
        with reading_read_only_arrays():
            q = torch.from_numpy(np.asarray(queries[query_rows[start:start + chunk]])).to(work)
            b = torch.from_numpy(rows[row_index[start:start + chunk]]).to(work)
        # in place on the one converted copy: this pass is memory-bound
        if metric == "l2":
            score = b.sub_(q).mul_(b).sum(-1)
        else:
            score = -b.mul_(q).sum(-1)
        out[start:start + chunk] = score.numpy()
    return out
