"""What an EMM search costs, and what one and two workers make of it: read a `memaudit emm` run
folder, replay its search over the points it trained, and print the cost of each round.

Every point records the CPU seconds of the process that trained and audited it (``cost`` in
point.json; one torch thread, so on an idle core its wall time is about its CPU time). The search
is deterministic given the points' verdicts, so replaying it with ``width`` 1 (one process) and
``width`` 2, ``ahead`` 1 (two worker processes: the next doubling and its middle, then thirds of
the bracket) over the same points gives each schedule's rounds; a round lasts as long as its
costliest point, so the sum over rounds of the round's largest CPU time is the schedule's wall time
on an idle machine with a core per worker (the critical path). A size the replay needs that the
run did not train is reported as missing.

    python benchmarks/emm_budget.py RUN_DIR [MORE_DIRS ...] [--relative-tolerance 1.25] [--uptime LOG] [--save]

``--save`` stores the figures in docs/replication.json under ``budget``, which
``benchmarks/emm_replication.py doc`` renders beside part (a).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def read_points(run: Path) -> dict[int, dict]:
    """size -> point.json record (seed 0) of every finished point in ``run``."""
    points = {}
    for path in sorted((run / "points").glob("*/point.json")):
        record = json.loads(path.read_text())
        if record["seed"] == 0:
            points[record["size"]] = record
    return points


def replay(points: dict[int, dict], *, width: int, ahead: int | None, threshold: float, start: int, unit: int,
           max_size: int, relative_tolerance: float) -> dict:
    """The rounds the search takes over these points, each with its sizes and CPU seconds."""
    from memaudit.retraining.search import Point, search_emm

    rounds: list[list[int]] = []
    missing: list[int] = []

    def measure(size: int):
        record = points.get(size)
        if record is None:
            missing.append(size)
            raise LookupError(size)
        return [Point(size, 0, record["memorization_ratio"], record["memorized"], record["n"], info=record)]

    try:
        result = search_emm(measure, threshold=threshold, start=start, min_size=unit, max_size=max_size, unit=unit,
                            tolerance=unit, relative_tolerance=relative_tolerance, width=width, ahead=ahead,
                            prefetch=lambda sizes: rounds.append(list(sizes)))
        bracket = {"lower": result.lower, "upper": result.upper, "status": result.status}
    except LookupError:
        bracket = None

    def cpu(size):
        return (points[size].get("cost") or {}).get("cpu_seconds") if size in points else None

    timed = [{"sizes": r, "cpu_seconds": [cpu(s) for s in r]} for r in rounds]
    done = [r for r in timed if all(c is not None for c in r["cpu_seconds"])]
    return {"width": width, "ahead": ahead, "bracket": bracket, "missing": missing, "rounds": timed,
            "finished_rounds": len(done),
            # over the finished rounds; the whole search's when every round finished (bracket not None)
            "critical_path_cpu_seconds": sum(max(r["cpu_seconds"]) for r in done),
            "total_cpu_seconds": sum(c for r in done for c in r["cpu_seconds"])}


def load_range(log: Path) -> str | None:
    """'LOW to HIGH' of the one-minute load averages in an `uptime` log."""
    loads = [float(m.group(1)) for m in re.finditer(r"load average: ([\d.]+)", log.read_text())]
    return f"{min(loads):.1f} to {max(loads):.1f} ({len(loads)} samples)" if loads else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a memaudit emm --out folder (finished or not)")
    parser.add_argument("more", type=Path, nargs="*", help="other folders whose points/ fill sizes the run has not "
                        "finished (the same recipe: the same point folders, e.g. a point trained on its own)")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--start", type=int, default=20)
    parser.add_argument("--unit", type=int, default=10)
    parser.add_argument("--max-size", type=int, default=1790)
    parser.add_argument("--relative-tolerance", type=float, default=1.25)
    parser.add_argument("--uptime", type=Path, default=None, help="a log of `uptime` lines taken during the run")
    parser.add_argument("--save", action="store_true", help="store the figures in docs/replication.json (budget)")
    args = parser.parse_args()
    points = read_points(args.run)
    for folder in args.more:
        points = {**read_points(folder), **points}
    common = dict(threshold=args.threshold, start=args.start, unit=args.unit, max_size=args.max_size,
                  relative_tolerance=args.relative_tolerance)
    report = {
        "run": str(args.run), "more": [str(folder) for folder in args.more],
        "points": [{"size": s, "train_steps": p["train_steps"], "ratio": p["memorization_ratio"],
                    "stopped_at_pass": p.get("stopped_at_pass"), "converged": p["converged"],
                    "extensions": p["extensions"], "snapshots": [(x["step"], x["memorization_ratio"]) for x in p["snapshots"]],
                    **(p.get("cost") or {})} for s, p in sorted(points.items())],
        "one_worker": replay(points, width=1, ahead=None, **common),
        "two_workers": replay(points, width=2, ahead=1, **common),
    }
    if args.uptime is not None:
        report["load_average"] = load_range(args.uptime)
    print(json.dumps(report, indent=2))
    if args.save:
        from emm_replication import RESULTS, _load  # benchmarks/ is the script's folder

        results = _load()
        results["budget"] = {**report, "command": "python benchmarks/emm_budget.py OUT" + " MORE" * len(args.more),
                             "run": None, "more": None}
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
