"""Snapshot sweeps: audit every training snapshot in a folder with the same seeds.

Gu et al. (2023) evaluate every snapshot and report the highest memorization ratio; the sweep
does the same as their code (DiffMemorize's ``mem_ratio.py``, which skips the untrained snapshot
000000) and keeps the whole trajectory with each ratio's interval. Each snapshot is an ordinary audit in
``OUT/snapshots/NAME/``; ``OUT/audit.json`` is the highest snapshot's audit plus the trajectory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from memaudit import distributed, outputs
from memaudit.config import AuditConfig
from memaudit.errors import InputError
from memaudit.storage import write_bytes_atomic


def run_sweep(config: AuditConfig, snapshots: list[tuple[int, Path]]):
    """Audit each snapshot; write the sweep's audit.json and report; return the sweep's AuditResult.

    The snapshot at step 0 (the untrained network) is skipped unless ``config.include_initial_snapshot``,
    as DiffMemorize's ``mem_ratio.py`` skips ``network-snapshot-000000.pkl``. Snapshots sharing the
    highest ratio are all named (``tied_at``); the earliest of them is the one reported."""
    from memaudit.api import AuditResult, run_audit
    from memaudit.verdict import gate
    from memaudit.reports import write_report

    skipped = [path.name for step, path in snapshots if step == 0 and not config.include_initial_snapshot]
    snapshots = [(step, path) for step, path in snapshots if path.name not in skipped]
    if not snapshots:
        raise InputError(f"MODEL {config.model}: holds only the untrained snapshot {', '.join(skipped)}, which sweeps "
                         "skip as DiffMemorize does; pass --include-initial-snapshot to audit it")
    trajectory, results = [], []
    for step, path in snapshots:
        run_dir = config.out / "snapshots" / path.stem
        result = run_audit(dataclasses.replace(config, model=str(path), out=run_dir, fail_above=None))
        criterion = result.audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
        trajectory.append({"step": step, "snapshot": path.name, "run_dir": str(run_dir.relative_to(config.out)),
                           "model_fingerprint": result.audit["model"]["fingerprint"],
                           "memorization_ratio": result.memorization_ratio, "memorized": criterion["memorized"],
                           "n": criterion["n"], "ci95": criterion["ci95"]})
        results.append(result)
    highest = max(result.memorization_ratio for result in results)
    tied = [i for i, result in enumerate(results) if result.memorization_ratio == highest]
    best_index = tied[0]  # the earliest snapshot reaching the highest ratio
    best = results[best_index]
    audit = dict(best.audit)
    audit["model"] = {**best.audit["model"], "spec": config.model, "snapshot": trajectory[best_index]["snapshot"]}
    audit["snapshots"] = {"folder": config.model, "trajectory": trajectory, "max_at": trajectory[best_index]["snapshot"],
                          "tied_at": [trajectory[i]["snapshot"] for i in tied], "skipped": skipped,
                          "rule": "highest nn-ratio over the snapshots (Gu et al. 2023); ties: the earliest, all listed"}
    audit["gate"] = gate(config.fail_above, audit["headline"])
    copying = [f"{point['snapshot']} ({len(r.headline['exact_copies'])})" for point, r in zip(trajectory, results)
               if r.headline["exact_copies"] and r is not best]
    if copying:  # the highest ratio is reported; a copy in any other snapshot is named too
        audit["warnings"] = [*audit.get("warnings", []), "other snapshots hold exact copies of training images: "
                             + ", ".join(copying) + "; see their audits under snapshots/"]
    audit["provenance"] = {**audit["provenance"], "command": config.command}
    if distributed.current().is_main:
        for name in (outputs.SAMPLES_NPZ, outputs.NEIGHBORS_CSV, outputs.VERDICTS_CSV):  # the evidence behind the reported maximum
            write_bytes_atomic(config.out / name, (best.out / name).read_bytes())
        outputs.write_audit(config.out, audit)
        write_report(config.out, redact=config.redact)
    distributed.current().barrier()
    return AuditResult(config.out, audit)
