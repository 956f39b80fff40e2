"""Commands on a training set ahead of audits: ``memaudit index`` (features and approximate
indexes, ``index.run_index``) and ``memaudit dedup`` (duplicate clusters, ``dedup.run_dedup``)."""

from memaudit.trainset.dedup import DedupConfig, run_dedup
from memaudit.trainset.index import IndexConfig, run_index

__all__ = ["DedupConfig", "IndexConfig", "run_dedup", "run_index"]
