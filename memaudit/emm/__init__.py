"""Effective Model Memorization (Gu et al. 2023): retraining on nested subsets and the EMM search.

Modules, lowest first: ``search`` (the bracket-and-bisect search over measured points),
``architectures`` (U-Net shapes), ``training`` (one model trained from scratch), ``recipe`` (the
recipe, subsets, labels and one measured point), ``files`` (emm.json's name and reader) and
``run`` (one search per sweep value, written to emm.json). ``memaudit.api.run_emm`` is the door.
"""


# memaudit.emm(...) calls the API function of that name (memaudit.entry).
from memaudit.entry import make_callable  # noqa: E402

make_callable(__name__)
