"""The audit (``memaudit audit``, ``memaudit.audit``): one entry function, ``run_audit(AuditConfig)
-> AuditResult``, which the CLI and the Python API both call.

Modules: ``config`` (the typed settings), ``run`` (load, sample, measure, decide, write),
``samples`` (generated or given samples), ``findings`` (the findings shown; the verdict is ``memaudit.verdict``'s),
``provenance`` (manifest and provenance), ``sweep`` (a folder of snapshots, one audit each) and
``report`` (``memaudit report``: re-render report.html).
"""

from memaudit.auditing.config import AuditConfig
from memaudit.auditing.report import render_report
from memaudit.auditing.run import run_audit

__all__ = ["AuditConfig", "run_audit", "render_report"]
