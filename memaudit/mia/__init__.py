"""Membership inference against diffusion models: one module per attack, registered by name.

Every attack scores images so that higher means "more likely a training member"; ``metrics``
turns member and non-member scores into AUC, TPR at low FPR and the ROC.
"""

from __future__ import annotations

from memaudit.errors import InputError

from . import loss, pia, score_norm, secmi
from .base import Attack

ATTACKS: dict[str, Attack] = {module.ATTACK.name: module.ATTACK for module in (loss, pia, secmi, score_norm)}


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise InputError(f"--attack {name}: unknown attack; valid attacks: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def attack_settings(name: str, overrides: dict[str, float]) -> dict:
    """The attack's defaults with ``overrides`` (``KEY=VALUE`` from ``--setting NAME.KEY=VALUE``) applied."""
    attack = get_attack(name)
    unknown = sorted(set(overrides) - set(attack.defaults))
    if unknown:
        raise InputError(f"--setting {name}.{unknown[0]}: {name} has no such setting; its settings: "
                         f"{', '.join(attack.defaults)}")
    return {**attack.defaults, **overrides}


__all__ = ["ATTACKS", "Attack", "get_attack", "attack_settings"]
