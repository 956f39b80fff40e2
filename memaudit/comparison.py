"""Comparing audits (``memaudit compare``, ``memaudit.compare``): checkpoints, training snapshots,
training-set sizes, side by side. The entry function is ``run_compare(CompareConfig)``.

Figures of two audits only compare when they measure the same thing: the same training set
and the same criteria and thresholds. ``build_comparison`` refuses runs that differ there,
naming the difference, unless told to allow it (then the differences are listed in the output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from memaudit import outputs, rundir
from memaudit.errors import InputError
from memaudit.rundir import require_complete
from memaudit.storage import write_json_atomic, write_text_atomic

COMPARE_JSON = "compare.json"
COMPARE_HTML = "compare.html"
SCHEMA_VERSION = 1


def _criteria_signature(audit: dict) -> dict:
    return {f"{space}/{name}": criterion["threshold"]
            for space, body in audit["spaces"].items() for name, criterion in body["criteria"].items()}


def _not_computed(audit: dict) -> dict:
    """SPACE/NAME -> why, for the criteria an audit did not compute (``--criteria``, or by default)."""
    return {f"{space}/{name}": entry.get("why", "")
            for space, body in audit["spaces"].items() for name, entry in (body.get("not_computed") or {}).items()}


def _comparable(first: dict, other: dict) -> bool:
    """The same thresholds for every criterion both audits computed; a criterion only one computed is
    comparable when the other says it did not compute it (shown as such, never as 0 flagged)."""
    a, b = _criteria_signature(first), _criteria_signature(other)
    skipped_a, skipped_b = _not_computed(first), _not_computed(other)
    return (all(a[key] == b[key] for key in a.keys() & b.keys())
            and all(key in skipped_b for key in a.keys() - b.keys())
            and all(key in skipped_a for key in b.keys() - a.keys()))


def find_mismatches(names: list[str], audits: list[dict]) -> list[str]:
    """Human-readable reasons why these audits' figures are not comparable (empty when they are)."""
    reasons = []
    first_name, first = names[0], audits[0]
    for name, audit in zip(names[1:], audits[1:]):
        if audit["train"]["fingerprint"] != first["train"]["fingerprint"]:
            reasons.append(f"training sets differ: {first_name} used {first['train']['spec']} "
                           f"({first['train']['fingerprint'][:19]}), {name} used {audit['train']['spec']} "
                           f"({audit['train']['fingerprint'][:19]})")
        if not _comparable(first, audit):
            reasons.append(f"criteria differ: {first_name} has {_criteria_signature(first)}, "
                           f"{name} has {_criteria_signature(audit)}")
    return reasons


def _run_names(run_dirs: list[Path]) -> list[str]:
    names = [d.resolve().name for d in run_dirs]
    return names if len(set(names)) == len(names) else [str(d) for d in run_dirs]


def build_comparison(run_dirs: list[Path], allow_mismatch: bool = False) -> dict:
    """The comparison of several finished audits, JSON-ready, in the order given."""
    if len(run_dirs) < 2:
        raise InputError(f"RUN_DIR: compare needs at least two audit folders, got {len(run_dirs)}")
    for run_dir in run_dirs:  # an interrupted run's folder may mix two runs' files
        require_complete(run_dir)
    audits = [outputs.read_audit(d) for d in run_dirs]
    names = _run_names(run_dirs)
    mismatches = find_mismatches(names, audits)
    if mismatches and not allow_mismatch:
        raise InputError(f"{mismatches[0]}; the figures would not be comparable (use --allow-mismatch to compare anyway)")
    runs = []
    for name, run_dir, audit in zip(names, run_dirs, audits):
        criteria = {f"{space}/{c}": {k: v for k, v in body.items()}
                    for space, s in audit["spaces"].items() for c, body in s["criteria"].items()}
        runs.append({
            "name": name, "run_dir": str(run_dir), "model": audit["model"].get("spec") or audit["model"].get("samples"),
            "model_fingerprint": audit["model"].get("fingerprint"), "train": audit["train"]["spec"],
            "n_samples": audit["n_samples"], "memorization_ratio": audit["memorization_ratio"],
            "headline": criteria["pixel/nn-ratio"], "criteria": criteria, "not_computed": _not_computed(audit),
            # the run's verdict (memaudit.verdict); an audit written before the rule has none
            "verdict": (audit.get("headline") or {}).get("verdict"),
            "exact_copies": len((audit.get("headline") or {}).get("exact_copies") or []),
        })
    return {"schema_version": SCHEMA_VERSION, "runs": runs, "mismatches": mismatches,
            "criteria": sorted({key for run in runs for key in run["criteria"]})}


def write_comparison(run_dirs: list[Path], out: Path, allow_mismatch: bool = False) -> Path:
    """Write ``out/compare.json`` and ``out/compare.html``; returns the page's path."""
    from memaudit.reports import render_comparison

    comparison = build_comparison(run_dirs, allow_mismatch)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / COMPARE_JSON, comparison)
    write_text_atomic(out / COMPARE_HTML, render_comparison(comparison))
    return out / COMPARE_HTML



@dataclass
class CompareConfig:
    """The settings of ``memaudit compare``."""

    runs: list[Path]  # finished audits' run folders, in the order to plot
    out: Path  # the folder for compare.json and compare.html
    allow_mismatch: bool = False  # compare audits of different training sets or criteria


@rundir.claimed((COMPARE_JSON, COMPARE_HTML), "compare")
def run_compare(config: CompareConfig) -> Path:
    """Write compare.json and compare.html for several finished audits; returns the page's path."""
    return write_comparison([Path(d) for d in config.runs], Path(config.out), allow_mismatch=config.allow_mismatch)
