"""``memaudit report``: a finished audit's report.html rendered again from its audit.json."""

from __future__ import annotations

from pathlib import Path

from memaudit import outputs, rundir


def render_report(run_dir: Path, redact: str | None = None) -> Path:
    """Re-render report.html of a finished run from its audit.json (``redact``: none, blur, omit;
    default: the choice recorded in audit.json)."""
    from memaudit.reports import write_report

    with rundir.amended(Path(run_dir), (outputs.REPORT_HTML,)):  # the run's lock while the page is rewritten
        return write_report(Path(run_dir), redact=redact)
