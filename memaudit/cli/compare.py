"""``memaudit compare``: options to ``CompareConfig``, ``memaudit.comparison.run_compare``."""

from __future__ import annotations

from pathlib import Path

import typer

from memaudit.cli.common import out_console, user_errors


def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more --out folders of finished audits, in the order to plot."),
    out: Path = typer.Option(..., "--out", help="Folder for compare.json and compare.html."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Compare audits of different training sets or criteria."),
    as_json: bool = typer.Option(False, "--json", help="Print compare.json on stdout."),
) -> None:
    """Compare several audits (checkpoints, snapshots, sizes) on one page."""
    from memaudit.comparison import CompareConfig, run_compare

    with user_errors():
        path = run_compare(CompareConfig(run_dirs, out, allow_mismatch=allow_mismatch))
    if as_json:
        out_console.print_json((path.parent / "compare.json").read_text())
    else:
        out_console.print(f"comparison: {path}", highlight=False, soft_wrap=True)
