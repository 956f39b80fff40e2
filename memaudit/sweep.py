"""Snapshot sweeps: audit every training snapshot in a folder with the same seeds.

Gu et al. (2023) evaluate every snapshot and report the highest memorization ratio; the sweep
does the same and keeps the whole trajectory. Each snapshot is an ordinary audit in
``OUT/snapshots/NAME/``; ``OUT/audit.json`` is the highest snapshot's audit plus the trajectory.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from memaudit import distributed, outputs
from memaudit.config import AuditConfig
from memaudit.storage import write_bytes_atomic


def run_sweep(config: AuditConfig, snapshots: list[tuple[int, Path]]):
    """Audit each snapshot; write the sweep's audit.json and report; return the sweep's AuditResult."""
    from memaudit.api import AuditResult, gate, run_audit
    from memaudit.reports import write_report

    trajectory, results = [], []
    for step, path in snapshots:
        run_dir = config.out / "snapshots" / path.stem
        result = run_audit(dataclasses.replace(config, model=str(path), out=run_dir, fail_above=None))
        criterion = result.audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
        trajectory.append({"step": step, "snapshot": path.name, "run_dir": str(run_dir.relative_to(config.out)),
                           "model_fingerprint": result.audit["model"]["fingerprint"],
                           "memorization_ratio": result.memorization_ratio, "ci95": criterion["ci95"]})
        results.append(result)
    best_index = max(range(len(results)), key=lambda i: (results[i].memorization_ratio, -i))
    best = results[best_index]
    audit = dict(best.audit)
    audit["model"] = {**best.audit["model"], "spec": config.model, "snapshot": trajectory[best_index]["snapshot"]}
    audit["snapshots"] = {"folder": config.model, "trajectory": trajectory, "max_at": trajectory[best_index]["snapshot"]}
    audit["gate"] = gate(config.fail_above, audit["memorization_ratio"])
    audit["provenance"] = {**audit["provenance"], "command": config.command}
    if distributed.current().is_main:
        for name in (outputs.SAMPLES_NPZ, outputs.NEIGHBORS_CSV, outputs.VERDICTS_CSV):  # the evidence behind the reported maximum
            write_bytes_atomic(config.out / name, (best.out / name).read_bytes())
        outputs.write_audit(config.out, audit)
        write_report(config.out, redact=config.redact)
    distributed.current().barrier()
    return AuditResult(config.out, audit)
