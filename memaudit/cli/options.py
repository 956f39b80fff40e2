"""The option groups commands share, declared once: each function returns the typer option of one
flag, with its help text; a command that needs other words or another panel says so in its call.

``--help`` lists each command's options in the order its signature gives, under the panel named
here (``rich_help_panel``: Data, Model, Sampling, Search, Criteria, Training, Output)."""

from __future__ import annotations

import typer

DEVICE_HELP = "auto (CUDA when present), cpu, cuda or cuda:N."
QUIET_HELP = "No progress output (bars, the sampling plan, plain progress lines)."
TRUST_HELP = "Allow pickled checkpoints and checkpoint code to run."


# --- where and how the model runs ---------------------------------------------------------------------

def device(panel: str | None = None):
    return typer.Option("auto", "--device", help=DEVICE_HELP, rich_help_panel=panel)


def trust_checkpoint(warn: bool = True, panel: str | None = "Model"):
    """``--trust-checkpoint`` (``warn``: the help says to use it only for trusted files)."""
    return typer.Option(False, "--trust-checkpoint", help=TRUST_HELP + (" Only for files you trust." if warn else ""),
                        rich_help_panel=panel)


def code_path(panel: str | None = "Model"):
    return typer.Option(None, "--code-path", help="Folder put on the import path for a trusted pickle's classes "
                        "(EDM's code).", rich_help_panel=panel)


def factory(panel: str | None = "Model"):
    return typer.Option(None, "--factory", help="file.py:build constructing the network of a .safetensors MODEL.",
                        rich_help_panel=panel)


# --- sampling -------------------------------------------------------------------------------------

def steps(panel: str | None = "Sampling"):
    return typer.Option(None, "--steps", help="Sampling steps (default: the model's own).", rich_help_panel=panel)


def batch_size(default: int, panel: str | None = "Sampling"):
    """``--batch-size`` of a command that samples: a batch size never changes the results."""
    return typer.Option(default, "--batch-size", help="Samples per model call (does not change the results).",
                        rich_help_panel=panel)


# --- approximate search (audit, index) ------------------------------------------------------------

def nlist(panel: str | None = None):
    return typer.Option(None, "--nlist", help="ivf, ivf-pq: inverted lists (default: the largest power of two at "
                        "most sqrt(n)).", rich_help_panel=panel)


def pq_m(panel: str | None = None):
    return typer.Option(None, "--m", help="ivf-pq: PQ sub-quantizers (default: the largest divisor of the dimension "
                        "up to dim/2 and 128 at 4 bits, dim/4 and 64 at 8); hnsw: graph degree (32).",
                        rich_help_panel=panel)


def nbits(panel: str | None = None):
    return typer.Option(None, "--nbits", help="ivf-pq: bits per PQ code (default 4: faiss's fast-scan codes).",
                        rich_help_panel=panel)


# --- output and caches ----------------------------------------------------------------------------

def quiet(panel: str | None = None):
    return typer.Option(False, "--quiet", help=QUIET_HELP, rich_help_panel=panel)


def cache_dir():
    return typer.Option(None, "--cache-dir", help="Folder of the shared caches (training-set features, decoded sets, "
                        "quality radii) for this command; default $MEMAUDIT_CACHE, else ~/.cache/memaudit.",
                        rich_help_panel="Output", show_default=False)


def no_cache():
    return typer.Option(False, "--no-cache", help="Use no shared cache: nothing is read from earlier runs or left "
                        "behind (a private cache for this command, removed at its end). Same results, more work.",
                        rich_help_panel="Output")
