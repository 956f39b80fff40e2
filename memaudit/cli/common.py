"""What every command shares at run time: the consoles, exit codes, one-line errors, the cache choice."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console

from memaudit import distributed
from memaudit.errors import MemauditError, storage_error

EXIT_BAD_INPUT = 2
EXIT_OVER_LIMIT = 3
EXIT_INTERRUPTED = 130

out_console = Console(emoji=False)  # user text such as "random:x" must not become an emoji
err_console = Console(stderr=True, emoji=False)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """User mistakes become one line and exit code 2; Ctrl-C says how to resume."""
    try:
        try:
            yield
        except OSError as error:  # a full disk, a read-only --out: one line too, not a traceback
            converted = storage_error(error)
            if converted is None:
                raise
            raise converted from None
    except MemauditError as error:
        world = distributed.current()
        where = f" (rank {world.rank})" if world.distributed and not world.is_main else ""
        err_console.print(f"memaudit: error{where}: {error}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        err_console.print("memaudit: interrupted; finished shards, points and checkpoints are kept, rerun the same command to resume",
                          markup=False, highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None


@contextlib.contextmanager
def cache(cache_dir: Optional[Path], no_cache: bool = False) -> Iterator[None]:
    """The cache this command uses: ``--cache-dir``, a private one for ``--no-cache``, else
    ``$MEMAUDIT_CACHE`` as set (memaudit.storage.cache_root reads the variable)."""
    import os
    import shutil
    import tempfile

    if cache_dir is not None and no_cache:
        raise MemauditError("--cache-dir and --no-cache: give one of them")
    if no_cache and distributed.launched_by_torchrun():
        raise MemauditError("--no-cache: not under torchrun, whose ranks share features through the cache; "
                            "give every rank the same fresh --cache-dir instead")
    if cache_dir is None and not no_cache:
        yield
        return
    if cache_dir is not None:  # a path under a file: said now, not after an hour of sampling
        from memaudit.storage import make_folder

        make_folder(Path(cache_dir).expanduser(), "--cache-dir")
    private = Path(tempfile.mkdtemp(prefix="memaudit-no-cache-")) if no_cache else None
    saved = os.environ.get("MEMAUDIT_CACHE")
    os.environ["MEMAUDIT_CACHE"] = str(private or Path(cache_dir).expanduser())
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MEMAUDIT_CACHE", None)
        else:
            os.environ["MEMAUDIT_CACHE"] = saved
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)


def command_line() -> str:
    """The command as typed, for provenance."""
    return shlex.join(["memaudit", *sys.argv[1:]])
