"""The CPU tile search (exact._TileSearch, backend torch-cpu-tiles) against a float64 brute force,
on random and adversarial data, with tiles and blocks that do not divide the sets; and its memory."""

import tracemalloc

import numpy as np
import pytest

from memaudit import exact
from memaudit.search import knn


def brute_force(queries, database, k, metric):
    """Float64 keys by differences (products for ip) summed pair by pair, ties to the lower index
    (a BLAS product could round equal rows differently in different columns)."""
    q, b = queries.astype(np.float64)[:, None, :], database.astype(np.float64)[None, :, :]
    key = ((q - b) ** 2).sum(-1) if metric == "l2" else -(q * b).sum(-1)
    order = np.lexsort((np.broadcast_to(np.arange(len(b)), key.shape), key), axis=1)[:, :k]
    key = np.take_along_axis(key, order, 1)
    return (np.sqrt(key) if metric == "l2" else -key).astype(np.float32), order


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 7 queries by 13 rows (neither divides the sets), one search per test."""
    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", "torch-cpu-tiles")
    monkeypatch.setattr(exact, "QUERY_TILE", 7)
    monkeypatch.setattr(exact, "ROW_TILE", 13)


def adversarial(rng, dtype, dim=40):
    """Duplicated rows (within a tile, across tiles and blocks), rows at equal distance from a
    query, near-equal distances (one unit apart), and queries equal to rows."""
    if dtype == np.uint8:
        database = rng.integers(1, 255, (300, dim)).astype(np.uint8)  # room for +-1
    else:
        database = (rng.standard_normal((300, dim)) * 3).astype(dtype)
    database[[20, 21, 150, 299]] = database[5]  # exact duplicates of row 5
    database[60:90] = database[30]  # a run of 31 equal rows: k beyond a tile and a block
    near = database[100].copy()
    for i, row in enumerate(database[200:210]):  # one coordinate +1 or -1: ties and near ties
        row[:] = near
        row[i % dim] = near[i % dim] + dtype(1) if i % 2 else near[i % dim] - dtype(1)
    queries = np.concatenate([database[[5, 30, 100, 299, 0]], rng.permutation(database)[:20].copy()])
    queries[5:, 0] += dtype(1)  # near, not equal
    return queries, database


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("k", [1, 3, 17])
def test_tile_search_equals_float64_brute_force_on_adversarial_data(small_tiles, dtype, metric, k):
    queries, database = adversarial(np.random.default_rng(k), dtype)
    distances, indices = knn(queries, database, k, metric=metric, block_bytes=4 * 40 * 50)  # 50-row blocks
    ref_d, ref_i = brute_force(queries, database, k, metric)
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_array_equal(distances, ref_d)


@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
def test_tile_search_equals_float64_brute_force_on_random_data(small_tiles, dtype):
    rng = np.random.default_rng(5)
    if dtype == np.uint8:
        database, queries = (rng.integers(0, 256, (n, 64)).astype(np.uint8) for n in (500, 61))
    else:
        database, queries = (rng.standard_normal((n, 64)).astype(np.float32) for n in (500, 61))
    distances, indices = knn(queries, database, 4, block_bytes=4 * 64 * 97)
    ref_d, ref_i = brute_force(queries, database, 4, "l2")
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_array_equal(distances, ref_d)


def test_large_pixel_vectors_with_near_ties_are_exact(monkeypatch):
    # 3072-dim near-white pixels at squared distances 1..300 from the query: float32 keys are off
    # by tens, so only the float64 re-score separates them; default tile sizes
    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", "torch-cpu-tiles")
    rng = np.random.default_rng(3)
    query = rng.integers(240, 256, (1, 3072), dtype=np.uint8)
    database = np.repeat(query, 300, 0)
    for row, distance in zip(database, rng.permutation(np.arange(1, 301))):
        row[rng.choice(3072, distance, replace=False)] -= 1
    queries = np.repeat(query, 30, 0)
    distances, indices = knn(queries, database, 2, block_bytes=4 * 3072 * 120)
    np.testing.assert_array_equal(indices, brute_force(queries, database, 2, "l2")[1])
    np.testing.assert_array_equal(distances[0], np.sqrt([1, 2], dtype=np.float32))


def test_candidates_beyond_the_pool_are_re_scored_early(small_tiles, monkeypatch):
    # all rows equal but a few: every row is a candidate; a pool of 16 pairs is re-scored again
    # and again inside a block, and the result is still exact
    monkeypatch.setattr(exact, "POOL_PAIRS", 16)
    merges = []
    merge = exact._TileSearch._merge

    def counted(self, *args):
        merges.append(1)
        return merge(self, *args)

    monkeypatch.setattr(exact._TileSearch, "_merge", counted)
    rng = np.random.default_rng(2)
    database = np.repeat(rng.standard_normal((1, 24)).astype(np.float32), 120, 0)
    database[[17, 64, 101]] += 1e-3
    queries = np.concatenate([database[:3], database[[17, 64]]])
    distances, indices = knn(queries, database, 5, block_bytes=4 * 24 * 40)
    ref_d, ref_i = brute_force(queries, database, 5, "l2")
    np.testing.assert_array_equal(indices, ref_i)
    np.testing.assert_array_equal(distances, ref_d)
    assert len(merges) > 3 * 1  # more than one merge per query tile and block


def test_the_product_is_never_materialised(monkeypatch):
    """Every product goes into the one buffer of QUERY_TILE x ROW_TILE keys, and numpy allocates
    nowhere near the (queries x rows) product."""
    import torch

    monkeypatch.setenv("MEMAUDIT_FLAT_BACKEND", "torch-cpu-tiles")
    monkeypatch.setattr(exact, "QUERY_TILE", 64)
    monkeypatch.setattr(exact, "ROW_TILE", 128)
    shapes = []
    addmm = torch.addmm

    def recorded(*args, out=None, **kwargs):
        shapes.append(out.shape)
        return addmm(*args, out=out, **kwargs)

    monkeypatch.setattr(torch, "addmm", recorded)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((1000, 16)).astype(np.float32)
    database = rng.standard_normal((3000, 16)).astype(np.float32)
    tracemalloc.start()
    try:
        knn(queries, database, 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert shapes and all(rows <= 64 and cols <= 128 for rows, cols in shapes)
    assert len(shapes) == int(np.ceil(1000 / 64)) * int(np.ceil(3000 / 128))
    assert peak < 4 * 1000 * 3000 / 8  # an eighth of the float32 product


def test_results_do_not_depend_on_the_thread_count():
    import torch

    rng = np.random.default_rng(1)
    database = rng.standard_normal((2000, 96)).astype(np.float32)
    queries = rng.standard_normal((300, 96)).astype(np.float32)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = knn(queries, database, 3)
        torch.set_num_threads(2)
        two = knn(queries, database, 3)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one[1], two[1])
    np.testing.assert_array_equal(one[0], two[0])  # exact keys: the same float64 sums


def test_the_throughput_benchmark_runs_small_and_checks_exactness(capsys, monkeypatch):
    import json

    from memaudit import progress

    monkeypatch.setattr(progress, "_enabled", progress._enabled)  # the benchmark turns it off
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import knn_throughput

    result = knn_throughput.main(["--nq", "60", "--nb", "700", "--dim", "48", "--threads", "1,2", "--check", "30"])
    assert json.loads(capsys.readouterr().out) == result
    assert [run["threads"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert {p["threads"] for p in run["pools"]} == {run["threads"]}  # every pool under the limit
        for dtype in ("float32", "uint8"):
            assert set(run[dtype]) == {"knn", "faiss_flat_l2"} and run[dtype]["knn"]["vs_gemm"] > 0
    assert all(check["same_indices"] and check["same_float32_distances"] for check in result["exact"].values())


def test_non_finite_values_still_give_k_rows_ordered_as_a_brute_force(small_tiles):
    rng = np.random.default_rng(7)
    database = rng.standard_normal((90, 12)).astype(np.float32)
    database[[3, 40]] = np.nan
    queries = np.concatenate([rng.standard_normal((6, 12)).astype(np.float32), np.full((2, 12), np.nan, np.float32)])
    _, indices = knn(queries, database, 4, block_bytes=4 * 12 * 25)
    np.testing.assert_array_equal(indices, brute_force(queries, database, 4, "l2")[1])
