"""``memaudit demo``: the built-in audits of ``memaudit.demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from memaudit import progress
from memaudit.cli import options
from memaudit.cli.audit import print_result
from memaudit.cli.common import command_line, out_console, user_errors


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the three demo runs (two DDIM checkpoints and the optimal denoiser)."),
    n: int = typer.Option(1000, "--n", help="Samples per model."),
    device: str = options.device(),
    quiet: bool = options.quiet(),
) -> None:
    """Audit the built-in DDIM checkpoints trained on the digits, and the optimal denoiser."""
    from memaudit.demo import run_demo

    progress.set_enabled(not quiet)
    with user_errors():
        results = run_demo(out, n=n, device=device, command=command_line())
    for name, result in results.items():
        out_console.print(f"[bold]{name}[/bold]")
        print_result(result, as_json=False)
