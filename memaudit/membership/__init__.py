"""Membership inference against diffusion models (``memaudit mia``, ``memaudit.mia``): one entry
function, ``run_mia(MiaConfig)``, and one module per attack, registered by name in ``attacks``.

Every attack scores images so that higher means "more likely a training member"; ``memaudit.roc``
turns member and non-member scores into AUC, TPR at low FPR and the ROC.
"""

from .attacks import ATTACKS, DEFAULT_ATTACKS, Attack, attack_settings, get_attack, parse_settings
from .audit import MiaConfig, run_mia

__all__ = ["MiaConfig", "run_mia", "ATTACKS", "DEFAULT_ATTACKS", "Attack", "get_attack", "attack_settings", "parse_settings"]
