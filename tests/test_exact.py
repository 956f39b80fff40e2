"""The fused exact pass: its float32 error bound, its pruning and its widening, against float64 brute force."""

import numpy as np
import pytest

from memaudit import exact
from memaudit.exact import key_error, key_error_factor
from memaudit.flat import FLAT_BACKENDS, as_float32
from memaudit.search import knn

CPU_BACKENDS = ["faiss-cpu", "torch-cpu"]  # block backends
SEARCHES = [*CPU_BACKENDS, "torch-cpu-tiles"]  # and the tile search


def exact_keys(queries, database, metric):
    """Independent reference keys in float64: exact on byte images (every partial sum an integer
    below 2^53, so the product form is exact too), differences first on anything else."""
    q, b = queries.astype(np.float64), database.astype(np.float64)
    if metric == "ip":
        return -(q @ b.T)
    if queries.dtype.kind in "iu" and database.dtype.kind in "iu":
        return (q * q).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * (q @ b.T)
    return ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def brute_force(queries, database, k, metric="l2"):
    """The k best rows by exact keys, ties to the lower index."""
    key = exact_keys(queries, database, metric)
    order = np.lexsort((np.broadcast_to(np.arange(len(database)), key.shape), key), axis=1)[:, :k]
    return np.take_along_axis(key, order, 1), order


def near_white_rows(rng, dim, n):
    return rng.integers(240, 256, (n, dim), dtype=np.uint8)


def adversarial_sets(rng):
    """(name, queries, database): large-norm pixel vectors with near ties, and floats whose
    float32 rounding and cancellation both matter."""
    dim = 3072
    base = near_white_rows(rng, dim, 1)[0]
    near = np.repeat(base[None], 64, 0)
    for i, row in enumerate(near):  # squared distances 0..63 to the base, all far below rounding
        row[rng.choice(dim, i, replace=False)] -= 1
    pixels_q = np.concatenate([base[None], near_white_rows(rng, dim, 39)])
    pixels_b = np.concatenate([near, near_white_rows(rng, dim, 64)])
    offset = 1e4 + rng.standard_normal((1, 256))  # large common offset: cancellation in |q - b|^2
    floats_b = offset + 1e-3 * rng.standard_normal((100, 256))
    floats_q = offset + 1e-3 * rng.standard_normal((30, 256))  # float64: not representable in float32
    spread = rng.standard_normal((60, 512)) * np.exp(rng.uniform(-8, 8, (60, 1)))  # norms over 7 decades
    return [("pixels", pixels_q, pixels_b), ("floats", floats_q, floats_b), ("spread", spread[:25], spread[25:])]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("n_queries", [5, 30])  # faiss sums (q - b)^2 directly below 20 queries
def test_float32_keys_are_within_the_bound(backend, metric, n_queries):
    rng = np.random.default_rng(0)
    worst = 0.0
    for name, queries, database in adversarial_sets(rng):
        queries = queries[:n_queries]
        keys, rows = FLAT_BACKENDS[backend](as_float32(queries), as_float32(database), len(database), metric)
        truth = np.take_along_axis(exact_keys(queries, database, metric), rows, 1)
        q_sq = (queries.astype(np.float64) ** 2).sum(1)
        b_sq = (database.astype(np.float64) ** 2).sum(1)
        bound = key_error(key_error_factor(queries.shape[1]), metric, q_sq[:, None], b_sq[rows])
        error = np.abs(keys.astype(np.float64) - truth)
        assert np.all(error <= bound), (name, float((error / bound).max()))
        worst = max(worst, float(error.max()))
    assert worst > 0  # the keys do err: the bound is what keeps the search exact


def test_the_bound_is_infinite_where_it_cannot_hold():
    assert key_error_factor(3072) == pytest.approx(2 * 3080 * np.finfo(np.float32).eps / 2, rel=1e-3)
    assert key_error_factor(2**24) == np.inf


