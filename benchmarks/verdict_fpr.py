"""False-positive rate of every criterion at its default setting on real images no model saw.

Each case audits real held-out images as if a model had generated them, against a training set
they are not in (from the same distribution): every flag is a false positive. Prints JSON: per
case and criterion, the flagged count, the FPR with its 95% Wilson interval, and whether the
criterion may colour the verdict for these images without --holdout (``speaks``); and the
verdict the held-out images get, which must be "no-evidence".

    python benchmarks/verdict_fpr.py [--target-fpr 0.01]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import memaudit
from memaudit.criteria import wilson_interval
from memaudit.data import load_image_set


def cases():
    """(name, training images, held-out images) on the real images that ship with packages."""
    for n in (100, 500, 1000):
        yield f"digits:{n:d}:rest vs digits:{n:d}", load_image_set(f"digits:{n}").images, \
            load_image_set(f"digits:{n}:rest").images
    photos = load_image_set("photos").images  # 520 32x32 RGB tiles of two photographs
    yield "photos odd tiles vs even tiles", photos[0::2], photos[1::2]
    yield "photos 400: vs photos :400", photos[:400], photos[400:]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-fpr", type=float, default=0.01)
    args = parser.parse_args(argv)
    report = {"target_fpr": args.target_fpr, "cases": {}}
    speaking_fpr: dict[str, list[tuple[int, int]]] = {}
    for name, train, held in cases():
        started = time.perf_counter()
        result = memaudit.audit(train=train, samples=held, target_fpr=args.target_fpr, progress=False)
        criteria = {}
        for key, c in result.criteria.items():
            low, high = wilson_interval(c["memorized"], c["n"])
            criteria[key] = {"flagged": c["memorized"], "n": c["n"], "fpr": c["fraction"], "fpr_ci95": [low, high],
                             "speaks": c["standing"]["speaks"]}
            if c["standing"]["speaks"]:
                speaking_fpr.setdefault(key, []).append((c["memorized"], c["n"]))
        report["cases"][name] = {"train": int(len(train)), "held_out": int(len(held)),
                                 "image_shape": list(np.asarray(held).shape[1:]), "criteria": criteria,
                                 "verdict": result.verdict, "exact_copies": len(result.exact_copies),
                                 "seconds": round(time.perf_counter() - started, 2)}
    # every criterion that may colour the verdict by default, over all cases together
    report["speaking_by_default"] = {
        key: {"flagged": sum(f for f, _ in counts), "n": sum(n for _, n in counts),
              "fpr": sum(f for f, _ in counts) / sum(n for _, n in counts),
              "at_most_target": sum(f for f, _ in counts) / sum(n for _, n in counts) <= args.target_fpr}
        for key, counts in speaking_fpr.items()}
    report["all_no_evidence"] = all(case["verdict"] == "no-evidence" for case in report["cases"].values())
    return report


if __name__ == "__main__":
    outcome = main()
    json.dump(outcome, sys.stdout, indent=2)
    print()
    sys.exit(0 if outcome["all_no_evidence"] and all(v["at_most_target"] for v in outcome["speaking_by_default"].values())
             else 1)
