"""Effective Model Memorization (``memaudit emm``, ``memaudit.emm``; Gu et al. 2023): retraining on
nested subsets and the EMM search. One entry function, ``run.run_emm(EMMConfig)``.

Modules, lowest first: ``search`` (the bracket-and-bisect search over measured points),
``training`` (one model trained from scratch, on the networks of ``memaudit.denoisers``),
``recipe`` (the recipe, subsets, labels and one measured point), ``workers`` (points trained in
parallel processes) and ``run`` (one search per sweep value, written to emm.json).
"""

from memaudit.retraining.recipe import EMMConfig
from memaudit.retraining.run import EMMResult, run_emm

__all__ = ["EMMConfig", "EMMResult", "run_emm"]
