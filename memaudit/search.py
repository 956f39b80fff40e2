"""k-nearest-neighbour search through faiss, in bounded memory, exact where it matters.

Exact search visits the database in blocks (a memory-mapped training set never has to fit in RAM)
in one fused pass (``memaudit.exact``): while a block is resident its float32 top candidates (k plus
a margin; on the CPU, those under its running k-th best) are found, those a rigorous bound on
float32 rounding cannot rule out are re-scored exactly (float64 from differences: exact integers
on byte images), and only exact scores are merged: faiss's float32 ``|q|^2 + |b|^2 - 2 q.b``
loses units in the last place on large pixel vectors.
Beyond ``exact_limit`` rows (``index="auto"``) or when asked, an approximate index
(``memaudit.indexes``: IVF-PQ, IVF, HNSW; built once and kept in the cache when the caller names
the vectors) proposes candidates instead, which are re-ranked from the (memory-mapped) database in
two stages (all in float32, the best k + RESCORE_MARGIN exactly); its search setting (nprobe, ef)
and re-rank depth are picked by ``memaudit.tuning`` on a sample of the queries, and the choice kept
beside the index for the next search of the same sample. So NN1/NN2 distances are exact for the
candidates found; ties go to the lower index.

Exact blocks are searched by faiss-gpu when installed, else by a torch matrix product and top-k
on CUDA when there is a GPU, else on the CPU by torch's product in tiles pruned by each query's
running k-th best (``memaudit.exact``; see ``flat_backend``); approximate indexes are faiss's.

In a distributed run (torchrun) exact search splits the database into one contiguous row range
per rank: each rank searches its range for every query, keeps its exact top k, and the ranks' exact
scores are merged (ties to the lower index), which gives what one process finds over the whole
database. With ``shard="queries"`` (the default for approximate indexes, which every rank loads
whole, and for query sets larger in float32 than ``QUERY_SHARD_BYTES``) each rank searches its own
row range of the queries against everything instead, so a rank converts and holds only its shard.

Metrics: ``l2`` (distances, ascending) and ``ip`` (inner products, descending: cosine similarity
on L2-normalised features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memaudit import distributed, indexes, progress, tuning
from memaudit.errors import InputError
from memaudit.exact import exact_pair_keys, fused_exact
from memaudit.exact import merge_exact as _merge_exact
from memaudit.flat import as_float32, flat_backend, reading_read_only_arrays
from memaudit.storage import gather_rows, release_mapped_pages

DEFAULT_BLOCK_BYTES = 256 * 2**20  # float32 bytes of one database block
RESCORE_MARGIN = 8  # candidates beyond k, against float32 rounding (exact search re-scores only what it could misplace)
DEFAULT_EXACT_LIMIT = 2_000_000  # database rows searched exactly by default
QUERY_SHARD_BYTES = 2**30  # float32 queries beyond this are sharded across ranks, not the database
METRICS = ("l2", "ip")
INDEXES = ("auto", "flat", *indexes.INDEX_KINDS)
SHARDS = ("auto", "database", "queries")
QUERY_CHUNK = 8192  # queries searched in one approximate-index call
PQ_DEPTHS = (1, 2, 4, 8, 16, 32, 64, 128)  # IVF-PQ re-rank depths tried, in multiples of k + RESCORE_MARGIN
_RESCORE_CHUNK_BYTES = 64 * 2**20
SEQUENTIAL_SHARE = 16  # candidates beyond 1 in 16 database rows are read in one pass over it
RERANK_GATHER_ROWS = 8192  # candidate rows read between two releases of the mapping (at most 512 MiB mapped)


@dataclass
class Approximate:
    """Settings of approximate search: build parameters (None: ``indexes.default_params``), the
    search setting and re-rank depth (None: tuned to ``target_recall``), and ``vectors_key``, what
    identifies the database's vectors (the feature cache key): with it the index is kept in
    ``$MEMAUDIT_CACHE`` and reused, without it built in memory for this call only."""

    nlist: int | None = None
    m: int | None = None
    nbits: int | None = None
    setting: int | None = None  # nprobe (ivf, ivf-pq) or ef (hnsw)
    depth: int | None = None  # candidates re-scored exactly per query
    target_recall: float = tuning.DEFAULT_TARGET_RECALL
    recall_sample: int = tuning.RECALL_SAMPLE
    measure: bool = True  # measure the held-out recall (off: a second search reusing a tuned setting)
    vectors_key: str | None = None


@dataclass
class SearchInfo:
    """How a search ran, for audit.json."""

    index: str
    metric: str
    candidates: int
    device: str
    recall: float | None = None  # held-out recall@2 of an approximate index against exact search
    params: dict | None = None  # the index's build parameters
    index_digest: str | None = None  # its cache key (None: exact, or built in memory only)
    built: bool | None = None  # built by this search (False: loaded from the cache)
    setting: dict | None = None  # {"nprobe"|"ef": value}
    tuning: dict | None = None  # target, sample sizes, the settings tried
    exact_fallback: int | None = None  # queries the index proposed fewer than k rows for, searched exactly
    shard: str | None = None  # what ranks split (not in audit.json: a run on N ranks writes what one process writes)

    def as_dict(self) -> dict:
        return {"index": self.index, "metric": self.metric, "candidates": self.candidates, "device": self.device,
                "recall_at_k": self.recall, "params": self.params, "index_digest": self.index_digest,
                "built": self.built, "setting": self.setting, "tuning": self.tuning,
                "exact_fallback": self.exact_fallback}


def _as_matrix(array: np.ndarray, name: str) -> np.ndarray:
    if not hasattr(array, "shape") or len(array.shape) < 1:
        raise InputError(f"{name}: expected an array of shape (n, ...), got {type(array).__name__}")
    return array.reshape(len(array), -1) if len(array.shape) != 2 else array


def _validate(queries, database, k, metric, index, shard):
    queries = _as_matrix(queries, "queries")
    database = _as_matrix(database, "database")
    if database.shape[1] != queries.shape[1]:
        raise InputError(f"database: rows have {database.shape[1]} values but queries have {queries.shape[1]}; both must match")
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= database.shape[0]:
        raise InputError(f"k: must be an integer from 1 to the database size {database.shape[0]}, got {k!r}")
    if metric not in METRICS:
        raise InputError(f"metric {metric!r}: expected one of {', '.join(METRICS)}")
    if index not in INDEXES:
        raise InputError(f"index {index!r}: expected one of {', '.join(INDEXES)}")
    if shard not in SHARDS:
        raise InputError(f"shard {shard!r}: expected one of {', '.join(SHARDS)}")
    return queries, database


def knn(queries: np.ndarray, database: np.ndarray, k: int, *, metric: str = "l2", index: str = "flat",
        exact_limit: int = DEFAULT_EXACT_LIMIT, block_bytes: int = DEFAULT_BLOCK_BYTES,
        info: SearchInfo | None = None, dtype=np.float32, approximate: Approximate | None = None,
        shard: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The k nearest database rows of each query.

    ``queries`` (nq, ...) and ``database`` (nb, ...) are flattened per row; any numeric dtype,
    including a ``np.memmap``. Returns ``(distances, indices)``, both (nq, k): float32 L2
    distances (not squared) sorted ascending, or float32 inner products sorted descending for
    ``metric="ip"``; int64 database row indices; ties by the lower index. ``index="flat"`` is
    exact; ``"ivf-pq"``, ``"ivf"``, ``"hnsw"`` approximate (``approximate`` sets them up);
    ``"auto"`` is exact up to ``exact_limit`` rows, IVF-PQ beyond. Pass a ``SearchInfo`` to learn
    which index ran, how it was set and its held-out recall.
    ``dtype=np.float64`` returns the exact float64 rescored values instead of float32.
    In a distributed run it is a collective: every rank calls it with the same arguments, searches
    its rows of ``database`` (or of ``queries``: ``shard``), and returns the merged result.
    """
    queries, database = _validate(queries, database, k, metric, index, shard)
    nq, nb = len(queries), len(database)
    kind = ("flat" if nb <= exact_limit else "ivf-pq") if index == "auto" else index
    if nq == 0:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    world = distributed.current()
    if shard == "auto":
        shard = "queries" if kind != "flat" or 4 * nq * queries.shape[1] > QUERY_SHARD_BYTES else "database"
    if kind == "flat":
        if shard == "queries":
            start, stop = world.row_range(nq)
            keys, indices, device = _flat_search(queries[start:stop], database, k, metric, block_bytes)
            keys, indices = world.concat_rows(keys), world.concat_rows(indices)
        else:  # each rank its row range of the database (the whole database in a single process)
            keys, indices, device = _exact_collective(queries, database, k, metric, block_bytes)
        details = {"candidates": min(nb, k + RESCORE_MARGIN)}
    else:
        keys, indices, details = _approximate_search(queries, database, k, metric, kind, block_bytes,
                                                     approximate or Approximate())
        device = "faiss-cpu"
    if info is not None:
        info.index, info.metric, info.device, info.shard = kind, metric, device, shard if world.distributed else None
        for name, value in details.items():
            setattr(info, name, value)
    return _key_to_result(keys, metric, dtype), indices


