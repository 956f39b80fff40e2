"""Generate-and-filter extraction (``memaudit extract``, ``memaudit.extract``; Carlini et al. 2023
section 4): one entry function, ``run_extract(ExtractConfig)``; the method is in ``cliques``."""

from memaudit.extraction.run import ExtractConfig, run_extract

__all__ = ["ExtractConfig", "run_extract"]
