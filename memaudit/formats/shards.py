"""Shard lists as webdataset names them: one file, a glob (``shards/*.tar``) or brace ranges and
alternatives (``data-{000..009}.tar``, ``{train,extra}-{0..3}.tar``), expanded in order."""

from __future__ import annotations

import glob
import re
from pathlib import Path

from memaudit.errors import DataError

MAX_SHARDS = 100_000
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def is_pattern(spec: str) -> bool:
    return any(ch in spec for ch in "*?[") or _BRACE.search(spec) is not None


def braces(pattern: str) -> list[str]:
    """Expand ``{a..b}`` (zero-padded to the wider bound when either has a leading zero) and
    ``{x,y}`` groups, left to right."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body = match.group(1)
    numbers = _RANGE.match(body)
    if numbers:
        low, high = numbers.groups()
        first, last = int(low), int(high)
        if abs(last - first) >= MAX_SHARDS:
            raise DataError(f"{pattern}: the range {{{body}}} names more than {MAX_SHARDS} shards")
        padded = any(len(b.lstrip("-")) > 1 and b.lstrip("-").startswith("0") for b in (low, high))
        width = max(len(low), len(high)) if padded else 0
        step = 1 if last >= first else -1
        choices = [str(i).zfill(width) for i in range(first, last + step, step)]
    else:
        choices = body.split(",")
    head, tail = pattern[:match.start()], pattern[match.end():]
    expanded: list[str] = []
    for choice in choices:
        expanded.extend(braces(head + choice + tail))
        if len(expanded) > MAX_SHARDS:
            raise DataError(f"{pattern}: names more than {MAX_SHARDS} shards")
    return expanded


def expand(spec: str) -> list[Path]:
    """The shard files ``spec`` names, in order; ``DataError`` when one is missing or none match."""
    if Path(spec).expanduser().is_file():
        return [Path(spec).expanduser()]
    files: list[Path] = []
    for name in braces(spec):
        name = str(Path(name).expanduser())
        if any(ch in name for ch in "*?["):
            matches = sorted(glob.glob(name))
            if not matches:
                raise DataError(f"{spec}: no file matches {name!r}")
            files.extend(Path(m) for m in matches)
        elif Path(name).is_file():
            files.append(Path(name))
        else:
            raise DataError(f"{spec}: shard {name!r} does not exist")
    if not files:
        raise DataError(f"{spec}: names no shard files")
    return files
