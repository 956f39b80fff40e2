"""Long work split into units that live on disk: computed once, by one rank, resumed after a crash.

A unit is a piece of a long job (a shard of samples, a chunk of training-set features, an EMM
point) whose result is a file written atomically when the unit is done. ``plan`` decides which
unfinished units this rank computes: rank 0 looks at the disk once and tells every rank (so all
ranks agree even while files appear), and the units go to ranks costliest first, each to the
least loaded rank. A rank that dies loses only the unit it was computing; the same command run
again finds every other unit finished and computes that one alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from memaudit import distributed


@dataclass(frozen=True)
class Plan:
    """Which units are unfinished (all ranks together) and which of them this rank computes."""

    pending: tuple[int, ...]
    mine: tuple[int, ...]


def plan(count: int, is_done: Callable[[int], bool], costs: Sequence[float] | None = None) -> Plan:
    """Split the unfinished units among ``count`` over the ranks of the current world (a collective:
    every rank calls it). ``is_done(i)`` is asked on rank 0 only; ``costs`` default to equal."""
    world = distributed.current()
    pending = [i for i in range(count) if not is_done(i)] if world.is_main else None
    pending = world.broadcast_json(pending)
    weights = [1.0 if costs is None else float(costs[i]) for i in pending]
    owners = world.assign(weights)
    mine = tuple(unit for unit, owner in zip(pending, owners) if owner == world.rank)
    return Plan(tuple(pending), mine)


def finish() -> None:
    """Wait until every rank has written its units (a collective)."""
    distributed.current().barrier()
