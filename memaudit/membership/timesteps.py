"""``--timesteps``: score an attack at many steps and report one row per step (AUC with its 95%
interval, TPR at 1% and 0.1% FPR with their support flags), as the authors print their scans.

The attack's headline row stays at its default step (or ``--setting``'s): a step picked as the
best of a scan is chosen on the very images it is evaluated on, so its AUC is optimistic; every
place that shows the best step says so (``best.chosen_on_evaluated_data``).
"""

from __future__ import annotations

import numpy as np

from memaudit import roc as metrics
from memaudit.errors import InputError

BEST_NOTE = "chosen on the evaluated data (optimistic)"


def parse_timesteps(text: str) -> list[int]:
    """``10,50,100`` (a list) or ``10:300:10`` (START:STOP:STEP, STOP included) as sorted distinct steps."""
    text = str(text).strip()
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
                raise ValueError
            steps = list(range(parts[0], parts[1] + 1, parts[2]))
        else:
            steps = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise InputError(f"--timesteps {text}: expected a list of steps (10,50,100) or START:STOP:STEP with "
                         "STOP >= START and STEP > 0 (10:300:10)") from None
    if not steps:
        raise InputError(f"--timesteps {text}: no steps given")
    return sorted(set(steps))


def check_timesteps(attack, settings: dict, timesteps: list[int], schedule: int) -> None:
    """``InputError`` when ``attack`` has no timestep, or a step is outside the model's schedule
    (0..schedule-1) or not one the attack can take (SecMI: a positive multiple of k)."""
    if attack.timestep_key is None:
        raise InputError(f"--timesteps: the {attack.name} attack has no timestep; drop --timesteps or --attack {attack.name}")
    bad = [t for t in timesteps if not 0 <= t < schedule]
    if bad:
        raise InputError(f"--timesteps: step {bad[0]} is outside the model's schedule; valid steps: 0..{schedule - 1}")
    if "k" in settings:
        k = int(settings["k"])
        bad = [t for t in timesteps if t < k or t % k]
        if bad:
            raise InputError(f"--timesteps: {attack.name} steps in k={k}; step {bad[0]} is not a positive multiple of {k}")


def scan_table(timesteps: list[int], member_rows: np.ndarray, nonmember_rows: np.ndarray, default: int) -> dict:
    """mia.json's per-step table: a row per step, the default step's row and the best step marked."""
    rows = []
    for t, members, nonmembers in zip(timesteps, member_rows, nonmember_rows):
        summary = metrics.summary(members, nonmembers)
        rows.append({"t": int(t), "auc": summary["auc"], "auc_ci95": summary["auc_ci95"],
                     "tpr_at_fpr": summary["tpr_at_fpr"], "default": int(t) == int(default), "best": False})
    best = max(rows, key=lambda r: r["auc"])  # the first of equal AUCs: the smallest step
    best["best"] = True
    return {"rows": rows, "best": {"t": best["t"], "auc": best["auc"], "chosen_on_evaluated_data": True, "note": BEST_NOTE}}


__all__ = ["BEST_NOTE", "parse_timesteps", "check_timesteps", "scan_table"]
