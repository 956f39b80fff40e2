"""``memaudit emm``: options to ``EMMConfig``, ``memaudit.retraining.run_emm``, the brackets printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memaudit import progress
from memaudit.cli import options
from memaudit.cli.common import cache, command_line, out_console, user_errors
from memaudit.errors import MemauditError


def emm(
    train: str = typer.Option("digits", "--train", help="Training set to subsample: digits (the default, sklearn's 1797 8x8 digits), a folder of images, or an .npz (with labels for balanced subsets).", rich_help_panel="Data"),
    classes: Optional[int] = typer.Option(None, "--classes", help="Inter-diversity: train on the first C classes only.", rich_help_panel="Data"),
    mix: Optional[str] = typer.Option(None, "--mix", help="Intra-diversity: DATA:ALPHA, a share ALPHA of each subset from another set (resized to match), e.g. photos:0.5.", rich_help_panel="Data"),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Resize the images to R x R before training.", rich_help_panel="Data"),
    labels: str = typer.Option("none", "--labels", help="Condition on none, true (the classes), random:C, or unique (one class per image).", rich_help_panel="Data"),
    subset: str = typer.Option("balanced", "--subset", help="balanced (first |D|/C of each class) or random (nested).", rich_help_panel="Data"),
    precond: Optional[str] = typer.Option(None, "--precond", help="(budget) Preconditioning and loss: edm, vp, ve (EDM's Table 1, Heun-sampled, as Gu et al.) or ddpm (diffusers UNet, DDIM-sampled).", rich_help_panel="Model"),
    arch: Optional[str] = typer.Option(None, "--arch", help="(budget) U-Net preset: tiny, small, ddpmpp, ncsnpp (the paper's), ddpmpp-32 (diffusers, ddpm only).", rich_help_panel="Model"),
    width: Optional[int] = typer.Option(None, "--width", help="Base channel count (overrides the preset).", rich_help_panel="Model"),
    depth: Optional[int] = typer.Option(None, "--depth", help="Residual blocks per level (overrides the preset).", rich_help_panel="Model"),
    attention: Optional[str] = typer.Option(None, "--attention", help="Resolutions with self-attention, e.g. 16 or 16,8, or none.", rich_help_panel="Model"),
    time_embedding: Optional[str] = typer.Option(None, "--time-embedding", help="positional or fourier (default: the preset's; edm/vp/ve only).", rich_help_panel="Model"),
    skips: Optional[str] = typer.Option(None, "--skips", help="Skip connections kept: all or a 0/1 mask per encoder output, e.g. 1,0,1,1,1,1 (edm/vp/ve only).", rich_help_panel="Model"),
    budget: str = typer.Option("default", "--budget", help="Training budget T the answer is stated under: quick (tests, demos), default (minutes on a CPU), paper (Gu et al.'s CIFAR-10 recipe: DDPM++, VP, 40,000 epochs, batch 512, lr 2e-4; a GPU budget). Options below marked (budget) override it.", rich_help_panel="Training"),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="(budget) Training duration in epochs: images seen = epochs x |D|.", rich_help_panel="Training"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="(budget) Training batch size.", rich_help_panel="Training"),
    lr: Optional[float] = typer.Option(None, "--lr", help="(budget) Adam learning rate.", rich_help_panel="Training"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="(budget) Learning-rate warm-up steps.", rich_help_panel="Training"),
    ema: Optional[float] = typer.Option(None, "--ema", help="(budget) EMA decay of the saved weights.", rich_help_panel="Training"),
    weight_decay: float = typer.Option(0, "--weight-decay", help="Adam weight decay.", rich_help_panel="Training"),
    seeds: int = typer.Option(1, "--seeds", help="Training seeds per size (0..N-1); decisions use the mean.", rich_help_panel="Training"),
    snapshots: Optional[int] = typer.Option(None, "--snapshots", help="(budget) EMA models saved evenly through training; the highest ratio counts.", rich_help_panel="Training"),
    extend: Optional[int] = typer.Option(None, "--extend", help="(budget) A larger T for points still rising: double a point's training up to this many times while its ratio still rises (0 in every budget).", rich_help_panel="Training"),
    converge_tolerance: float = typer.Option(0.03, "--converge-tolerance", help="Still rising: the second half of a point's training raised its highest ratio by more than this.", rich_help_panel="Training"),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Training steps between resumable checkpoints.", rich_help_panel="Training"),
    parallel: str = typer.Option("points", "--parallel", help="Under torchrun: points (each rank trains its own points, several sizes per round) or ddp (all ranks train each point together, data parallel).", rich_help_panel="Training"),
    device: str = options.device("Training"),
    threads: int = typer.Option(1, "--threads", help="Torch CPU threads (1: fastest for small U-Nets, above all on a busy CPU).", rich_help_panel="Training"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Points trained at once, one process each (default: 2 on a machine with at least 2 cores, else 1; not under torchrun).", rich_help_panel="Training"),
    epsilon: float = typer.Option(0.1, "--epsilon", help="EMM threshold: memorization ratio >= 1 - epsilon.", rich_help_panel="Search"),
    tolerance: Optional[int] = typer.Option(None, "--tolerance", help="Stop bisecting when the bracket is narrower than this many images (default: the size grid).", rich_help_panel="Search"),
    relative_tolerance: float = typer.Option(1.25, "--relative-tolerance", help="Stop bisecting once the bracket's upper end is at most this times its lower end (1: down to --tolerance).", rich_help_panel="Search"),
    stop_passed: bool = typer.Option(True, "--stop-passed/--full-points", help="With one seed, stop a point's training at its first snapshot that passes (its verdict is settled; its ratio is then that snapshot's), or train every point to its full budget.", rich_help_panel="Search"),
    start: Optional[int] = typer.Option(None, "--start", help="First size tried (default: 2 per class, then doubling).", rich_help_panel="Search"),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="Largest size tried (default: the whole set).", rich_help_panel="Search"),
    grid: Optional[str] = typer.Option(None, "--grid", help="Sizes to measure in any case, e.g. 10,20,40,80 (the paper's fixed grid).", rich_help_panel="Search"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="One search per value: KEY=V1,V2,... (width, depth, labels, resolution, weight-decay, ...).", rich_help_panel="Search"),
    n: Optional[int] = typer.Option(None, "--n", help="(budget) Samples generated per audited snapshot.", rich_help_panel="Sampling"),
    sample_steps: Optional[int] = typer.Option(None, "--sample-steps", help="Sampler steps (default: EDM's 18 Heun steps; 50 DDIM steps for ddpm).", rich_help_panel="Sampling"),
    out: Path = typer.Option(..., "--out", help="Run directory: emm.json, emm.html and points/ (models, audits).", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print emm.json on stdout.", rich_help_panel="Output"),
    quiet: bool = options.quiet("Output"),
    cache_dir: Optional[Path] = options.cache_dir(),
    no_cache: bool = options.no_cache(),
) -> None:
    """Estimate Effective Model Memorization: retrain on nested subsets and search the largest |D| that memorizes."""
    from memaudit.retraining import EMMConfig, run_emm

    progress.set_enabled(not quiet)
    with user_errors(), cache(cache_dir, no_cache):
        result = run_emm(EMMConfig(
            train=train, out=out, budget=budget, precond=precond, arch=arch, width=width, depth=depth, attention=attention,
            time_embedding=time_embedding, skips=skips, classes=classes, mix=mix, resolution=resolution,
            epochs=epochs, batch_size=batch_size, learning_rate=lr, warmup_steps=warmup, ema_decay=ema,
            weight_decay=weight_decay, labels=labels, subset=subset, epsilon=epsilon, tolerance=tolerance,
            relative_tolerance=relative_tolerance, stop_passed=stop_passed,
            seeds=seeds, start=start, max_size=max_size, grid=_sizes(grid), n=n, sample_steps=sample_steps, snapshots=snapshots,
            extend=extend, converge_tolerance=converge_tolerance,
            checkpoint_every=checkpoint_every, sweep=sweep, parallel=parallel, device=device, threads=threads,
            workers=workers, command=command_line()))
    if as_json:
        out_console.print_json(json.dumps(result.emm))
        return
    for search in result.emm["searches"]:
        answer = search["emm"]
        # a size stopped at its first passing snapshot: its ratio is a lower bound
        sizes = ", ".join(f"{s['size']}: {'>=' if s.get('lower_bound') else ''}{s['mean']:.1%}" for s in search["sizes"])
        name = f"{search['label']}: " if search["label"] else ""
        out_console.print(f"{name}{answer['answer']}", highlight=False, soft_wrap=True)
        out_console.print(f"{name}ratio by |D|: {sizes}", highlight=False, soft_wrap=True)
        if answer["still_rising"]:
            out_console.print(f"{name}still rising at the end of T: |D| = {answer['upper']} was still memorizing more in the "
                              "second half of its training; a larger T (--epochs, --extend) may raise EMM", highlight=False,
                              soft_wrap=True)
        if answer["advice"]:
            out_console.print(f"{name}advice: {answer['advice']}", highlight=False, soft_wrap=True)
        if not search["monotone"]:
            out_console.print(f"{name}warning: the measured ratios are not monotone in |D|", highlight=False)
    out_console.print(f"emm: {result.out / 'emm.json'}\npage: {result.page}", highlight=False, soft_wrap=True)


def _sizes(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise MemauditError(f"--grid {text}: expected comma-separated sizes such as 10,20,40") from None
