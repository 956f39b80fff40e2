"""Peak resident memory of each rank of a distributed audit against one process, on the same audit.

Given samples (``--n`` random uint8 RGB images of ``--size`` px, an uncompressed .npz) are audited in
the pixel space against ``--train`` random images of the same size, once by one process and once by
``--ranks`` torchrun ranks (gloo, one thread each). Every process records its resident memory after
importing memaudit, torch and faiss and its peak (``ru_maxrss``); ``growth`` is the difference, what the audit itself
added. With the samples sharded a rank's growth is about 1 / ranks of the single process's: it maps
samples.npz and reads, converts and searches only its shard. ``samples_mib`` is the samples' uint8
size. Prints one JSON object; all figures from one run.

    python benchmarks/audit_rank_memory.py [--n 20000] [--size 64] [--train 500] [--ranks 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path


def _resident_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(log: Path, args: list[str]) -> None:
    """One process of the audit: memaudit's CLI, with its memory recorded in ``log``/rank-R.json."""
    import faiss  # noqa: F401  the libraries' own memory is part of the baseline, not of the audit
    import torch  # noqa: F401

    import memaudit.api  # noqa: F401  (the command packages with it)
    import memaudit.reports  # noqa: F401
    from memaudit import cli

    baseline = _resident_mib()
    sys.argv = ["memaudit", *args]
    try:
        cli.main()
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    log.mkdir(parents=True, exist_ok=True)
    (log / f"rank-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(
        {"baseline_mib": round(baseline, 1), "peak_mib": round(peak, 1), "growth_mib": round(peak - baseline, 1)}))


def run(ranks: int, folder: Path, audit: list[str]) -> list[dict]:
    log = folder / f"log-{ranks}"
    launcher = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    "--nproc_per_node", str(ranks)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEMAUDIT_DIST_BACKEND": "gloo",
           "MEMAUDIT_CACHE": str(folder / f"cache-{ranks}")}
    subprocess.run([*launcher, __file__, "--worker", str(log), "--", *audit, "--out", str(folder / f"run-{ranks}")],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return [json.loads((log / f"rank-{r}.json").read_text()) for r in range(ranks)]


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        rest = sys.argv[3:]
        worker(Path(sys.argv[2]), rest[1:] if rest[:1] == ["--"] else rest)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=500)
    parser.add_argument("--ranks", type=int, default=2)
    args = parser.parse_args()

    import numpy as np

    import memaudit

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="memaudit-rank-memory-") as tmp:
        folder = Path(tmp)
        np.savez(folder / "samples.npz", images=rng.integers(0, 256, (args.n, args.size, args.size, 3), np.uint8))
        np.savez(folder / "train.npz", images=rng.integers(0, 256, (args.train, args.size, args.size, 3), np.uint8))
        audit = ["audit", "--samples", str(folder / "samples.npz"), "--train", str(folder / "train.npz"), "--quiet"]
        single = run(1, folder, audit)
        sharded = run(args.ranks, folder, audit)
        same = (json.loads((folder / "run-1" / "audit.json").read_text())["spaces"]
                == json.loads((folder / f"run-{args.ranks}" / "audit.json").read_text())["spaces"])
    growth = [r["growth_mib"] for r in sharded]
    print(json.dumps({
        "n": args.n, "size": args.size, "train": args.train, "ranks": args.ranks,
        "samples_mib": round(args.n * args.size * args.size * 3 / 2**20, 1),
        "single_process": single[0], "per_rank": sharded,
        "largest_rank_growth_vs_single": round(max(growth) / single[0]["growth_mib"], 3),
        "same_spaces_in_audit_json": same,
        "memaudit": memaudit.__version__, "memaudit_path": str(Path(memaudit.__file__).parent),
        "python": platform.python_version(), "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