def _flat_search(queries, rows, k, metric, block_bytes):
    """Exact keys (float64, smaller is nearer) and row indices of each query's top min(k, rows)
    among ``rows``, and the device that searched."""
    if len(rows) == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float64), np.zeros((len(queries), 0), np.int64), flat_backend()
    return fused_exact(queries, rows, min(k, len(rows)), k + RESCORE_MARGIN, metric, block_bytes)


def _key_to_result(keys: np.ndarray, metric: str, dtype=np.float32) -> np.ndarray:
    """L2 distances from squared distances, or inner products from their negations (float32 unless asked)."""
    return (np.sqrt(keys) if metric == "l2" else -keys).astype(dtype)


def _approximate_search(queries, database, k, metric, kind, block_bytes, options: Approximate):
    """Exact keys and indices of each query's k best among an approximate index's candidates, the
    index's search setting and re-rank depth tuned on a sample of the queries (``memaudit.tuning``)
    unless given; and what audit.json records of it."""
    nq, dim = queries.shape
    nb = len(database)
    params = indexes.default_params(kind, nb, dim, options.nlist, options.m, options.nbits)
    loaded = indexes.obtain(database, params, metric, options.vectors_key, block_bytes)
    base = min(nb, k + RESCORE_MARGIN)
    if options.depth is not None:
        depths = [min(nb, max(k, options.depth))]
    elif kind == "ivf-pq":  # PQ scores are approximate: re-rank deeper when that is cheaper than probing more
        depths = sorted({min(nb, base * f) for f in PQ_DEPTHS})
    else:  # IVF and HNSW score with the float32 vectors themselves
        depths = [base]
    settings = [options.setting] if options.setting is not None else indexes.parameter_grid(params, max(depths))
    recall_k = min(k, tuning.RECALL_AT)

    def search(rows, setting, depth_list):
        found = indexes.candidates(loaded, queries[rows], max(depth_list), setting)
        return _rerank(queries[rows], database, found, k, metric, depth_list, block_bytes)

    def cost(setting, depth):  # bytes read per query: index codes scanned plus rows re-scored
        return indexes.scanned_per_query(loaded, nb, setting) + depth * dim * database.dtype.itemsize

    tune_rows, held_rows = tuning.split_sample(nq, options.recall_sample)
    sample = np.union1d(tune_rows, held_rows)
    need_exact = options.measure or len(settings) > 1 or len(depths) > 1
    details = {"params": params.as_dict(), "index_digest": loaded.digest, "built": loaded.built, "recall": None}
    if need_exact:  # exact ground truth on the sample only
        exact_keys, details["truth"] = _sample_truth(queries[sample], database, recall_k, metric, block_bytes,
                                                     options.vectors_key)
        exact_of = {int(row): j for j, row in enumerate(sample)}
        tune_exact = exact_keys[[exact_of[int(r)] for r in tune_rows]]
        held_exact = exact_keys[[exact_of[int(r)] for r in held_rows]]
    world = distributed.current()
    if len(settings) > 1 or len(depths) > 1:
        # the choice is kept beside the index, keyed by what it depends on: an audit of the same
        # samples (a rerun, other thresholds) does not tune again
        saved = None if loaded.digest is None else indexes.choice_path(
            loaded.digest, queries[tune_rows], k, options.target_recall, settings, depths)
        choice = None if saved is None else indexes.load_choice(saved)
        reused = world.all_agree(choice is not None)
        if not reused:  # every rank tunes on the same rows, so all choose alike
            choice = tuning.choose(settings, depths, lambda s: {d: v[0] for d, v in search(tune_rows, s, depths).items()},
                                   tune_exact, recall_k, options.target_recall, cost)
            if saved is not None and world.is_main:
                indexes.save_choice(saved, choice)
        setting, depth = choice.setting, choice.depth
        slots = len(tune_rows) * recall_k
        trace = {"tuned": True, "choice": "cached" if reused else "computed",
                 "tuning_recall": round(choice.tuning_recall, 6),
                 "tuning_recall_low95": round(tuning.lower_bound(choice.tuning_recall, slots), 6),
                 "reached": choice.reached, "tried": choice.tried}
    else:
        setting, depth, trace = settings[0], depths[0], {"tuned": False}
    # every query: each rank its own rows against the whole index, re-scored exactly
    start, stop = world.row_range(nq)
    keys, found = np.zeros((0, k)), np.zeros((0, k), np.int64)
    chunks = range(start, stop, QUERY_CHUNK)
    short_answers = 0
    with progress.task(f"searching the {kind} index", total=len(chunks)) as advance:
        parts = []
        for first in chunks:  # in chunks: bounded candidate arrays, and progress
            rows = np.arange(first, min(stop, first + QUERY_CHUNK))
            part_keys, part_found = search(rows, setting, [depth])[depth]
            # the probed lists held fewer than k distinct rows (the index pads with repeats, re-scored
            # as +inf): search those queries exactly, or an infinite d2 would pass any ratio test
            short = ~np.isfinite(part_keys[:, -1])
            if short.any():
                part_keys[short], part_found[short], _ = _flat_search(queries[rows[short]], database, k, metric,
                                                                      block_bytes)
                short_answers += int(short.sum())
            parts.append((part_keys, part_found))
            advance()
    if parts:
        keys, found = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    keys, found = world.concat_rows(keys), world.concat_rows(found)
    if options.measure:  # the held-out rows were searched with every query, at the chosen setting
        details["recall"] = tuning.recall(keys[held_rows], held_exact, recall_k)
        trace.update(target_recall=options.target_recall, recall_at=recall_k, tuning_queries=len(tune_rows),
                     held_out_queries=len(held_rows))
        if details["recall"] < options.target_recall:
            progress.note(f"{kind} search reached recall@{recall_k} {details['recall']:.4f} on held-out queries, "
                          f"below the target {options.target_recall}; raise --{indexes.search_parameter(params)} "
                          "or use --index flat")
    if "truth" in details:
        trace["ground_truth"] = details.pop("truth")
    details.update(setting={indexes.search_parameter(params): int(setting)}, candidates=int(depth), tuning=trace,
                   exact_fallback=sum(world.all_gather_json(short_answers)))
    return keys, found, details


