"""benchmarks/emm_replication.py part c: the figures it derives from the trained points (no training here)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
replication = pytest.importorskip("emm_replication")

from memaudit.retraining.search import Point  # noqa: E402

T_975_DF2 = 4.302652729911275  # Student t, 97.5% quantile, 2 degrees of freedom (tables)


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _point(seed: int, ratios: dict[int, float], n: int = 250) -> Point:
    snapshots = [{"step": step, "memorization_ratio": r, "memorized": round(r * n), "n": n} for step, r in ratios.items()]
    best = max(snapshots, key=lambda s: s["memorization_ratio"])
    return Point(80, seed, best["memorization_ratio"], best["memorized"], n,
                 info={"snapshots": snapshots, "step": best["step"], "train_steps": snapshots[-1]["step"],
                       "converged": True})


def test_part_c_ratio_at_each_snapshot_is_the_mean_over_seeds_with_the_envelope_interval():
    # Seed 0 was extended (steps 30, 40); the others stopped at 20: only 10 and 20 are equal training.
    points = [_point(0, {10: 0.2, 20: 0.6, 30: 0.8, 40: 0.96}), _point(1, {10: 0.4, 20: 0.92}),
              _point(2, {10: 0.3, 20: 0.8})]
    row = replication._c_row(80, points, "none")
    assert [s["step"] for s in row["at_step"]] == [10, 20]
    for snap, ratios in zip(row["at_step"], ([0.2, 0.4, 0.3], [0.6, 0.92, 0.8])):
        assert snap["ratios"] == ratios
        mean = sum(ratios) / 3
        assert snap["mean"] == pytest.approx(mean)
        sd = math.sqrt(sum((r - mean) ** 2 for r in ratios) / 2)
        half = T_975_DF2 * sd / math.sqrt(3)
        low, high = _wilson(sum(round(r * 250) for r in ratios), 750)
        assert snap["ci95"] == pytest.approx([min(low, max(0.0, mean - half)), max(high, min(1.0, mean + half))])
    # The highest ratio of each point, whatever its training length: the paper's statistic.
    assert row["ratios"] == [0.96, 0.92, 0.8]
    assert row["mean"] == pytest.approx((0.96 + 0.92 + 0.8) / 3)
    assert row["best_steps"] == [40, 20, 20] and row["train_steps"] == [40, 20, 20]


def test_part_c_section_lists_every_labelling_at_every_common_step():
    rows = [replication._c_row(80, [_point(s, {10: 0.1 * (i + 1), 20: 0.2 * (i + 1)}) for s in (0, 2)], labels)
            for i, labels in enumerate(replication.LABELLINGS)]
    run = {"size": 80, "seeds": 3, "jobs": 2, "command": "c --size 80", "wall_seconds": 120.0, "cpu_seconds": 240.0,
           "load": "2.0 at the start", "rows": rows, "date": "today"}
    text = "\n".join(replication._c_section({"recipe": "the default", "runs": [run]}))
    assert "| labels | step 10 | step 20 |" in text
    for i, labels in enumerate(replication.LABELLINGS):
        assert f"| {labels} | {0.1 * (i + 1):.3f} " in text
    assert "wall 2 min, CPU 4 min" in text
    assert "| none | 0.200 | " in text and "seed 0: 0.200 (20), seed 2: 0.200 (20)" in text  # seed 1 missing
