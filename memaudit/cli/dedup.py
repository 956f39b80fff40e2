"""``memaudit dedup``: options to ``DedupConfig``, ``memaudit.trainset.run_dedup``, the clusters printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memaudit import progress
from memaudit.cli import options
from memaudit.cli.common import cache, out_console, user_errors


def dedup(
    data: str = typer.Argument(..., help="Training set: digits[:N], a folder, an archive or array file (see --train)."),
    space: str = typer.Option("pixel", "--space", help="Where to compare images: pixel, pixel-N or an embedding space."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Near-duplicate limit: RMS pixel difference in [0, 1] (default 0.02) in pixel spaces, cosine similarity (default 0.98) in embedding spaces."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write dedup.json into."),
    device: str = options.device(),
    as_json: bool = typer.Option(False, "--json", help="Print the clusters as JSON on stdout."),
    quiet: bool = options.quiet(),
    cache_dir: Optional[Path] = options.cache_dir(),
    no_cache: bool = options.no_cache(),
) -> None:
    """Find exact and near-duplicate clusters in a training set."""
    from memaudit.trainset import DedupConfig, run_dedup

    progress.set_enabled(not quiet)
    with user_errors(), cache(cache_dir, no_cache):
        result = run_dedup(DedupConfig(data, space, threshold, device=device, out=out))
    if as_json:
        out_console.print_json(json.dumps(result))
        return
    clusters = result["clusters"]
    exact = sum(c["exact"] for c in clusters)
    out_console.print(f"{len(clusters)} duplicate clusters ({exact} exact, {len(clusters) - exact} near) holding "
                      f"{result['duplicated_images']} of {result['train']['n']} images in {result['space']}",
                      highlight=False, soft_wrap=True, markup=False)
    for cluster in clusters[:20]:
        kind = "exact" if cluster["exact"] else "near"
        out_console.print(f"  {kind}: {', '.join(cluster['ids'])}", highlight=False, soft_wrap=True, markup=False)
    if len(clusters) > 20:
        out_console.print(f"  ... {len(clusters) - 20} more (--json or --out for all)", highlight=False)