@pytest.mark.parametrize("backend", SEARCHES)
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_pruned_search_on_many_blocks_equals_brute_force(backend, metric, k, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", backend)
    rng = np.random.default_rng(k)
    dim = 768
    database = near_white_rows(rng, dim, 600)
    database[300:340] = database[:40]  # exact duplicates in later blocks: ties to the lower index
    database[400:440] = database[:40]
    database[400:440, :3] -= 1  # near duplicates: squared distance 3
    queries = np.concatenate([database[:40], near_white_rows(rng, dim, 40)])
    queries[40:50, :2] -= 1
    distances, indices = knn(queries, database, k, metric=metric, block_bytes=4 * dim * 23)  # 27 blocks
    ref_key, ref_i = brute_force(queries, database, k, metric)
    np.testing.assert_array_equal(indices, ref_i)
    expected = np.sqrt(ref_key) if metric == "l2" else -ref_key
    np.testing.assert_array_equal(distances, expected.astype(np.float32))


@pytest.mark.parametrize("backend", SEARCHES)
def test_pruned_float_search_equals_float64_brute_force(backend, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", backend)
    rng = np.random.default_rng(9)
    centres = rng.standard_normal((20, 64)) * 100
    database = centres[rng.integers(0, 20, 900)] + rng.standard_normal((900, 64))
    database[500:520] = database[100:120]  # ties
    queries = database[rng.integers(0, 900, 60)] + 1e-6 * rng.standard_normal((60, 64))
    _, indices = knn(queries, database, 3, block_bytes=4 * 64 * 50)
    np.testing.assert_array_equal(indices, brute_force(queries, database, 3)[1])


@pytest.mark.parametrize("backend", SEARCHES)
def test_later_blocks_rescore_only_what_can_matter(backend, monkeypatch):
    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", backend)
    rescored = []
    pair_keys = exact.exact_pair_keys

    def counted(queries, query_rows, *rest):
        rescored.append(len(query_rows))
        return pair_keys(queries, query_rows, *rest)

    monkeypatch.setattr(exact, "exact_pair_keys", counted)
    rng = np.random.default_rng(4)
    database = rng.integers(0, 256, (4000, 192), dtype=np.uint8)
    queries = rng.integers(0, 256, (200, 192), dtype=np.uint8)
    _, indices = knn(queries, database, 2, block_bytes=4 * 192 * 400)  # 10 blocks of 400 rows
    np.testing.assert_array_equal(indices, brute_force(queries, database, 2)[1])
    assert len(rescored) == 10
    assert rescored[0] < 200 * 10  # even the first block: not all k + 8 candidates
    assert sum(rescored[5:]) < 200 * 2  # late blocks: few candidates beat the running k-th best


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_a_block_is_searched_wider_when_rounding_hides_the_top_k(backend, monkeypatch):
    # 300 rows at squared distances 1..300 from the query, on 3072-dim near-white pixels where float32
    # keys are off by tens: k + 8 float32 candidates need not hold the true 2 nearest
    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", backend)
    rng = np.random.default_rng(3)
    dim = 3072
    query = near_white_rows(rng, dim, 1)
    database = np.repeat(query, 300, 0)
    for row, distance in zip(database, rng.permutation(np.arange(1, 301))):
        row[rng.choice(dim, distance, replace=False)] -= 1
    queries = np.repeat(query, 30, 0)  # 30 copies: the matrix-product path of every backend
    widths = []
    search_block = FLAT_BACKENDS[backend]

    def recorded(queries, block, want, metric):
        widths.append(want)
        return search_block(queries, block, want, metric)

    monkeypatch.setitem(FLAT_BACKENDS, backend, recorded)
    distances, indices = knn(queries, database, 2)
    ref_key, ref_i = brute_force(queries, database, 2)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_array_equal(distances[0], np.sqrt([1, 2], dtype=np.float32))
    assert widths[0] == 10 and widths[-1] > 10  # searched again, wider


def test_torch_products_run_in_full_float32_whatever_the_caller_allowed(monkeypatch):
    import torch

    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", "torch-cpu")
    rng = np.random.default_rng(8)
    database = near_white_rows(rng, 1024, 300)
    queries = database[:25].copy()
    queries[:, 0] -= 1
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        _, indices = knn(queries, database, 2, block_bytes=4 * 1024 * 64)
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    np.testing.assert_array_equal(indices, brute_force(queries, database, 2)[1])
