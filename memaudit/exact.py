"""Exact k-nearest-neighbour search in one pass over the database, at the speed of its float32 product.

Each block of database rows is read once and converted to float32 once; a flat backend
(``memaudit.flat``) finds every query's ``want`` best rows of it by float32 keys (squared L2 or
negated inner product: smaller is nearer). Float32 keys are not the field's numbers (on 3072-dim
pixel vectors ``|q|^2 + |b|^2 - 2 q.b`` loses whole units), so results come from exact keys only:
float64 from the differences (exact integers on byte images). But a candidate is re-scored only when it can
matter: when its float32 key, less a rigorous bound on that key's rounding error
(``key_error_factor``), could still beat the query's running exact k-th best. After the first
block few candidates pass, so later blocks cost little beyond their matrix product.

With a block backend (GPU, or faiss-cpu / dense torch-cpu when forced), the ``want`` candidates
are enough when every row left out (float32 key at least the largest one returned) provably
cannot enter the top k; for a query where that is not proven (many rows within rounding of each
other) the block is searched again with four times the candidates, up to the whole block. On the
CPU (``TILES_BACKEND``) ``_TileSearch`` takes no dense top-k at all: tiles of the product in one
reused buffer, each query's entries under its running ceiling plus the bound become candidates,
and nothing has to be searched again. Either way the result is what float64 (or integer) keys
over every row give, ties to the lower index.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from memaudit import progress
from memaudit.flat import (FLAT_BACKENDS, TILES_BACKEND, as_float32, flat_backend, full_float32_products,
                           reading_read_only_arrays)
from memaudit.storage import release_mapped_pages

NO_ROW = np.iinfo(np.int64).max  # index of an empty slot (key +inf): sorts after every real row
WIDEN = 4  # a block searched again for a query asks for this many times the candidates
_PAIR_CACHE_BYTES = 512 * 2**10  # float64 differences of one chunk of exact re-scoring (in L2 cache)


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
    ``database``, searched in blocks of about ``block_bytes`` float32 bytes (with ``want`` float32
    candidates per query and block to start from, for the block backends); and the backend that searched."""
    nq, dim = queries.shape
    nb = len(database)
    backend = flat_backend()
    factor = key_error_factor(dim)
    query_f32 = as_float32(queries)
    query_sq = squared_norms_above(query_f32, factor)
    if backend == TILES_BACKEND:
        search = _TileSearch(queries, query_f32, query_sq, k, metric, factor)
    else:
        search = _BlockSearch(queries, query_f32, query_sq, k, metric, factor, FLAT_BACKENDS[backend])
    best_key = np.full((nq, k), np.inf)
    best_i = np.full((nq, k), NO_ROW, np.int64)
    block_rows = max(1, block_bytes // (4 * dim))
    blocks = range(0, nb, block_rows)
    with progress.task(f"nearest neighbours ({nq} queries, {nb} rows)", total=len(blocks)) as advance:
        for start in blocks:
            raw = np.asarray(database[start:start + block_rows])  # read once: the search and the re-score use it
            search.load(raw, start)
            search.search(best_key, best_i, want)
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

    def search(self, best_key, best_i, want) -> None:
        """Merge the resident block into every query's exact top k (``best_key``, ``best_i``, in
        place), searching it again wider for the queries whose candidates did not settle it."""
        pending, width = np.arange(len(best_key)), min(want, len(self.raw))
        while len(pending):
            key, index, settled = self.merge(pending, best_key[pending], best_i[pending], width)
            best_key[pending[settled]], best_i[pending[settled]] = key[settled], index[settled]
            pending, width = pending[~settled], min(WIDEN * width, len(self.raw))

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


QUERY_TILE = 2048  # queries of one tile of the product
ROW_TILE = 1024  # database rows of one tile: 8 MiB of float32 keys, one buffer reused by every tile
U32 = np.finfo(np.float32).eps / 2
POOL_PAIRS = 1 << 20  # candidate pairs held before they are re-scored (bounds memory on near-tied data)


class _TileSearch:
    """Exact search of the resident block on the CPU, in tiles of the float32 product.

    Each tile (``QUERY_TILE`` queries by ``ROW_TILE`` rows) is written by torch's matrix product
    (MKL) into one buffer allocated once, so the search costs the product and little else: no
    score matrix is allocated or page-faulted in, and no dense top-k is taken. A query's tile row
    is looked at only when its minimum could beat the query's ceiling (an upper bound on its
    running exact k-th best key: the exact keys so far and the float32 keys plus their error
    bound), and then only its entries under the ceiling plus the error bound become
    candidates. Candidates are re-scored exactly as in ``_BlockSearch.merge`` (those the bound
    cannot rule out) and merged. Rows come in increasing order, so a later row that only ties the
    k-th best does not enter: ties go to the lower index. Nothing is left out on a bound that
    was not proven, so no block is searched twice.
    """

    def __init__(self, queries, query_f32, query_sq, k, metric, factor):
        import torch

        self.torch, self.queries, self.query_sq = torch, queries, query_sq
        self.k, self.metric, self.factor = k, metric, factor
        self.query_t = torch.from_numpy(query_f32)
        # |q|^2 in float32, added to |b|^2 - 2 q.b as the torch block backend does (the bound covers it)
        self.query_sq32 = torch.from_numpy(squared_norms32(query_f32)) if metric == "l2" else None
        self.local = threading.local()

    def load(self, raw: np.ndarray, start: int) -> None:
        self.raw, self.start = raw, start
        block = as_float32(raw)  # converted once
        self.block = self.torch.from_numpy(block)
        # float32 sums of products, no temporary the size of the block: the product's |b|^2, and as
        # in ``squared_norms_above`` an upper bound on the exact squared norms
        row_sq32 = squared_norms32(block)
        self.row_sq = row_sq32.astype(np.float64) * (1 + 2 * self.factor)
        self.row_sq32 = self.torch.from_numpy(row_sq32) if self.metric == "l2" else None

    def unload(self) -> None:
        self.raw = self.block = self.row_sq = self.row_sq32 = None

    def search(self, best_key, best_i, want=None) -> None:
        """Merge the resident block into every query's exact top k (``best_key``, ``best_i``, in place).

        With several torch threads, each searches its own query tiles on one core (torch's pool set
        to one thread meanwhile): no barrier inside a tile, which matters most on shared cores, and
        the Python and numpy work between products runs on every core too."""
        torch, nq = self.torch, len(best_key)
        threads = torch.get_num_threads()
        # several tiles per thread (balance), none smaller than 256 queries (the product stays efficient)
        size = QUERY_TILE if threads == 1 else min(QUERY_TILE, max(256, -(-nq // (4 * threads))))
        tiles = [np.arange(first, min(nq, first + size)) for first in range(0, nq, size)]
        with reading_read_only_arrays(), full_float32_products(torch):
            if len(tiles) == 1 or threads == 1:
                with torch.inference_mode():
                    for rows in tiles:
                        self._search_queries(rows, best_key, best_i)
                return
            torch.set_num_threads(1)
            try:
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda rows: self._search_queries(rows, best_key, best_i), tiles))
            finally:
                torch.set_num_threads(threads)

    def _search_queries(self, rows, best_key, best_i):
        with self.torch.inference_mode():  # per thread
            self._search_tile_rows(rows, best_key, best_i)

    def _search_tile_rows(self, rows, best_key, best_i):
        torch, k, nb = self.torch, self.k, len(self.block)
        buffer = getattr(self.local, "buffer", None)
        if buffer is None:  # one per thread, kept for every block
            buffer = self.local.buffer = torch.empty(QUERY_TILE * ROW_TILE)
        query = self.query_t[rows[0]:rows[-1] + 1]
        if self.metric == "ip":
            query = -query  # keys -q.b straight from the product
        # every key of this block is within ``error`` of its exact value (largest row norm of the block)
        error = key_error(self.factor, self.metric, self.query_sq[rows], self.row_sq.max())
        # the tile holds keys less the float32 |q|^2 that ``_full_keys`` adds back
        offset = self.query_sq32[rows[0]:rows[-1] + 1].numpy().astype(np.float64) if self.metric == "l2" else 0.0
        ceiling = best_key[rows, k - 1].copy()
        upper = best_key[rows].copy()  # k upper bounds on exact keys of distinct rows, per query
        pool = []
        for low in range(0, nb, ROW_TILE):
            high = min(nb, low + ROW_TILE)
            tile = buffer[:len(rows) * (high - low)].view(len(rows), high - low)
            if self.metric == "l2":  # |b|^2 - 2 q.b in one product (addmm's input + alpha * q @ b^T)
                torch.addmm(self.row_sq32[low:high], query, self.block[low:high].T, alpha=-2, out=tile)
            else:
                torch.mm(query, self.block[low:high].T, out=tile)
            bound = ceiling
            unknown = ~np.isfinite(ceiling)
            if unknown.any():  # fewer than k keys known: the tile's k smallest bound this tile's search
                part = torch.from_numpy(np.flatnonzero(unknown))
                values = torch.topk(tile[part], min(k, high - low), dim=1, largest=False, sorted=False)[0]
                # not kept in ``upper``: these rows come back below as candidates, and one row counted
                # twice would lower the ceiling
                part = part.numpy()
                bound = self._tighten(upper, part, self._full_keys(values, rows[part]), error[part, None])[0]
            # a candidate is a row with float32 key - error <= ceiling; keys less |q|^2 are compared,
            # with slack for the rounding of adding |q|^2 back (u relative; 4 u taken)
            reach = bound + error
            limit = self._limit(reach - offset + 4 * U32 * (np.abs(reach) + offset))
            hit = torch.nonzero(~(tile.amin(1) > limit)).ravel()  # a NaN minimum (NaN rows) looks closer
            if len(hit) == 0:
                continue
            if 2 * len(hit) > len(rows):  # most rows: compare the tile in place rather than gather
                local, column = torch.nonzero(tile <= limit[:, None], as_tuple=True)
            else:
                at, column = torch.nonzero(tile[hit] <= limit[hit, None], as_tuple=True)
                local = hit[at]
            keys = self._full_keys(tile[local, column], rows[local.numpy()])
            local, column = local.numpy(), column.numpy()
            pool.append((local, column + low, keys))
            ceiling, upper = self._tighten(upper, local, keys, key_error(
                self.factor, self.metric, self.query_sq[rows[local]], self.row_sq[column]))
            if sum(len(p[0]) for p in pool) > POOL_PAIRS:  # re-score now: memory stays bounded
                self._merge(rows, pool, ceiling, best_key, best_i)
                pool, upper = [], best_key[rows].copy()
                ceiling = upper[:, k - 1].copy()
        if pool:
            self._merge(rows, pool, ceiling, best_key, best_i)
        self._fill_short(rows, best_key, best_i)

    def _fill_short(self, rows, best_key, best_i):
        """Queries left with fewer than k rows though more were seen had only non-finite keys (NaN,
        which no comparison admits): they get every other row of the block, scored exactly (a NaN
        key sorts last), as a brute force orders them."""
        nb, k = len(self.block), self.k
        filled = (best_i[rows] != NO_ROW).sum(1)
        short = np.flatnonzero(filled < min(k, self.start + nb))
        if len(short) == 0:
            return
        local = np.repeat(short, nb)
        column = np.tile(np.arange(nb), len(short))
        fresh = ~(best_i[rows[local]] == (column + self.start)[:, None]).any(1)
        local, column = local[fresh], column[fresh]
        self._merge(rows, [(local, column, np.full(len(local), np.nan))], np.full(len(rows), np.inf), best_key,
                    best_i)

    def _full_keys(self, values, query_rows) -> np.ndarray:
        """Float32 keys (float64 array) from tile values: squared L2 adds |q|^2 in float32."""
        if self.metric == "l2":
            values = values + self.query_sq32[self.torch.from_numpy(query_rows)].reshape(
                (-1,) + (1,) * (values.dim() - 1))
        return values.numpy().astype(np.float64)

    def _limit(self, bound64: np.ndarray):
        """A float32 tensor at or above every finite bound (rounded up), +inf where unknown."""
        limit = bound64.astype(np.float32)
        limit = np.where(limit < bound64, np.nextafter(limit, np.float32(np.inf)), limit)
        return self.torch.from_numpy(np.where(np.isnan(bound64), np.float32(np.inf), limit))

    def _tighten(self, upper, local, keys, error):
        """The k smallest upper bounds per query after adding candidates' ``keys + error`` (``local``:
        their queries' positions; ``keys`` 1-d, or 2-d with a row per position), and the new ceiling."""
        k = self.k
        bounds = keys + error
        if keys.ndim == 2:
            local, bounds = np.repeat(local, keys.shape[1]), bounds.ravel()
        touched = np.unique(local)  # only the queries with candidates change
        rows = np.concatenate([np.repeat(touched, k), local])
        values = np.concatenate([upper[touched].ravel(), bounds])
        order = np.lexsort((values, rows))
        rows, values = rows[order], values[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
        keep = rank < k
        upper = upper.copy()
        upper[rows[keep], rank[keep]] = values[keep]
        return upper[:, k - 1].copy(), upper

    def _merge(self, rows, pool, ceiling, best_key, best_i):
        """Re-score exactly the pooled candidates the float32 bound cannot rule out and merge them
        into the queries' exact top k, ties to the lower index."""
        local = np.concatenate([p[0] for p in pool])
        column = np.concatenate([p[1] for p in pool])
        key32 = np.concatenate([p[2] for p in pool])
        query_rows = rows[local]
        pair_error = key_error(self.factor, self.metric, self.query_sq[query_rows], self.row_sq[column])
        rescore = ~(key32 - pair_error > ceiling[local])
        local, column, query_rows = local[rescore], column[rescore], query_rows[rescore]
        exact = exact_pair_keys(self.queries, query_rows, self.raw, column, self.metric)
        k = self.k
        at = np.concatenate([np.repeat(np.arange(len(rows)), k), local])
        keys = np.concatenate([best_key[rows].ravel(), exact])
        index = np.concatenate([best_i[rows].ravel(), column + self.start])
        order = np.lexsort((index, keys, index == NO_ROW, at))  # empty slots after every row, NaN keys too
        at, keys, index = at[order], keys[order], index[order]
        rank = np.arange(len(at)) - np.searchsorted(at, at)
        keep = rank < k
        best_key[rows[at[keep]], rank[keep]] = keys[keep]
        best_i[rows[at[keep]], rank[keep]] = index[keep]


def in_threads(count: int, work, pieces: int | None = None) -> None:
    """Run ``work(slice)`` over ``range(count)`` cut into one piece per torch thread, at once:
    numpy's elementwise loops and einsum release the GIL but run on one core each."""
    import torch

    pieces = max(1, min(count, pieces or torch.get_num_threads()))
    cuts = np.linspace(0, count, pieces + 1).astype(int)
    parts = [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    if len(parts) <= 1:
        for part in parts:
            work(part)
        return
    with ThreadPoolExecutor(len(parts)) as pool:
        list(pool.map(work, parts))


def squared_norms32(rows_f32: np.ndarray) -> np.ndarray:
    """Float32 squared norms as sums of products (no temporary the size of ``rows_f32``), on all threads."""
    out = np.empty(len(rows_f32), np.float32)

    def work(part):
        out[part] = np.einsum("ij,ij->i", rows_f32[part], rows_f32[part])

    in_threads(len(rows_f32), work, None if len(rows_f32) >= 4096 else 1)
    return out


def exact_pair_keys(queries, query_rows, rows, row_index, metric) -> np.ndarray:
    """Exact keys (float64: squared L2, or negated inner product) of the pairs (``queries[query_rows]``,
    ``rows[row_index]``), in float64 from the differences (exact on byte images: every partial sum
    is an integer below 2^53), a few pairs at a time so that they stay in cache: the conversion,
    the difference and the dot product are one pass each over data already in cache (on large
    chunks this pass is memory-bound and costs several times more per pair); one share of the
    pairs per torch thread."""
    dim = queries.shape[1]
    chunk = max(1, _PAIR_CACHE_BYTES // (8 * dim))
    out = np.empty(len(query_rows), np.float64)

    def work(part):
        work_rows = np.empty((chunk, dim), np.float64)
        other = np.empty((chunk, dim), np.float64) if metric != "l2" else None
        for start in range(part.start, part.stop, chunk):
            stop = min(part.stop, start + chunk)
            q = np.asarray(queries[query_rows[start:stop]])
            b = np.asarray(rows[row_index[start:stop]])
            diff = work_rows[:len(q)]
            if metric == "l2":
                np.subtract(q, b, out=diff, dtype=np.float64)
                out[start:stop] = np.einsum("ij,ij->i", diff, diff)
            else:
                diff[...] = q
                other[:len(b)] = b
                out[start:stop] = -np.einsum("ij,ij->i", diff, other[:len(b)])

    in_threads(len(query_rows), work, None if len(query_rows) >= 16 * chunk else 1)
    return out
