"""The attacks of membership inference, registered by name (one module per attack), and their settings."""

from __future__ import annotations

from memaudit.errors import InputError

from . import loss, pia, score_norm, secmi, secmi_nns
from .base import Attack

ATTACKS: dict[str, Attack] = {module.ATTACK.name: module.ATTACK for module in (loss, pia, secmi, score_norm, secmi_nns)}
# what runs without --attack: the per-image scores (secmi-nns trains a classifier: asked for by name)
DEFAULT_ATTACKS = ("loss", "pia", "secmi", "score-norm")
INTEGER_SETTINGS = ("timestep", "t_sec", "k", "noises", "p", "seed", "epochs")


def get_attack(name: str) -> Attack:
    if name not in ATTACKS:
        raise InputError(f"--attack {name}: unknown attack; valid attacks: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def attack_settings(name: str, overrides: dict[str, float], loss_noise: str | None = None) -> dict:
    """The attack's defaults with ``overrides`` (``KEY=VALUE`` from ``--setting NAME.KEY=VALUE``) applied;
    for ``loss``, ``loss_noise`` (``--loss-noise``, None: shared) chooses its estimator."""
    attack = get_attack(name)
    unknown = sorted(set(overrides) - set(attack.defaults) - ({"noise"} if name == "loss" else set()))
    if unknown or (name == "loss" and "noise" in overrides):
        key = unknown[0] if unknown else "noise"
        hint = "; the loss attack's noise is chosen by --loss-noise" if key == "noise" and name == "loss" else ""
        raise InputError(f"--setting {name}.{key}: {name} has no such setting{hint}; its settings: "
                         f"{', '.join(k for k in attack.defaults if not (name == 'loss' and k == 'noise'))}")
    if name == "loss":
        overrides = loss.settings_for(loss_noise or "shared", overrides)
    settings = {**attack.defaults, **overrides}
    for key, value in settings.items():
        if key in INTEGER_SETTINGS and (value != int(value) or value < (0 if key in ("timestep", "seed") else 1)):
            raise InputError(f"--setting {name}.{key}={value}: expected a "
                             f"{'non-negative' if key in ('timestep', 'seed') else 'positive'} integer")
    if "train_fraction" in settings and not 0 < settings["train_fraction"] < 1:
        raise InputError(f"--setting {name}.train_fraction={settings['train_fraction']}: expected a number between 0 and 1")
    if "k" in settings and settings["t_sec"] % settings["k"]:
        raise InputError(f"--setting {name}.t_sec={settings['t_sec']}: SecMI steps in k={settings['k']}; "
                         "t_sec must be a multiple of k")
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


__all__ = ["ATTACKS", "DEFAULT_ATTACKS", "Attack", "get_attack", "attack_settings", "parse_settings"]
