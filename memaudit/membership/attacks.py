"""The attacks of membership inference, registered by name (one module per attack), and their settings."""

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
    settings = {**attack.defaults, **overrides}
    for key, value in settings.items():
        if key in ("timestep", "t_sec", "k", "noises", "p") and (value != int(value) or value < (0 if key == "timestep" else 1)):
            raise InputError(f"--setting {name}.{key}={value}: expected a {'non-negative' if key == 'timestep' else 'positive'} integer")
    if name == "secmi" and settings["t_sec"] % settings["k"]:
        raise InputError(f"--setting secmi.t_sec={settings['t_sec']}: SecMI steps in k={settings['k']}; t_sec must be a multiple of k")
    return settings


def parse_settings(items: list[str]) -> dict[str, dict[str, float]]:
    """``--setting NAME.KEY=VALUE`` items as {attack: {key: value}} (values are numbers)."""
    parsed: dict[str, dict[str, float]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not (sep and dot and key):
            raise InputError(f"--setting {item}: expected ATTACK.KEY=VALUE, e.g. pia.timestep=100")
        get_attack(name)
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"--setting {item}: {value!r} is not a number") from None
        parsed.setdefault(name, {})[key] = int(number) if number.is_integer() else number
    return parsed


__all__ = ["ATTACKS", "Attack", "get_attack", "attack_settings", "parse_settings"]
