"""``memaudit report``: a finished audit's report.html rendered again (``memaudit.auditing.render_report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from memaudit.cli.common import out_console, user_errors


def report(
    run_dir: Path = typer.Argument(..., help="The --out folder of a finished audit."),
    redact: Optional[str] = typer.Option(None, "--redact", help="none, blur or omit (default: as recorded in audit.json)."),
) -> None:
    """Re-render report.html from a run's audit.json."""
    from memaudit.auditing import render_report

    with user_errors():
        path = render_report(run_dir, redact=redact)
    out_console.print(f"report: {path}", highlight=False, soft_wrap=True)
