"""Two audits started together on one empty feature cache, many times: does each one finish with
the numbers an audit run alone gives?

Each trial empties the cache, starts two `memaudit audit --samples ... --space pixel-8` processes
at the same moment into two run folders, and counts the trial correct when both exit 0, both
audit.json (less provenance) and neighbors.csv equal those of a reference audit run alone, and
neither the cache nor the run folders keep a temporary or a `.chunks` folder. The training set is
N real images: 16x16 tiles of four scikit-learn digits each (so the features span several
extraction chunks); the samples are 200 of them. Prints one JSON object.

    python benchmarks/concurrent_cache.py [--trials 20] [--n 40000] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def tiles(n: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    digits = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    picks = np.random.default_rng(0).integers(0, len(digits), (n, 4))
    top = np.concatenate([digits[picks[:, 0]], digits[picks[:, 1]]], axis=2)
    bottom = np.concatenate([digits[picks[:, 2]], digits[picks[:, 3]]], axis=2)
    return np.concatenate([top, bottom], axis=1)[..., None]


def audit_command(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "memaudit", "audit", "--samples", f"npy:{folder / 'samples.npy'}",
            "--train", f"npy:{folder / 'train.npy'}", "--space", "pixel-8", "--out", str(out), "--quiet"]


def comparable(out: Path) -> tuple[dict, bytes]:
    audit = json.loads((out / "audit.json").read_text())
    audit.pop("provenance")
    return audit, (out / "neighbors.csv").read_bytes()


def leftovers(*folders: Path) -> list[str]:
    return [str(p) for folder in folders if folder.exists() for p in folder.rglob("*")
            if p.name.endswith(".tmp") or p.name.endswith(".chunks") or p.name.startswith(".staging-")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="memaudit-concurrent-"))
    try:
        train = tiles(args.n)
        np.save(folder / "train.npy", train)
        np.save(folder / "samples.npy", train[:: max(1, args.n // 200)][:200])
        env = {**os.environ, "MEMAUDIT_CACHE": str(folder / "reference-cache")}
        subprocess.run(audit_command(folder, folder / "reference"), env=env, check=True, capture_output=True)
        reference = comparable(folder / "reference")
        env["MEMAUDIT_CACHE"] = str(folder / "cache")
        trials, started = [], time.perf_counter()
        for trial in range(args.trials):
            shutil.rmtree(folder / "cache", ignore_errors=True)
            for name in ("a", "b"):
                shutil.rmtree(folder / name, ignore_errors=True)
            processes = [subprocess.Popen(audit_command(folder, folder / name), env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
            outputs = [p.communicate() for p in processes]
            codes = [p.returncode for p in processes]
            same = all(code == 0 and comparable(folder / name) == reference for code, name in zip(codes, ("a", "b")))
            left = leftovers(folder / "cache", folder / "a", folder / "b")
            trials.append({"trial": trial, "exit_codes": codes, "same_as_alone": same, "leftovers": left,
                           "errors": [err.strip().splitlines()[-1] for (_, err), code in zip(outputs, codes)
                                      if code != 0 and err.strip()]})
        correct = sum(t["exit_codes"] == [0, 0] and t["same_as_alone"] and not t["leftovers"] for t in trials)
        print(json.dumps({"n_train": args.n, "space": "pixel-8", "trials": args.trials, "correct": correct,
                          "seconds": round(time.perf_counter() - started, 1),
                          "failures": [t for t in trials if not (t["exit_codes"] == [0, 0] and t["same_as_alone"]
                                                                  and not t["leftovers"])]}, indent=2))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
