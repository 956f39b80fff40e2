"""Run under torchrun by test_distributed.py: the process-group primitives and the row-split search.

    torchrun --standalone --nproc_per_node N tests/distributed_worker.py INPUT.npz OUTPUT.npz

Rank 0 saves what every rank computed; the test compares it with one process and with numpy.
"""

import json
import sys

import numpy as np

from memaudit import distributed
from memaudit.search import Approximate, SearchInfo, knn


def main(source: str, target: str) -> None:
    world = distributed.init_from_environment()
    data = np.load(source)
    results = {}
    for name in ("floats", "pixels"):
        queries, database = data[f"{name}_queries"], data[f"{name}_database"]
        for metric in ("l2", "ip") if name == "floats" else ("l2",):
            distances, indices = knn(queries, database, int(data["k"]), metric=metric)
            results[f"{name}_{metric}_distances"], results[f"{name}_{metric}_indices"] = distances, indices
    # query sharding: each rank searches its rows of the queries against the whole database
    for name in ("floats", "pixels"):
        distances, indices = knn(data[f"{name}_queries"], data[f"{name}_database"], int(data["k"]), shard="queries")
        results[f"{name}_sharded_distances"], results[f"{name}_sharded_indices"] = distances, indices
    # a persisted IVF-PQ index (rank 0 builds it into $MEMAUDIT_CACHE, rank 1 loads it), queries sharded
    info = SearchInfo("", "", 0, "")
    distances, indices = knn(data["floats_queries"], data["floats_database"], int(data["k"]), index="ivf-pq",
                             info=info, approximate=Approximate(vectors_key="distributed-test"))
    results["ivfpq_distances"], results["ivfpq_indices"] = distances, indices
    results["ivfpq_info"] = np.array(json.dumps({"shard": info.shard, "setting": info.setting,
                                                 "candidates": info.candidates, "recall": info.recall}))
    # a database smaller than the world: some ranks search no rows at all
    distances, indices = knn(data["floats_queries"], data["floats_database"][:1], 1)
    results["tiny_distances"], results["tiny_indices"] = distances, indices
    # collectives: arrays of a different shape on each rank, JSON, agreement
    gathered = world.all_gather_array(np.arange(world.rank + 1, dtype=np.int16).reshape(-1, 1) * 10)
    results["gathered_rows"] = world.concat_rows(np.full((world.rank, 2), world.rank, np.float32))
    results["gathered_lengths"] = np.array([len(g) for g in gathered])
    results["broadcast"] = np.array(world.broadcast_json({"rank": world.rank})["rank"])
    results["all_agree_mixed"] = np.array(world.all_agree(world.rank == 0))
    start, stop = world.row_range(10)
    results["row_ranges"] = np.array(world.all_gather_json([start, stop]))
    if world.is_main:
        np.savez(target, world_size=world.size, **results)
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
