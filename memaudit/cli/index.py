"""``memaudit index``: options to ``IndexConfig``, ``memaudit.trainset.run_index``, the cache entries printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memaudit import progress
from memaudit.cli import options
from memaudit.cli.common import cache, out_console, user_errors


def index(
    data: str = typer.Argument(..., help="Training set: digits[:N], or a path: a folder of images, .npz/.npy, an EDM dataset zip, a CIFAR batch folder, webdataset .tar shards (globs, {000..009}), parquet, a save_to_disk folder; FORMAT:PATH names the format."),
    space: list[str] = typer.Option(..., "--space", help="Feature space to precompute (repeatable), as for audit --space."),
    index_kind: Optional[str] = typer.Option(None, "--index", help="Also build this approximate index in each space: ivf-pq, ivf or hnsw (audits with the same --index and parameters load it)."),
    nlist: Optional[int] = options.nlist(),
    pq_m: Optional[int] = options.pq_m(),
    nbits: Optional[int] = options.nbits(),
    device: str = options.device(),
    as_json: bool = typer.Option(False, "--json", help="Print the cache entries as JSON on stdout."),
    quiet: bool = options.quiet(),
    cache_dir: Optional[Path] = options.cache_dir(),
) -> None:
    """Precompute a training set's features, and optionally its approximate index, for later audits (--cache-dir, else $MEMAUDIT_CACHE, else ~/.cache/memaudit)."""
    from memaudit.trainset import IndexConfig, run_index

    progress.set_enabled(not quiet)
    with user_errors(), cache(cache_dir):
        rows = run_index(IndexConfig(data, space, device=device, index=index_kind, nlist=nlist, m=pq_m, nbits=nbits))
    if as_json:
        out_console.print_json(json.dumps(rows))
        return
    for row in rows:
        state = {None: "searched as pixels, nothing to cache", True: "already cached", False: "cached"}[row["cached"]]
        out_console.print(f"{row['space']}: {row['n']} images, {state}{': ' + row['path'] if row['path'] else ''}",
                          highlight=False, soft_wrap=True, markup=False)
        if "index" in row:
            built = row["index"]
            params = ", ".join(f"{k}={v}" for k, v in built["params"].items() if k != "kind")
            out_console.print(f"{row['space']}: {built['index']} index ({params}), "
                              f"{'built' if built['built'] else 'already built'}: {built['path']}",
                              highlight=False, soft_wrap=True, markup=False)
