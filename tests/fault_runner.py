"""Run the memaudit CLI with a fault injected, for test_faults.py.

    python tests/fault_runner.py audit ...        (memaudit's own arguments)

Environment:
- ``FAULT_KILL_AT=REGEX[#N]``: at the N-th (default first) file publication (``os.replace``)
  whose destination path matches REGEX, kill -9 this process: the file's temporary is fully
  written, the file itself is not there (the worst moment of an atomic write).
- ``FAULT_KILL_AT=search``: kill -9 on entering the nearest-neighbour search.
- ``FAULT_CHUNK_ROWS=N``: feature chunks of N rows instead of ``CHUNK_ROWS``.
- ``FAULT_HOLD=first|second`` with ``FAULT_SYNC=DIR``: for two audits filling one feature cache.
  Once both have extracted their chunks, ``first`` publishes; ``second`` waits until the first has
  published the cache file and removed the chunks, then goes on (the interleaving that made the
  second audit crash on a vanished chunk).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_at_publication(pattern: str, nth: int) -> None:
    real_replace = os.replace
    seen = [0]

    def replace(src, dst, *args, **kwargs):
        if re.search(pattern, os.fsdecode(dst)):
            seen[0] += 1
            if seen[0] == nth:
                _kill()
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def _kill_in_search() -> None:
    import memaudit.measure

    def knn(*args, **kwargs):
        _kill()

    memaudit.measure.knn = knn


def _hold(role: str, sync: Path) -> None:
    import memaudit.features.cache as cache

    real_finish = cache.units.finish

    class Units:  # the cache module's view of memaudit.units, with a pause after the chunks
        plan = staticmethod(cache.units.plan)

        @staticmethod
        def finish():
            real_finish()
            (sync / f"{role}.chunks-done").touch()
            deadline = time.monotonic() + 60
            if role == "first":  # both have their chunks before either publishes
                while not (sync / "second.chunks-done").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            if role == "second":
                while time.monotonic() < deadline:
                    published = list((sync / "cache" / "features").glob("*.npy"))
                    chunk_dirs = list((sync / "cache" / "features").glob("*.chunks"))
                    if published and not chunk_dirs:
                        break
                    time.sleep(0.05)

    cache.units = Units


def main() -> None:
    kill_at = os.environ.get("FAULT_KILL_AT")
    if kill_at == "search":
        _kill_in_search()
    elif kill_at:
        pattern, _, nth = kill_at.partition("#")
        _kill_at_publication(pattern, int(nth or 1))
    if os.environ.get("FAULT_CHUNK_ROWS"):  # several feature chunks on a small set
        import memaudit.features.cache

        memaudit.features.cache.CHUNK_ROWS = int(os.environ["FAULT_CHUNK_ROWS"])
    if os.environ.get("FAULT_HOLD"):
        _hold(os.environ["FAULT_HOLD"], Path(os.environ["FAULT_SYNC"]))
    from memaudit.cli import main as cli_main

    sys.argv = ["memaudit", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
