"""``memaudit detect``: options to ``DetectConfig``, ``memaudit.detection.run_detect``, the scores printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memaudit import progress
from memaudit.cli import options
from memaudit.cli.common import command_line, out_console, user_errors


def detect(
    pipeline: str = typer.Argument(..., help="A text-to-image diffusers pipeline directory (or hf:ORG/NAME in the local cache)."),
    prompts: str = typer.Option(..., "--prompts", help="Prompts, one per line; PROMPT<TAB>memorized|novel labels them for an AUC.", rich_help_panel="Data"),
    device: str = options.device("Model"),
    trust_checkpoint: bool = options.trust_checkpoint(warn=False),
    detector: str = typer.Option("text-noise-norm", "--detector",
                                 help="text-noise-norm (Wen et al. 2024), hessian-score-difference-norm (Jeon et al. "
                                      "2025) or norm-plus-alignment (Asthana & Belagiannis 2026).", rich_help_panel="Detector"),
    gamma_norm: Optional[float] = typer.Option(None, "--gamma-norm", help="norm-plus-alignment: weight of the norm (1).", rich_help_panel="Detector"),
    gamma_alignment: Optional[float] = typer.Option(None, "--gamma-alignment", help="norm-plus-alignment: weight of the alignment (2, SD 1.4).", rich_help_panel="Detector"),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM schedule length (all detectors; papers: 50).", rich_help_panel="Sampling"),
    first_steps: Optional[int] = typer.Option(None, "--first-steps", help="text-noise-norm: steps averaged from the start (Wen et al.: all 50).", rich_help_panel="Sampling"),
    generations: Optional[int] = typer.Option(None, "--generations", help="Starting noises per prompt (Wen, Jeon: 4; Asthana: 1).", rich_help_panel="Sampling"),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="text-noise-norm: guidance scale of the trajectory (Wen et al.: 7.5).", rich_help_panel="Sampling"),
    seed: int = typer.Option(0, "--seed", help="Generation g starts from the noise of seed + g, for every prompt.", rich_help_panel="Sampling"),
    batch_size: int = typer.Option(64, "--batch-size", help="Prompt-generation pairs per model call.", rich_help_panel="Sampling"),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for detect.json and detect.html.", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print per-prompt scores and the AUC as JSON on stdout.", rich_help_panel="Output"),
    quiet: bool = options.quiet("Output"),
) -> None:
    """Detect memorized prompts of a text-to-image model without its training data (Wen et al., ICLR 2024, and later detectors)."""
    from memaudit.detection import DetectConfig, run_detect

    progress.set_enabled(not quiet)
    with user_errors():
        document = run_detect(DetectConfig(
            pipeline=pipeline, prompts=prompts, out=out, detector=detector, steps=steps, guidance=guidance,
            generations=generations, first_steps=first_steps, gamma_norm=gamma_norm,
            gamma_alignment=gamma_alignment, seed=seed, batch_size=batch_size, device=device,
            trust_checkpoint=trust_checkpoint, command=command_line()))
    if as_json:
        out_console.print_json(json.dumps({"prompts": document["prompts"], "evaluation": document["evaluation"]}))
        return
    for row in sorted(document["prompts"], key=lambda r: -r["score"]):
        label = f" [{row['label']}]" if row["label"] else ""
        out_console.print(f"{row['score']:10.4f}  {row['prompt']}{label}", highlight=False, markup=False, soft_wrap=True)
    if document["evaluation"]:
        evaluation = document["evaluation"]
        out_console.print(f"AUC memorized vs novel: {evaluation['auc']:.4f} (95% CI {evaluation['auc_ci95'][0]:.3f}-"
                          f"{evaluation['auc_ci95'][1]:.3f})", highlight=False)
