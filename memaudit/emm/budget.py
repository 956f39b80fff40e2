"""Training budgets: the T of EMM_eps(P, M, T), named presets, and the answer stated under T.

Gu et al. (2023) define EMM for a data distribution P, a model M *and a training procedure T*:
the largest |D| at which M, after training procedure T, memorizes like the theoretical optimum.
The budget is part of T. The steps a size needs before it memorizes grow with |D| (|D|^1.4 on
the digits, docs/replication.md), so without a budget there is no finite EMM to converge to: a
search answers "EMM in [a, b) under T", with T written out, and says when a point was still
rising at the end of T (information: a larger T would raise that point, and the bracket is still
the EMM of this T). A budget too small to judge anything is "undetermined at this budget".

``BUDGETS`` holds the presets ``--budget`` names; an option given explicitly overrides its
preset's value, and the answer records which ones differ from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memaudit.errors import InputError


@dataclass(frozen=True)
class Budget:
    """One named training budget: the EMMConfig settings it fixes and what it is for."""

    name: str
    purpose: str
    settings: dict


# The fields a preset sets (every preset sets all of them, so a preset fully names T).
BUDGET_FIELDS = ("precond", "arch", "epochs", "batch_size", "learning_rate", "warmup_steps", "ema_decay",
                 "snapshots", "extend", "n")

BUDGETS: dict[str, Budget] = {
    "quick": Budget(
        "quick", "tests and demos: the digits answer [20, 30) in 2.8 CPU minutes (README)",
        {"precond": "edm", "arch": "tiny", "epochs": 1500.0, "batch_size": 64, "learning_rate": 2e-3,
         "warmup_steps": 200, "ema_decay": 0.999, "snapshots": 2, "extend": 0, "n": 250}),
    "default": Budget(
        "default", "minutes on a 2-core CPU: the digits answer [40, 50) in 10.2 CPU minutes (README)",
        {"precond": "edm", "arch": "tiny", "epochs": 2000.0, "batch_size": 64, "learning_rate": 2e-3,
         "warmup_steps": 200, "ema_decay": 0.999, "snapshots": 4, "extend": 0, "n": 250}),
    # Gu et al. 2023's CIFAR-10 runs (DiffMemorize scripts/*.md): train.py --arch=ddpmpp --precond=vp
    # --num-blocks=2 --num-channels=128 --batch 512 --lr=2e-4 --duration=2000, where their train.py
    # reads duration as 20 x duration epochs (total_kimg = duration x |D| / 50): 40,000 epochs. Learning
    # rate warm-up |D|/5 kimg = 200 epochs (391 steps at |D| = 1,000; memaudit's warm-up is in steps);
    # EMA: their default half-life, compensated for |D|, is a constant decay 0.5^(512/500,000) = 0.99929
    # per step; 10,000 samples (seeds 0-9999) per snapshot; a snapshot every 2.5 Mimg (16 at |D| = 1,000).
    "paper": Budget(
        "paper", "Gu et al. 2023's CIFAR-10 recipe (DDPM++, VP, 40,000 epochs, batch 512, lr 2e-4): a GPU budget",
        {"precond": "vp", "arch": "ddpmpp", "epochs": 40000.0, "batch_size": 512, "learning_rate": 2e-4,
         "warmup_steps": 391, "ema_decay": 0.99929, "snapshots": 16, "extend": 0, "n": 10000}),
}


def resolve_budget(config) -> None:
    """Fill ``config``'s budget fields left at None from its preset (``config.budget``). An unknown
    preset is left for ``check_budget`` to refuse."""
    preset = BUDGETS.get(config.budget)
    if preset is None:
        return
    for name in BUDGET_FIELDS:
        if getattr(config, name) is None:
            setattr(config, name, preset.settings[name])


def budget_changes(config) -> dict:
    """The budget settings in which ``config`` differs from its preset (given explicitly)."""
    preset = BUDGETS[config.budget].settings
    return {name: getattr(config, name) for name in BUDGET_FIELDS if getattr(config, name) != preset[name]}


def check_budget(config) -> None:
    """``InputError`` for an unknown preset or a budget setting of the wrong kind."""
    if config.budget not in BUDGETS:
        raise InputError(f"--budget {config.budget}: expected one of {', '.join(BUDGETS)}")
    for name in BUDGET_FIELDS:
        value, kind = getattr(config, name), type(BUDGETS[config.budget].settings[name])
        accepted = (int, float) if kind is float else (kind,)
        if not isinstance(value, accepted) or isinstance(value, bool):
            raise InputError(f"{name}={value!r}: expected {kind.__name__} (budget {config.budget}: "
                             f"{BUDGETS[config.budget].settings[name]!r})")


# --- the answer under T ------------------------------------------------------------------------


def budget_json(config, settings: dict, points: list[dict]) -> dict:
    """T as emm.json records it: the preset, what was changed, the training settings, and the steps
    the largest size trained (its longest seed, extensions included)."""
    largest = max((p["size"] for p in points), default=None)
    steps = max((p.get("train_steps") or 0 for p in points if p["size"] == largest), default=None)
    return {"preset": config.budget, "changed": budget_changes(config),
            **{k: settings[k] for k in ("precond", "arch", "epochs", "batch_size", "learning_rate", "warmup_steps",
                                        "ema_decay", "snapshots", "extend")},
            "largest_size": largest, "largest_steps": steps}


def budget_text(budget: dict) -> str:
    """T written out: 'precond edm, arch tiny, 2000 epochs, batch 64, lr 0.002, EMA 0.999, 2500 steps
    at |D| = 80 (budget default)'."""
    parts = [f"precond {budget['precond']}", f"arch {budget['arch']}", f"{budget['epochs']:g} epochs",
             f"batch {budget['batch_size']}", f"lr {budget['learning_rate']:g}", f"EMA {budget['ema_decay']:g}"]
    if budget["extend"]:
        parts.append(f"extended up to {budget['extend']}x (each doubling the steps) while still rising")
    if budget["largest_size"] is not None:
        parts.append(f"{budget['largest_steps']} steps at |D| = {budget['largest_size']}")
    changed = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in budget["changed"].items())
    return ", ".join(parts) + f" (budget {budget['preset']}{' with ' + changed if changed else ''})"


