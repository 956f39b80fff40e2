"""Base versus fine-tune: how much memorization a fine-tune added (``memaudit audit FT --base BASE``).

Both models are sampled with the same seeds, prompts and sampler settings and audited against the
same training set, so sample i of the one and sample i of the other are a pair. Two shares are
compared, each with its 95% Wilson interval: the paper's (pixel nn-ratio d1/d2 < threshold) and the
verdict's (a sample flagged by the paper's criterion, an exact copy, or a criterion with evidence).
Their difference gets the interval for paired proportions of Newcombe (1998, "Improved confidence
intervals for the difference between binomial proportions based on paired data", method 10), which
uses the pairing: the same seeds make the two shares correlated. Everything is read from the two
run folders (neighbors.csv, verdicts.csv, audit.json) and the images given.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from memaudit import outputs
from memaudit.criteria import WILSON_Z95, wilson_interval

PAIRS_WITH_IMAGES = 24  # pairs shown with thumbnails; every flagged pair is listed with its numbers


def paired_difference(first: np.ndarray, second: np.ndarray, z: float = WILSON_Z95) -> dict:
    """The difference of two paired shares, mean(first) - mean(second), with Newcombe's method-10
    interval (the "square-and-add" interval for paired data): Wilson intervals of both shares
    combined through their continuity-corrected phi correlation."""
    first, second = np.asarray(first, bool), np.asarray(second, bool)
    n = len(first)
    if n == 0:
        return {"value": 0.0, "ci95": [-1.0, 1.0], "method": "newcombe-paired-10"}
    both = int((first & second).sum())
    only_first = int((first & ~second).sum())
    only_second = int((~first & second).sum())
    neither = n - both - only_first - only_second
    p1, p2 = (both + only_first) / n, (both + only_second) / n
    l1, u1 = wilson_interval(both + only_first, n, z)
    l2, u2 = wilson_interval(both + only_second, n, z)
    denominator = (both + only_first) * (only_second + neither) * (both + only_second) * (only_first + neither)
    # phi, the correlation of the two shares, with Newcombe's continuity correction: a positive
    # ad - bc is reduced by n/2 (to 0 at most), a negative one is kept
    cross = both * neither - only_first * only_second
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = 0.0 if denominator == 0 else cross / math.sqrt(denominator)
    low = (p1 - p2) - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = (p1 - p2) + math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    return {"value": p1 - p2, "ci95": [max(-1.0, low), min(1.0, high)], "method": "newcombe-paired-10",
            "pairs": {"both": both, "finetune_only": only_first, "base_only": only_second, "neither": neither}}


def _share(flags: np.ndarray) -> dict:
    memorized, n = int(flags.sum()), len(flags)
    return {"memorized": memorized, "n": n, "fraction": memorized / n if n else 0.0,
            "ci95": list(wilson_interval(memorized, n))}


def pixel_table(run_dir: Path) -> dict[str, np.ndarray]:
    """The pixel rows of a run's neighbors.csv, as arrays in sample order."""
    text = (Path(run_dir) / outputs.NEIGHBORS_CSV).read_text(encoding="utf-8")
    rows = [row for row in csv.DictReader(io.StringIO(text)) if row["space"] == "pixel"]
    rows.sort(key=lambda row: int(row["sample"]))
    return {"seed": np.array([int(r["seed"]) if r["seed"] else -1 for r in rows], np.int64),
            "nn1": np.array([int(r["nn1"]) for r in rows], np.int64),
            "d1": np.array([float(r["d1"]) for r in rows]), "d2": np.array([float(r["d2"]) for r in rows]),
            "ratio": np.array([float(r["ratio"]) for r in rows]),
            "memorized": np.array([r["memorized"] == "true" for r in rows], bool)}


def verdict_flags(run_dir: Path, audit: dict) -> np.ndarray:
    """Per sample, what the verdict's share counts: the paper's criterion, an exact or near-exact
    copy, or any criterion whose standing in ``audit`` is evidence (verdicts.csv's flags)."""
    n = int(audit["n_samples"])
    flags = np.zeros(n, bool)
    evidence = {(space, name) for space, body in audit["spaces"].items() for name, c in body["criteria"].items()
                if (c.get("standing") or {}).get("evidence") or (space, name) == ("pixel", "nn-ratio")}
    text = (Path(run_dir) / outputs.VERDICTS_CSV).read_text(encoding="utf-8")
    for row in csv.DictReader(io.StringIO(text)):
        if row["memorized"] == "true" and (row["space"], row["criterion"]) in evidence:
            flags[int(row["sample"])] = True
    for copy in (audit.get("headline") or {}).get("exact_copies") or []:
        flags[int(copy["sample"])] = True
    return flags


def _side(table: dict, i: int, flags: np.ndarray, train_ids: list[str]) -> dict:
    return {"nn1": train_ids[int(table["nn1"][i])], "d1": float(table["d1"][i]), "d2": float(table["d2"][i]),
            "ratio": float(table["ratio"][i]), "memorized": bool(table["memorized"][i]), "flagged": bool(flags[i])}


def compare_with_base(finetune: tuple[Path, dict], base: tuple[Path, dict], finetune_images, base_images, train,
                      prompts: list[str] | None, base_info: dict) -> dict:
    """audit.json's ``base_comparison``: both shares (paper's and verdict's) with intervals, their
    paired differences, and the pairs of every seed flagged in either model (fine-tune first, by its
    ratio), the first ``PAIRS_WITH_IMAGES`` with the two samples and the fine-tune's nearest training image."""
    (ft_dir, ft_audit), (base_dir, base_audit) = finetune, base
    ft, bs = pixel_table(ft_dir), pixel_table(base_dir)
    if not np.array_equal(ft["seed"], bs["seed"]):
        raise ValueError("the fine-tune and base runs hold different seeds")  # a bug: they are sampled alike
    ft_flags, base_flags = verdict_flags(ft_dir, ft_audit), verdict_flags(base_dir, base_audit)
    flagged = np.nonzero(ft_flags | base_flags | ft["memorized"] | bs["memorized"])[0]
    order = flagged[np.lexsort((flagged, ft["ratio"][flagged], ~(ft_flags[flagged] | ft["memorized"][flagged])))]
    pairs = []
    for rank, i in enumerate(order):
        pair = {"sample": int(i), "seed": None if ft["seed"][i] < 0 else int(ft["seed"][i]),
                "prompt": None if prompts is None else prompts[i],
                "finetune": _side(ft, i, ft_flags, train.ids), "base": _side(bs, i, base_flags, train.ids)}
        if rank < PAIRS_WITH_IMAGES:
            pair["images"] = {"finetune": outputs.png_data_uri(np.asarray(finetune_images[i])),
                              "base": outputs.png_data_uri(np.asarray(base_images[i])),
                              "nn1": outputs.png_data_uri(np.asarray(train.images[int(ft["nn1"][i])]))}
        pairs.append(pair)
    return {
        "base": base_info,
        "n": int(len(ft["seed"])),
        "threshold": ft_audit["spaces"]["pixel"]["criteria"]["nn-ratio"]["threshold"],
        "nn_ratio": {"finetune": _share(ft["memorized"]), "base": _share(bs["memorized"]),
                     "difference": paired_difference(ft["memorized"], bs["memorized"])},
        "verdict": {"finetune": _share(ft_flags), "base": _share(base_flags),
                    "difference": paired_difference(ft_flags, base_flags),
                    "finetune_verdict": ft_audit["headline"]["verdict"], "base_verdict": base_audit["headline"]["verdict"]},
        "pairs": pairs,
    }
