"""Run under torchrun by test_distributed.py: ``memaudit audit ARGS`` with every step that reads the
samples row by row recorded on each rank, to show what a rank holds of them.

    torchrun --standalone --nproc_per_node N tests/audit_shard_worker.py -- LOG_FOLDER AUDIT_ARGS...

Each rank writes LOG_FOLDER/rank-R.json: how many rows each step was given (and of how many).
"""

import json
import os
import sys
from pathlib import Path

import numpy as np


def main(log_folder: str, args: list[str]) -> None:
    from memaudit import cli, measure, sampling, search, tiled
    from memaudit.auditing import run as audit_run
    from memaudit.features import cache

    seen = {"samples_arrays": [], "extracted": [], "searched": [], "tiled": [], "duplicates": [], "quality": 0,
            "shards_read": 0}

    def wrap(module, name, record):
        original = getattr(module, name)

        def wrapper(*a, **kw):
            record(*a, **kw)
            return original(*a, **kw)

        setattr(module, name, wrapper)

    # the array of samples the audit works on: memory-mapped, or in memory
    wrap(audit_run, "measure_space", lambda space, images, *a, **kw: seen["samples_arrays"].append(
        {"rows": len(images), "mapped": isinstance(images, np.memmap) or isinstance(images.base, np.memmap)}))
    # feature extraction: (rows of the set it was given, rows extracted)
    wrap(cache, "_extract_rows", lambda space, images, start, stop, *a, **kw: seen["extracted"].append(
        [len(images), stop - start]))
    # exact search: the queries converted and searched on this rank
    wrap(search, "fused_exact", lambda queries, *a, **kw: seen["searched"].append(len(queries)))
    wrap(tiled, "nearest_tiled_l2", lambda samples, *a, **kw: seen["tiled"].append(len(samples)))
    wrap(measure, "duplicate_mask", lambda features, indices, *a, **kw: seen["duplicates"].append(len(indices)))
    wrap(measure, "quality", lambda *a, **kw: seen.__setitem__("quality", seen["quality"] + 1))
    wrap(sampling.SampleShards, "read", lambda self, position: seen.__setitem__("shards_read", seen["shards_read"] + 1))

    sys.argv = ["memaudit", *args]
    try:
        cli.main()
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise
    finally:
        Path(log_folder).mkdir(parents=True, exist_ok=True)
        (Path(log_folder) / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    arguments = arguments[1:] if arguments[:1] == ["--"] else arguments  # "--" ends torchrun's own options
    main(arguments[0], arguments[1:])
