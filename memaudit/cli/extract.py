"""``memaudit extract``: options to ``ExtractConfig``, ``memaudit.extraction.run_extract``, the counts printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memaudit import progress
from memaudit.cli import options
from memaudit.cli.common import command_line, out_console, user_errors


def extract(
    model: str = typer.Argument(..., help="The model to extract from: a diffusers pipeline directory or any MODEL audit takes."),
    train: Optional[str] = typer.Option(None, "--train", help="Verify each candidate against this training set (optional).", rich_help_panel="Data"),
    device: str = options.device("Model"),
    trust_checkpoint: bool = options.trust_checkpoint(warn=False),
    n: int = typer.Option(1000, "--n", help="Generations to sample (conditional models: grouped by class or prompt).", rich_help_panel="Sampling"),
    seed: int = typer.Option(0, "--seed", help="Seed of the first generation; generation i uses seed + i.", rich_help_panel="Sampling"),
    batch_size: int = options.batch_size(256),
    steps: Optional[int] = options.steps(),
    labels: Optional[str] = typer.Option(None, "--labels", help="Class-conditional models: uniform, train or a class index.", rich_help_panel="Sampling"),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Text-to-image models: a file with one prompt per line.", rich_help_panel="Sampling"),
    threshold: float = typer.Option(0.15, "--threshold", help="Tiled L2 distance ([0, 1] pixels) at or below which two generations are near-identical.", rich_help_panel="Criteria"),
    min_clique: int = typer.Option(10, "--min-clique", help="Generations a clique needs to count as an extracted image (paper: 10).", rich_help_panel="Criteria"),
    out: Path = typer.Option(..., "--out", help="Run directory for extract.json, extract.html, samples.npz.", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON on stdout.", rich_help_panel="Output"),
    quiet: bool = options.quiet("Output"),
) -> None:
    """Extract training images without the training set: cliques of near-identical generations (Carlini et al. 2023)."""
    from memaudit.extraction import ExtractConfig, run_extract

    progress.set_enabled(not quiet)
    with user_errors():
        document = run_extract(ExtractConfig(
            model=model, out=out, n=n, train=train, threshold=threshold, min_clique=min_clique, seed=seed,
            batch_size=batch_size, steps=steps, device=device, labels=labels, prompts=prompts,
            trust_checkpoint=trust_checkpoint, command=command_line()))
    counts = {key: document[key] for key in ("n_samples", "n_cliques", "samples_in_cliques", "n_verified",
                                             "distinct_training_images", "false_clique_rate")}
    if as_json:
        out_console.print_json(json.dumps({**counts, "run_dir": str(out)}))
        return
    verified = "" if document["n_verified"] is None else f", {document['n_verified']} verified as training images"
    out_console.print(f"{document['n_cliques']} cliques of >= {min_clique} near-identical generations among "
                      f"{document['n_samples']}{verified}", highlight=False, soft_wrap=True)
    out_console.print(f"report: {Path(out) / 'extract.html'}", highlight=False, soft_wrap=True)