def _rerank(queries, database, candidates, k, metric, depths, block_bytes=DEFAULT_BLOCK_BYTES):
    """For each depth, the exact keys and rows of each query's k best among the first ``depth``
    ``candidates``, re-ranked in two stages: every candidate row is read once and scored in float32,
    and each depth's best k + RESCORE_MARGIN by that score (ties to the lower row) are re-scored
    exactly (``_rescore``), as exact search's blocks are. Reading and scoring hundreds of candidates
    a query exactly in float64 would cost several times more (the conversion alone)."""
    coarse = _float32_keys(queries, database, candidates, metric, block_bytes)
    # a row proposed twice (an index pads a short answer with repeats) keeps its first column only,
    # or its copies would crowd the others out of the short list
    by_row = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, by_row, 1)
    repeat = np.zeros(candidates.shape, bool)
    np.put_along_axis(repeat, by_row, np.concatenate([np.zeros((len(ranked), 1), bool), ranked[:, 1:] == ranked[:, :-1]], 1), 1)
    coarse[repeat] = np.inf
    result = {}
    for depth in depths:
        keep = min(depth, k + RESCORE_MARGIN)
        order = np.lexsort((candidates[:, :depth], coarse[:, :depth]), axis=1)[:, :keep]
        result[depth] = _rescore(queries, database, np.take_along_axis(candidates[:, :depth], order, 1), k, metric)
    return result


