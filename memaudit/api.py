"""The Python API: ``memaudit.audit``, ``compare``, ``mia``, ``extract``, ``detect``, ``emm``, ``index``
and ``dedup``, the commands of the CLI as functions.

A façade and nothing else: each function turns Python objects and keyword options into its
command's typed config and calls that command's entry function (``memaudit.auditing.run_audit``,
``memaudit.membership.run_mia``, ...), the same one the CLI calls. The work is in the command
packages; see docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

from memaudit import distributed, progress
from memaudit.auditing import AuditConfig, run_audit
from memaudit.comparison import CompareConfig, run_compare
from memaudit.data import ImageSet
from memaudit.detection import DetectConfig, run_detect
from memaudit.errors import InputError
from memaudit.extraction import ExtractConfig, run_extract
from memaudit.inputs import check_option_types, check_options, config_fields, describe_input
from memaudit.membership import MiaConfig, run_mia
from memaudit.outputs import EMM_HTML, EMM_JSON
from memaudit.result import AuditResult, RunResult, read_run
from memaudit.retraining import EMMConfig, run_emm
from memaudit.trainset import DedupConfig, IndexConfig, run_dedup, run_index

# Each entry point takes paths or Python objects, keyword options named as the config's fields
# (checked: an unknown one is an error listing the valid ones), ``out=None`` to keep the run in
# memory (it runs in a temporary folder that is removed afterwards; nothing is left behind but
# the content-keyed feature caches of $MEMAUDIT_CACHE) and ``progress`` (None: as set for the
# process, True/False: bars on/off for this call).

_AUDIT_TAKEN = ("train", "out", "model", "samples", "command")


def audit(model=None, *, train, samples=None, out=None, progress: bool | None = None, **options) -> AuditResult:
    """Audit ``model`` (or given ``samples``) against ``train``: ``memaudit audit`` from Python.

    ``model``: a MODEL spec or path as the CLI takes it, a diffusers pipeline object, an object
    with ``sample(seeds, batch_size, conditioning=None)``, or a callable ``sample(seeds) -> uint8
    (N, H, W, C)`` (sample i a function of ``seeds[i]`` alone). Objects without ``fingerprint()``
    are sampled afresh on every call. ``train``, ``samples`` (and the ``holdout``,
    ``mia_members``, ``mia_nonmembers`` options): a spec or path, an ``ImageSet``, or a uint8 NHWC
    numpy array. ``out``: the run folder (as ``--out``), or None to keep the run in memory
    (``AuditResult.save(folder)`` writes it later). ``options``: the fields of ``AuditConfig``
    (``n``, ``seed``, ``batch_size``, ``steps``, ``spaces``, ``threshold``, ...). A fine-tune:
    ``loras=["lora.safetensors:0.8"]``, ``embeddings=[...]``, and ``base="path/to/base"`` to sample
    and audit the base alike (``AuditResult.audit["base_comparison"]``, as ``--base``)."""
    check_options(options, config_fields(AuditConfig, _AUDIT_TAKEN), "memaudit.audit")
    check_option_types(AuditConfig, options, "memaudit.audit")

    call = ", ".join([*([] if model is None else [describe_input(model)]), f"train={describe_input(train)}",
                      *([] if samples is None else [f"samples={describe_input(samples)}"]),
                      *(f"{key}={describe_input(value) if isinstance(value, (np.ndarray, ImageSet)) else repr(value)}"
                        for key, value in options.items())])

    def config(folder: Path) -> AuditConfig:
        return AuditConfig(train=train, out=folder, model=model, samples=samples, **options,
                           command=f"memaudit.audit({call})")  # provenance: how the run was asked for

    with _progress_as(progress):
        if out is not None:
            return run_audit(config(Path(out).expanduser()))
        with _scratch_folder() as folder:
            result = run_audit(config(folder / "run"))
            files, manifest = read_run(result.out)
        return AuditResult(None, result.audit, files=files, manifest=manifest)


def compare(runs, *, out=None, allow_mismatch: bool = False) -> RunResult:
    """Compare finished audits (``memaudit compare``): ``runs`` are run folders or ``AuditResult``s
    (those kept in memory included), two or more, in the order to plot. ``out``: the folder for
    compare.json and compare.html, or None to keep them in memory."""
    runs = list(runs)
    if len(runs) < 2:
        raise InputError(f"runs: compare needs at least two audits, got {len(runs)}")
    in_memory = out is None or any(isinstance(run, AuditResult) and run.out is None for run in runs)
    with (_scratch_folder() if in_memory else contextlib.nullcontext(None)) as scratch:
        folders = []
        for number, run in enumerate(runs, 1):
            if isinstance(run, AuditResult):
                folders.append(Path(run.out) if run.out is not None else run.save(scratch / f"run-{number}"))
            elif isinstance(run, (str, Path)):
                folders.append(Path(run).expanduser())
            else:
                raise InputError(f"runs[{number - 1}]: expected a run folder or an AuditResult, got {type(run).__name__}")
        target = Path(out).expanduser() if out is not None else scratch / "compare"
        run_compare(CompareConfig(folders, target, allow_mismatch=allow_mismatch))
        return _run_result("compare", target, keep=out is not None)


def mia(model, *, members=None, nonmembers=None, query=None, out=None, progress: bool | None = None,
        **options) -> RunResult:
    """Membership inference (``memaudit mia``) on ``model``: a MODEL spec or path, or a diffusers
    pipeline object. ``members``, ``nonmembers``, ``query``: specs or paths, ``ImageSet``s (with
    ``labels`` for class-conditional models) or uint8 NHWC arrays. ``options``: the fields of
    ``memaudit.membership.MiaConfig`` (``attacks``, ``settings``, ``batch_size``, ``limit``, ``device``, ...)."""
    taken = ("model", "out", "members", "nonmembers", "query", "command")
    check_options(options, config_fields(MiaConfig, taken), "memaudit.mia")
    check_option_types(MiaConfig, options, "memaudit.mia")
    with _progress_as(progress), _run_folder(out, "mia") as target:
        run_mia(MiaConfig(model=model, out=target, members=members, nonmembers=nonmembers, query=query, **options))
        return _run_result("mia", target, keep=out is not None, skip=("scores",))


def extract(model, *, n: int, train=None, out=None, progress: bool | None = None, **options) -> RunResult:
    """Generate-and-filter extraction (``memaudit extract``; Carlini et al. 2023 section 4) from
    ``model`` (a MODEL spec or path, a diffusers pipeline object or a callable, as for ``audit``),
    verified against ``train`` (a spec, path, ``ImageSet`` or array) when given. ``options``:
    the fields of ``memaudit.extraction.ExtractConfig`` (threshold, min_clique, seed, batch_size, steps,
    device, labels, prompts, trust_checkpoint)."""
    check_options(options, config_fields(ExtractConfig, ("model", "out", "n", "train", "command")), "memaudit.extract")
    check_option_types(ExtractConfig, options, "memaudit.extract")
    with _progress_as(progress), _run_folder(out, "extract") as target:
        run_extract(ExtractConfig(model=model, out=target, n=n, train=train, **options))
        return _run_result("extract", target, keep=out is not None)


def detect(pipeline, *, prompts, out=None, progress: bool | None = None, **options) -> RunResult:
    """Detection of memorized prompts without training data (``memaudit detect``): each prompt of
    the file ``prompts`` scored on ``pipeline`` (a text-to-image pipeline folder or hf:ORG/NAME).
    ``out``: the folder for detect.json and detect.html, or None to keep them in memory.
    ``options``: the fields of ``memaudit.detection.DetectConfig`` (``detector``, ``steps``,
    ``generations``, ``seed``, ``batch_size``, ``device``, ...)."""
    check_options(options, config_fields(DetectConfig, ("pipeline", "prompts", "out", "command")), "memaudit.detect")
    check_option_types(DetectConfig, options, "memaudit.detect")
    with _progress_as(progress), _run_folder(out, "detect") as target:
        run_detect(DetectConfig(pipeline=str(pipeline), prompts=str(prompts), out=target, **options))
        return _run_result("detect", target, keep=out is not None)


def index(train, *, spaces=("pixel",), progress: bool | None = None, **options) -> list[dict]:
    """Precompute the features of ``train`` (a spec or path) in ``spaces`` for later audits, and
    with ``index=`` (ivf-pq, ivf, hnsw) its approximate index (``memaudit index``): one row per space.
    ``options``: the fields of ``memaudit.trainset.IndexConfig`` (``index``, ``nlist``, ``m``, ``nbits``,
    ``device``)."""
    check_options(options, config_fields(IndexConfig, ("data", "spaces")), "memaudit.index")
    check_option_types(IndexConfig, options, "memaudit.index")
    with _progress_as(progress):
        return run_index(IndexConfig(data=_spec(train, "train"), spaces=list(spaces), **options))


def dedup(train, *, out=None, progress: bool | None = None, **options) -> dict:
    """Exact and near-duplicate clusters of ``train`` (a spec or path; ``memaudit dedup``), written
    to ``out/dedup.json`` when ``out`` is given; returns dedup.json's content. ``options``: the
    fields of ``memaudit.trainset.DedupConfig`` (``space``, ``threshold``, ``device``)."""
    check_options(options, config_fields(DedupConfig, ("data", "out")), "memaudit.dedup")
    check_option_types(DedupConfig, options, "memaudit.dedup")
    with _progress_as(progress):
        return run_dedup(DedupConfig(data=_spec(train, "train"), out=None if out is None else Path(out).expanduser(),
                                     **options))


def _spec(value, name: str) -> str:
    """A training set named by a spec or path (index and dedup fill caches keyed by it)."""
    if not isinstance(value, (str, Path)):
        raise InputError(f"{name}: expected a training-set spec or path (digits, a folder, an .npz), "
                         f"got {type(value).__name__}")
    return str(value)


def emm(train, *, out=None, progress: bool | None = None, **options) -> RunResult:
    """Effective Model Memorization (``memaudit emm``; Gu et al. 2023): retrain on nested subsets
    of ``train`` (a spec or path) and search the largest size that memorizes. ``out``: the run
    folder (resumable), or None to keep emm.json and emm.html in memory (the trained points are
    removed). ``options``: the fields of ``memaudit.retraining.EMMConfig`` (``budget``: quick, default
    or paper, the training budget T the answer is stated under; ``precond``, ``arch``, ``epochs``,
    ``grid``, ``n``, ...: those of T left out take the budget's values)."""
    check_options(options, config_fields(EMMConfig, ("train", "out", "command")), "memaudit.emm")
    check_option_types(EMMConfig, options, "memaudit.emm")
    if not isinstance(train, (str, Path)):
        raise InputError(f"train: emm retrains on subsets of a training set named by a spec or path (digits, a folder, "
                         f"an .npz with labels), got {type(train).__name__}; save an array with np.savez(path, images=..., labels=...)")
    if "grid" in options:
        options["grid"] = tuple(options["grid"])
    with _progress_as(progress), _run_folder(out, "emm") as target:
        run_emm(EMMConfig(train=str(train), out=target, **options))
        if out is not None:
            return _run_result("emm", target, keep=True)
        files = {name: (target / name).read_bytes() for name in (EMM_JSON, EMM_HTML)}  # not the trained points
        return RunResult("emm", json.loads(files[EMM_JSON]), files=files)


@contextlib.contextmanager
def _progress_as(enabled: bool | None):
    """Progress bars on or off for one call (None: as they are), restored afterwards."""
    if enabled is None:
        yield
        return
    before = getattr(progress, "_enabled", True)
    progress.set_enabled(bool(enabled))
    try:
        yield
    finally:
        progress.set_enabled(before)


@contextlib.contextmanager
def _scratch_folder():
    """A temporary folder for runs kept in memory, removed afterwards whatever happens. Under
    torchrun the ranks share a run folder, which a private temporary folder is not."""
    if distributed.current().distributed:
        raise InputError("out=None: under torchrun the ranks share the run folder; give out=FOLDER on a shared filesystem")
    folder = Path(tempfile.mkdtemp(prefix="memaudit-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _run_folder(out, kind: str):
    """The folder a run writes: ``out``, or for a run kept in memory one in a temporary folder."""
    if out is not None:
        yield Path(out).expanduser()
        return
    with _scratch_folder() as scratch:
        yield scratch / kind


def _run_result(kind: str, folder: Path, keep: bool, skip: tuple[str, ...] = ()) -> RunResult:
    document = json.loads((folder / f"{kind}.json").read_text(encoding="utf-8"))
    if keep:
        return RunResult(kind, document, out=folder)
    files, _ = read_run(folder)
    files = {name: data for name, data in files.items() if name.split("/")[0] not in skip}
    return RunResult(kind, document, files=files)
