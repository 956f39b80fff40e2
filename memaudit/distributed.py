"""Runs across processes and machines: torch.distributed under torchrun (gloo on CPUs, NCCL on GPUs).

memaudit's distributed runs are SPMD: every rank executes the same command on the same inputs, and
only the expensive steps split their work. Sampling and feature extraction split into units that
each rank computes and writes to disk (``memaudit.units``); an audit then shards its samples, each
rank memory-mapping them and extracting, searching and scoring only its row range (``row_range``,
``batch_range``), and gathers the small per-sample results (``memaudit.measure``); ``knn`` alone
splits the training set into one row range per rank and merges the ranks' exact top-k
(``memaudit.search``); EMM runs split their training points. Everything after those steps is
computed identically on every rank, and rank 0 alone writes the run's documents, so a run on N
ranks writes what a single process writes with the same seeds.

``current()`` is the world the running code belongs to: a single process (size 1) unless
``init_from_environment`` found torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).
Inside ``local()`` the code runs as a single process again (an EMM point trained by one rank is
audited by that rank alone).

Messages between ranks are JSON or raw array bytes carried in tensors: nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from memaudit.errors import InputError

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class World:
    """The processes of one run: this one's rank among ``size``, and how they talk."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: a single process, no process group

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def _tensor_device(self) -> str:
        """Where collective tensors live: NCCL moves CUDA tensors only."""
        return f"cuda:{self._cuda_index()}" if self.backend == "nccl" else "cpu"

    def _cuda_index(self) -> int:
        import torch

        return self.local_rank % max(1, torch.cuda.device_count())

    def cuda_device(self) -> str:
        """This process's GPU: ``cuda:LOCAL_RANK`` (wrapped to the visible devices) under torchrun,
        also inside ``local()``; ``cuda`` for a process of its own."""
        return f"cuda:{self._cuda_index()}" if launched_by_torchrun() else "cuda"

    def describe(self) -> dict:
        """For provenance: how many processes ran, over which backend."""
        return {"world_size": self.size, "backend": self.backend}

    # --- collectives (no-ops in a single process) ---------------------------------------------

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self._cuda_index()])
            else:
                dist.barrier()

    def _all_gather_bytes(self, payload: bytes) -> list[bytes]:
        """Every rank's bytes, in rank order (lengths first, then one padded gather)."""
        import torch
        import torch.distributed as dist

        device = self._tensor_device
        length = torch.tensor([len(payload)], dtype=torch.int64, device=device)
        lengths = [torch.zeros_like(length) for _ in range(self.size)]
        dist.all_gather(lengths, length)
        longest = max(int(v.item()) for v in lengths)
        buffer = torch.zeros(max(1, longest), dtype=torch.uint8, device=device)
        if payload:
            buffer[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
        gathered = [torch.zeros_like(buffer) for _ in range(self.size)]
        dist.all_gather(gathered, buffer)
        return [bytes(g[:int(n.item())].cpu().numpy().tobytes()) for g, n in zip(gathered, lengths)]

    def all_gather_json(self, value) -> list:
        """Every rank's JSON-serialisable ``value``, in rank order."""
        if not self.distributed:
            return [value]
        return [json.loads(b.decode()) for b in self._all_gather_bytes(json.dumps(value).encode())]

    def broadcast_json(self, value):
        """Rank 0's ``value`` on every rank."""
        return self.all_gather_json(value if self.is_main else None)[0]

    def all_gather_array(self, array: np.ndarray) -> list[np.ndarray]:
        """Every rank's array (any shape, a plain dtype), in rank order."""
        if not self.distributed:
            return [array]
        array = np.ascontiguousarray(array)
        headers = self.all_gather_json({"dtype": array.dtype.str, "shape": list(array.shape)})
        payloads = self._all_gather_bytes(array.tobytes())
        return [np.frombuffer(p, dtype=np.dtype(h["dtype"])).reshape(h["shape"]).copy()
                for h, p in zip(headers, payloads)]

    def concat_rows(self, part: np.ndarray) -> np.ndarray:
        """Each rank's rows (``part``), concatenated in rank order on every rank."""
        if not self.distributed:
            return part
        parts = self.all_gather_array(part)
        filled = [p for p in parts if len(p)]  # a rank with no rows may send a shapeless empty array
        return np.concatenate(filled) if filled else parts[0]

    def concat_columns(self, part: np.ndarray) -> np.ndarray:
        """Each rank's (n, k_rank) columns, side by side in rank order, on every rank."""
        return part if not self.distributed else np.concatenate(self.all_gather_array(part), axis=1)

    def all_agree(self, ok: bool) -> bool:
        """True on every rank when ``ok`` is true on every rank."""
        return all(self.all_gather_json(bool(ok)))

    # --- splitting work -----------------------------------------------------------------------

    def row_range(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share of ``n`` rows (the first ``n % size`` ranks get one more)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def batch_range(self, n: int, batch_size: int) -> tuple[int, int]:
        """This rank's contiguous share of ``n`` rows in whole batches of ``batch_size``, the batches
        one process would form (a model's output can depend on the batch it is computed in)."""
        first, stop = self.row_range(-(-n // batch_size))
        return min(n, first * batch_size), min(n, stop * batch_size)

    def assign(self, costs: Sequence[float]) -> list[int]:
        """The rank that does each job: the costliest job first, each to the least loaded rank
        (ties to the lower rank), so every rank finishes at about the same time. Deterministic."""
        load = [0.0] * self.size
        owner = [0] * len(costs)
        for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
            rank = min(range(self.size), key=lambda r: (load[r], r))
            owner[job] = rank
            load[rank] += costs[job]
        return owner

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (to fill a cache), then the other ranks (which read it)."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def check_shared_folder(self, folder: Path, option: str) -> None:
        """InputError on every rank unless all ranks see ``folder`` as one folder (its files are how
        ranks hand each other samples, features and trained points)."""
        if not self.distributed:
            return
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        token = self.broadcast_json(secrets.token_hex(8))
        probe = folder / f".memaudit-rank-probe-{token}"
        if self.is_main:
            probe.write_text(token)
        self.barrier()
        seen = probe.is_file() and probe.read_text() == token
        agreed = self.all_agree(seen)
        self.barrier()
        if self.is_main:
            probe.unlink(missing_ok=True)
        if not agreed:
            raise InputError(f"{option} {folder}: not the same folder on every rank; a distributed run needs it on a "
                             "filesystem all ranks share (ranks exchange samples, features and points through it)")


_SINGLE = World()
_current: World = _SINGLE


def current() -> World:
    """The world of the running code (a single process unless torchrun started this one)."""
    return _current


@contextlib.contextmanager
def use(world: World) -> Iterator[World]:
    """Run the block in ``world``."""
    global _current
    previous, _current = _current, world
    try:
        yield world
    finally:
        _current = previous


def local() -> contextlib.AbstractContextManager[World]:
    """Run the block as a single process (on this process's own GPU), whatever the world outside it."""
    return use(World(local_rank=_current.local_rank))


def process_is_main() -> bool:
    """True in a process of its own and in torchrun's rank 0, also inside ``local()`` (progress
    bars and messages come from one process only)."""
    return not launched_by_torchrun() or int(os.environ.get("RANK", "0")) == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_environment() -> World:
    """Join the process group torchrun describes in the environment and make it ``current()``.

    The backend is ``$MEMAUDIT_DIST_BACKEND``, else NCCL when this rank has a GPU, else gloo. A
    single process (no torchrun, or ``WORLD_SIZE=1``) stays a single process.
    """
    global _current
    if not launched_by_torchrun():
        return _current
    if _current.distributed:
        return _current
    import torch
    import torch.distributed as dist

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = os.environ.get("MEMAUDIT_DIST_BACKEND") or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in BACKENDS:
        raise InputError(f"MEMAUDIT_DIST_BACKEND={backend}: expected one of {', '.join(BACKENDS)}")
    if backend == "nccl":
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    _current = World(rank=rank, size=size, local_rank=local_rank, backend=backend)
    return _current


def shutdown() -> None:
    """Leave the process group (at the end of a distributed command)."""
    global _current
    if _current.distributed:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _current = _SINGLE
