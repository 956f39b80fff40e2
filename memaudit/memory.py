"""Refusing work that cannot fit in memory before allocating it.

An image size or resolution typed with a digit too many (``--image-size 50000``) asks for
terabytes; numpy then raises ``MemoryError`` after minutes, or the kernel kills the process with
no message at all. ``check_fits`` compares a working set, computed from the sizes alone, with the
memory the system says is available and refuses with one line naming the option.
"""

from __future__ import annotations

import os

from memaudit.errors import InputError


def available_bytes() -> int | None:
    """Memory available to a new allocation without swapping (Linux MemAvailable), else the free
    physical pages; None where the system does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, option: str, what: str) -> None:
    """InputError naming ``option`` when ``nbytes`` (``what``, e.g. "1797 images of 50000x50000x1")
    exceed the memory available now."""
    available = available_bytes()
    if available is not None and nbytes > available:
        raise InputError(f"{option}: {what} need {_size(nbytes)} of memory, more than the {_size(available)} "
                         "available; give a smaller size")


def _size(nbytes: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return str(nbytes)