def bracket_text(lower: int | None, upper: int | None, status: str) -> str:
    """The EMM part of the answer: 'EMM in [40, 50)', 'EMM < 20', 'EMM >= 1790', or undetermined."""
    if status == "undetermined":
        return "EMM undetermined at this budget"
    if lower is None and upper is None:
        return "EMM not measured"
    if lower is None:
        return f"EMM < {upper}"
    if upper is None:
        return f"EMM >= {lower}"
    return f"EMM in [{lower}, {upper})"


def judge(result, config, settings: dict, points: list[dict]) -> dict:
    """emm.json's answer for one search: the bracket, its status, T, whether the size failing at the
    bracket's upper end was still rising at the end of T, and, when the budget is too small to judge
    anything, status ``undetermined`` with one line of advice instead of a bracket."""
    budget = budget_json(config, settings, points)
    lower, upper, status = result.lower, result.upper, result.status
    advice = undetermined_advice(result, config, points)
    if advice is not None:
        lower, upper, status = None, None, "undetermined"
    still_rising = advice is None and result.still_rising
    joint = ", T =" if status == "undetermined" else " under T ="
    answer = f"{bracket_text(lower, upper, status)}{joint} {budget_text(budget)}"
    return {"lower": lower, "upper": upper, "status": status, "still_rising": still_rising, "answer": answer,
            "advice": advice, "budget": budget}


def undetermined_advice(result, config, points: list[dict]) -> str | None:
    """One line of advice when no size passed and the budget cannot tell why: the smallest size
    trained trained fewer steps than the learning-rate warm-up, or no snapshot of any size
    memorized a single sample (the models had not begun to copy, so "EMM < smallest" would be a
    statement about the budget, not the model). None otherwise."""
    if result.lower is not None or not points:
        return None
    smallest = min(p["size"] for p in points)
    steps = min(p.get("train_steps") or 0 for p in points if p["size"] == smallest)
    short = steps < config.warmup_steps
    blank = all(s["memorization_ratio"] == 0 for p in points for s in p.get("snapshots", []))
    if not (short or blank):
        return None
    # epochs at which the smallest size trains through the warm-up, and at least twice what it had
    needed = max(2 * config.epochs, math.ceil(config.warmup_steps * config.batch_size / smallest))
    reasons = ([f"|D| = {smallest} trained {steps} steps, fewer than the {config.warmup_steps} warm-up steps"] if short
               else []) + (["no snapshot of any size memorized a sample"] if blank else [])
    preset = BUDGETS[config.budget]
    return (f"{' and '.join(reasons)}: raise --epochs to at least {needed:g} (budget {preset.name}: "
            f"{preset.settings['epochs']:g}) so that the smallest size has time to memorize")