def _float32_keys(queries, database, candidates, metric, block_bytes=DEFAULT_BLOCK_BYTES):
    """float32 keys (squared L2, or negated inner product: smaller is nearer) of every candidate.

    Few candidates are read row by row; once they are more than one in ``SEQUENTIAL_SHARE`` of the
    database rows, in one forward pass over it instead (a random read of a memory-mapped row costs
    as much as reading ~16 in sequence: the kernel maps and reads ahead around each fault)."""
    if candidates.size * SEQUENTIAL_SHARE > len(database):
        return _float32_keys_in_one_pass(queries, database, candidates, metric, block_bytes)
    return _float32_keys_by_rows(queries, database, candidates, metric)


def _float32_keys_in_one_pass(queries, database, candidates, metric, block_bytes):
    """``_float32_keys`` with the (query, candidate) pairs sorted by row and the database visited in
    blocks: each block's pairs are scored while it is resident, then its pages let go."""
    import torch

    nq, width = candidates.shape
    dim = queries.shape[1]
    pairs = np.argsort(candidates, axis=None, kind="stable")  # flat (query, column) positions by row
    rows = candidates.ravel()[pairs]
    out = np.empty(nq * width, np.float32)
    block_rows = max(1, block_bytes // (4 * dim))
    piece = max(1, _RESCORE_CHUNK_BYTES // (8 * dim))  # pairs scored at once: their rows and queries
    with reading_read_only_arrays():
        q32 = torch.from_numpy(as_float32(queries))
        for start in range(0, len(database), block_rows):
            low, high = np.searchsorted(rows, [start, start + block_rows])
            for first in range(low, high, piece):
                last = min(high, first + piece)
                row = torch.from_numpy(as_float32(database[rows[first:last]]))  # increasing rows: read forwards
                query = q32[torch.from_numpy(pairs[first:last] // width)]
                if metric == "l2":  # differences, not |q|^2 + |r|^2 - 2 q.r: near-duplicates would cancel
                    row.sub_(query)
                    out[pairs[first:last]] = torch.einsum("ij,ij->i", row, row).numpy()
                else:
                    out[pairs[first:last]] = torch.einsum("ij,ij->i", row, query).neg_().numpy()
            release_mapped_pages(database)
    return out.reshape(nq, width)


def _float32_keys_by_rows(queries, database, candidates, metric):
    """``_float32_keys`` a chunk of queries at a time, each chunk's distinct rows read once (in
    increasing order)."""
    import torch

    nq, width = candidates.shape
    dim = queries.shape[1]
    chunk = max(1, _RESCORE_CHUNK_BYTES // (4 * width * dim))
    out = np.empty((nq, width), np.float32)
    for start in range(0, nq, chunk):
        idx = candidates[start:start + chunk]
        unique = np.unique(idx)
        with reading_read_only_arrays():
            q = torch.from_numpy(as_float32(queries[start:start + chunk]))
            rows = torch.from_numpy(as_float32(gather_rows(database, unique, RERANK_GATHER_ROWS))[np.searchsorted(unique, idx)])
        if metric == "l2":  # differences, not |q|^2 + |r|^2 - 2 q.r: near-duplicates would cancel
            out[start:start + chunk] = torch.cdist(q[:, None, :], rows, compute_mode="donot_use_mm_for_euclid_dist"
                                                   )[:, 0, :].square_().numpy()
        else:
            out[start:start + chunk] = -torch.bmm(rows, q[:, :, None])[..., 0].numpy()
    return out


def _sample_truth(sample_queries, database, k, metric, block_bytes, vectors_key):
    """Exact keys of the sample's k nearest (a collective: the database is split by rank), from the
    cache when these very queries were searched against these vectors before; and which it was."""
    if vectors_key is None:
        return _exact_collective(sample_queries, database, k, metric, block_bytes)[0], "computed"
    world = distributed.current()
    path = indexes.truth_path(vectors_key, metric, k, len(database), database.shape[1], sample_queries)
    keys = indexes.load_truth(path, len(sample_queries), k)
    if world.all_agree(keys is not None):
        return keys, "cached"
    keys = _exact_collective(sample_queries, database, k, metric, block_bytes)[0]
    if world.is_main:
        indexes.save_truth(path, keys)
    return keys, "computed"


def persist_index(database, kind: str, metric: str, approximate: Approximate,
                  block_bytes: int = DEFAULT_BLOCK_BYTES) -> dict:
    """Build the ``kind`` index of ``database`` into the cache (``approximate.vectors_key`` names the
    vectors) unless there already, as ``knn`` with the same settings would find it; what it holds."""
    if kind not in indexes.INDEX_KINDS:
        raise InputError(f"--index {kind}: an index to build is one of {', '.join(indexes.INDEX_KINDS)}")
    if approximate.vectors_key is None:
        raise InputError("the vectors of an index to keep need an identity (a training set's fingerprint)")
    database = _as_matrix(database, "database")
    params = indexes.default_params(kind, len(database), database.shape[1], approximate.nlist, approximate.m,
                                    approximate.nbits)
    loaded = indexes.obtain(database, params, metric, approximate.vectors_key, block_bytes)
    return {"index": kind, "params": params.as_dict(), "index_digest": loaded.digest, "built": loaded.built,
            "path": str(loaded.path)}


def _exact_collective(queries, database, k, metric, block_bytes):
    """Exact search split by database rows across ranks (every rank gets the merged result)."""
    world = distributed.current()
    start, stop = world.row_range(len(database))
    keys, indices, device = _flat_search(queries, database[start:stop], k, metric, block_bytes)
    indices += start
    if world.distributed:
        keys, indices = _merge_exact(world.concat_columns(keys), world.concat_columns(indices), k)
    return keys, indices, device


def l2_from_cosine(similarities) -> np.ndarray:
    """L2 distances between unit vectors from their cosine similarities: |a - b| = sqrt(2 - 2 cos)."""
    return np.sqrt(np.clip(2.0 - 2.0 * np.asarray(similarities, dtype=np.float64), 0.0, None))


def _rescore(queries, database, candidate_idx, k, metric):
    """Exact float64 keys (squared L2, or negated inner product) of each query's k best candidates,
    best first, ties by index."""
    nq, width = candidate_idx.shape
    dim = queries.shape[1]
    chunk = max(1, _RESCORE_CHUNK_BYTES // (8 * width * dim))
    out_key = np.empty((nq, k), np.float64)
    out_i = np.empty((nq, k), np.int64)
    for start in range(0, nq, chunk):
        idx = candidate_idx[start:start + chunk]
        unique = np.unique(idx)  # sorted, so a memmap is read forwards once
        # the same float64 keys as exact search computes for the same pair (tuning compares them)
        score = exact_pair_keys(np.asarray(queries[start:start + chunk]), np.repeat(np.arange(len(idx)), width),
                                gather_rows(database, unique), np.searchsorted(unique, idx).ravel(),
                                metric).reshape(len(idx), width)
        # duplicate candidates (an index can propose a row twice) sort next to each other; drop repeats
        order = np.lexsort((idx, score), axis=1)
        score, idx = np.take_along_axis(score, order, 1), np.take_along_axis(idx, order, 1)
        repeated = np.zeros_like(idx, dtype=bool)
        repeated[:, 1:] = idx[:, 1:] == idx[:, :-1]
        score = np.where(repeated, np.inf, score)
        order = np.lexsort((idx, score), axis=1)[:, :k]
        out_key[start:start + chunk] = np.take_along_axis(score, order, 1)
        out_i[start:start + chunk] = np.take_along_axis(idx, order, 1)
    return out_key, out_i
