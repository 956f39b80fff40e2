"""The ``memaudit`` command line: a thin layer over ``memaudit.api``."""

from __future__ import annotations

import contextlib
import json
import shlex
import sys
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from typer.core import TyperGroup

from memaudit import __version__, distributed, hub, progress
from memaudit.errors import MemauditError, storage_error
from memaudit.storage import displayable

EXIT_BAD_INPUT = 2
EXIT_OVER_LIMIT = 3
COPIES_LISTED = 10  # exact copies named one per line in the terminal summary
EXIT_INTERRUPTED = 130

out_console = Console(emoji=False)  # user text such as "random:x" must not become an emoji
err_console = Console(stderr=True, emoji=False)


# click's exceptions, from wherever this typer takes click (recent typers carry their own copy)
_click_errors = sys.modules[typer.BadParameter.__module__]
_NoArgsIsHelp = getattr(_click_errors, "NoArgsIsHelpError", ())


class _OneLineErrors(TyperGroup):
    """Usage mistakes (an unknown option, a missing one, a value of the wrong type) print one line
    and exit 2, as every other bad input does, instead of click's usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NoArgsIsHelp as error:  # the help is already printed
            sys.exit(error.exit_code)
        except _click_errors.ClickException as error:
            context = getattr(error, "ctx", None)
            hint = f" (see {context.command_path} --help)" if context is not None else ""
            err_console.print(f"memaudit: error: {error.format_message()}{hint}", markup=False, highlight=False,
                              soft_wrap=True)
            sys.exit(error.exit_code)
        except typer.Abort:
            err_console.print("memaudit: aborted", markup=False, highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, cls=_OneLineErrors,
                  help="Audit diffusion models for memorized training images.")


def _print_version(value: bool) -> None:
    if value:
        out_console.print(f"memaudit {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print memaudit's version and exit.")) -> None:
    """Audit diffusion models for memorized training images."""


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
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


def _cache_dir_option():
    return typer.Option(None, "--cache-dir", help="Folder of the shared caches (training-set features, decoded sets, "
                        "quality radii) for this command; default $MEMAUDIT_CACHE, else ~/.cache/memaudit.",
                        rich_help_panel="Output", show_default=False)


def _no_cache_option():
    return typer.Option(False, "--no-cache", help="Use no shared cache: nothing is read from earlier runs or left "
                        "behind (a private cache for this command, removed at its end). Same results, more work.",
                        rich_help_panel="Output")


@contextlib.contextmanager
def _cache(cache_dir: Optional[Path], no_cache: bool = False) -> Iterator[None]:
    """The cache this command uses: ``--cache-dir``, a private one for ``--no-cache``, else
    ``$MEMAUDIT_CACHE`` as set (memaudit.features.cache.cache_root reads the variable)."""
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


def _command_line() -> str:
    return shlex.join(["memaudit", *sys.argv[1:]])


def _print_result(result, as_json: bool) -> None:
    audit = result.audit
    if as_json:
        summary = {key: audit[key] for key in ("schema_version", "memorization_ratio", "n_samples", "train", "model",
                                               "headline", "gate", "warnings")}
        summary["spaces"] = {name: {"criteria": {c: {k: v for k, v in value.items() if k != "histogram"}
                                                 for c, value in space["criteria"].items()}}
                             for name, space in audit["spaces"].items()}
        summary["run_dir"] = str(result.out)
        out_console.print_json(json.dumps(summary))
        return
    criterion = audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
    headline = audit["headline"]
    low, high = criterion["ci95"]
    out_console.print(f"verdict: {headline['verdict']}: {headline['reason']}", highlight=False, soft_wrap=True,
                      markup=False)
    for copy in headline["exact_copies"][:COPIES_LISTED]:
        seed = "" if copy["seed"] is None else f" (seed {copy['seed']})"
        out_console.print(f"  {'exact' if copy['exact'] else 'near-exact'} copy: sample {copy['sample']}{seed} = "
                          f"training {displayable(', '.join(copy['train_ids']))}", highlight=False, soft_wrap=True,
                          markup=False)
    if len(headline["exact_copies"]) > COPIES_LISTED:
        out_console.print(f"  ... and {len(headline['exact_copies']) - COPIES_LISTED} more (audit.json headline.exact_copies)",
                          highlight=False, soft_wrap=True)
    out_console.print(
        f"memorized: {criterion['memorized']} of {criterion['n']} samples, memorization ratio "
        f"{criterion['fraction']:.1%} (95% CI {low:.1%}-{high:.1%}; the paper's criterion: pixel nn-ratio d1/d2 < "
        f"{criterion['threshold']:.3g})", highlight=False, soft_wrap=True,
    )
    if headline.get("duplicate_aware") and headline.get("training_duplicate_groups"):
        aware = headline["duplicate_aware"]
        out_console.print(f"duplicate-aware ratio (nn-ratio-dedup): {aware['memorized']} of {aware['n']} "
                          f"({aware['fraction']:.1%})", highlight=False, soft_wrap=True)
    seeding = (audit.get("model") or {}).get("seeding")
    if seeding:
        out_console.print(f"seeding: {seeding['name']} ({seeding['description']})", highlight=False, soft_wrap=True,
                          markup=False)
    sweep = audit.get("snapshots")
    if sweep:
        tied = [name for name in sweep.get("tied_at", []) if name != sweep["max_at"]]
        out_console.print(f"highest at {sweep['max_at']}" + (f" (tied with {', '.join(tied)})" if tied else "")
                          + (f"; skipped {', '.join(sweep['skipped'])}" if sweep.get("skipped") else ""),
                          highlight=False, soft_wrap=True, markup=False)
    for warning in audit.get("warnings") or []:
        err_console.print(f"memaudit: warning: {displayable(warning)}", highlight=False, soft_wrap=True, markup=False)
    for other in headline.get("others_flagging", []):
        out_console.print(f"  also flagged: {other['memorized']} of {other['n']} samples by {other['criterion']} "
                          f"({other['space']}, {'above' if other['memorized_when'] == 'above' else 'below'} "
                          f"{other['threshold']:.3g})" + ("" if other.get("evidence", True) else
                                                          ", within its false-positive rate: for review"),
                          highlight=False, soft_wrap=True)
    for other in headline.get("informational", []):
        out_console.print(f"  informational{'' if other.get('calibrated') else ', uncalibrated'}: {other['criterion']} ({other['space']}) flags {other['memorized']} "
                          f"of {other['n']}; not part of the verdict: {other['why']}", highlight=False, soft_wrap=True,
                          markup=False)
    out_console.print(f"report: {result.report}", highlight=False, soft_wrap=True)


MODEL_HELP = (
    "What to sample: optimal (the optimal denoiser of --train, the positive control); a diffusers pipeline folder, "
    "or hf:ORG/NAME from the local Hugging Face cache (never downloaded); a checkpoint-N folder of the diffusers "
    "training scripts; an EDM network-snapshot-*.pkl (with --trust-checkpoint); a TorchScript denoiser file; a folder "
    "written by memaudit emm; weights.safetensors with --factory file.py:build; your own code as file.py:factory or "
    "package.module:factory; a folder of snapshots (EDM .pkl files or checkpoint-N folders: every snapshot audited). "
    "Leave out with --samples.")


@app.command()
def audit(
    model: Optional[str] = typer.Argument(None, metavar="MODEL", show_default=False, help=MODEL_HELP),
    train: str = typer.Option(..., "--train", help="Training set: digits[:N], or a path: a folder of images, .npz/.npy, an EDM dataset zip, a CIFAR batch folder, webdataset .tar shards (globs, {000..009}), parquet, a save_to_disk folder; FORMAT:PATH names the format.", rich_help_panel="Data"),
    samples: Optional[str] = typer.Option(None, "--samples", help="Audit these generated images (folder or .npz) instead of sampling MODEL.", rich_help_panel="Data"),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="Unseen images from the training distribution (same forms as --train): estimates each threshold's false-positive rate.", rich_help_panel="Data"),
    on_error: str = typer.Option("fail", "--on-error", help="Unreadable images: fail (name the file) or skip (list them in audit.json).", rich_help_panel="Data"),
    resize: str = typer.Option("none", "--resize", help="none (one size required), center-crop or resize every image to --image-size.", rich_help_panel="Data"),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="N or HxW: the model's resolution, for --resize.", rich_help_panel="Data"),
    members: Optional[str] = typer.Option(None, "--members", help="With --nonmembers: add a membership-inference section (every memaudit mia attack; run in OUT/mia).", rich_help_panel="Data"),
    nonmembers: Optional[str] = typer.Option(None, "--nonmembers", help="Images known to be outside the training set, for the MIA section.", rich_help_panel="Data"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.", rich_help_panel="Model"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp16 or bf16 (half precision on CUDA only).", rich_help_panel="Model"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow pickled checkpoints and checkpoint code to run. Only for files you trust.", rich_help_panel="Model"),
    code_path: Optional[str] = typer.Option(None, "--code-path", help="Folder put on the import path for a trusted pickle's classes (EDM's code).", rich_help_panel="Model"),
    factory: Optional[str] = typer.Option(None, "--factory", help="file.py:build constructing the network of a .safetensors MODEL.", rich_help_panel="Model"),
    include_initial_snapshot: bool = typer.Option(False, "--include-initial-snapshot", help="Snapshot folders: also audit the untrained step-0 snapshot (skipped by default, as DiffMemorize's mem_ratio.py does).", rich_help_panel="Model"),
    variant: Optional[str] = typer.Option(None, "--variant", help="diffusers weight variant to load, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).", rich_help_panel="Model"),
    safety_checker: str = typer.Option("off", "--safety-checker", help="A pipeline's safety checker: off (the audit sees what the model draws) or flag (mark flagged samples; never blacked out).", rich_help_panel="Model"),
    n: int = typer.Option(1000, "--n", help="Number of samples to generate.", rich_help_panel="Sampling"),
    seed: int = typer.Option(0, "--seed", help="Seed of the first sample; sample i uses seed + i.", rich_help_panel="Sampling"),
    batch_size: int = typer.Option(64, "--batch-size", help="Samples per model call (does not change the results).", rich_help_panel="Sampling"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model's own).", rich_help_panel="Sampling"),
    labels: Optional[str] = typer.Option(None, "--labels", help="Class-conditional models: train (a training image's label per seed), uniform, or a class index.", rich_help_panel="Sampling"),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Text-to-image models: train (training captions) or a file with one prompt per line.", rich_help_panel="Sampling"),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale (default: the pipeline's).", rich_help_panel="Sampling"),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Swap the diffusers sampler: ddim, ddpm, dpm-solver++, dpm-solver++-sde, euler, euler-ancestral, heun.", rich_help_panel="Sampling"),
    seeding: Optional[str] = typer.Option(None, "--seeding", help="EDM snapshots, EDM-style denoisers and optimal: edm (default; EDM generate.py's per-seed noise and labels, the paper's samples) or legacy (memaudit's earlier noise, to compare with older audits).", rich_help_panel="Sampling"),
    sampler_option: list[str] = typer.Option([], "--sampler-option", help="KEY=VALUE (repeatable) for EDM's sampler, named as in EDM's generate.py: sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise.", rich_help_panel="Sampling"),
    resume: bool = typer.Option(False, "--resume", help="Reuse the finished sample shards in --out even of user code without fingerprint() (after an interrupted run).", rich_help_panel="Sampling"),
    space: list[str] = typer.Option([], "--space", help="Also search this feature space (repeatable): pixel-N, clip:MODEL@WEIGHTS, clip:MODEL:TAG, dinov2:MODEL@WEIGHTS, sscd:FILE.", rich_help_panel="Search"),
    index: str = typer.Option("auto", "--index", help="Search index: auto (exact up to --exact-limit training images, then ivf-pq), flat (exact), ivf-pq, ivf or hnsw; approximate indexes are kept in the cache and reused (memaudit index builds them ahead).", rich_help_panel="Search"),
    exact_limit: int = typer.Option(2_000_000, "--exact-limit", help="Training-set size up to which --index auto searches exactly.", rich_help_panel="Search"),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="ivf, ivf-pq: inverted lists (default: the largest power of two at most sqrt(n)).", rich_help_panel="Search"),
    pq_m: Optional[int] = typer.Option(None, "--m", help="ivf-pq: PQ sub-quantizers (default: the largest divisor of the dimension up to dim/2 and 128 at 4 bits, dim/4 and 64 at 8); hnsw: graph degree (32).", rich_help_panel="Search"),
    nbits: Optional[int] = typer.Option(None, "--nbits", help="ivf-pq: bits per PQ code (default 4: faiss's fast-scan codes).", rich_help_panel="Search"),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", help="ivf, ivf-pq: lists visited per query (default: tuned to --target-recall).", rich_help_panel="Search"),
    ef: Optional[int] = typer.Option(None, "--ef", help="hnsw: search beam width (default: tuned to --target-recall).", rich_help_panel="Search"),
    target_recall: float = typer.Option(0.99, "--target-recall", help="Approximate indexes: recall@2 the search setting is tuned to (95% confidence), on a sample of the samples searched exactly.", rich_help_panel="Search"),
    threshold: str = typer.Option("1/3", "--threshold", help="nn-ratio threshold: memorized when d1/d2 is below it; a number or a fraction such as 1/3.", rich_help_panel="Criteria"),
    criterion_threshold: list[str] = typer.Option([], "--criterion-threshold", help="NAME=VALUE (every space) or SPACE/NAME=VALUE (one space, as --space names it), repeatable; e.g. cosine=0.5, pixel/tiled-l2=0.1.", rich_help_panel="Criteria"),
    relative_alpha: float = typer.Option(0.5, "--relative-alpha", help="carlini-relative's alpha (Carlini et al. 2023 §5.1: 0.5).", rich_help_panel="Criteria"),
    relative_n: int = typer.Option(50, "--relative-n", help="carlini-relative's n nearest training images (Carlini et al. 2023 §5.1: 50).", rich_help_panel="Criteria"),
    fail_above: Optional[float] = typer.Option(None, "--fail-above", help="Exit with code 3 when the audit finds an exact copy of a training image, or its memorized share (the paper's ratio, or what copies and the criteria with evidence flag together) exceeds this fraction.", rich_help_panel="Criteria"),
    target_fpr: float = typer.Option(0.01, "--target-fpr", help="With --holdout: a criterion enters the verdict only when its false-positive rate on the held-out images is at most this fraction.", rich_help_panel="Criteria"),
    out: Path = typer.Option(..., "--out", help="Run directory for audit.json, neighbors.csv, samples.npz, report.html.", rich_help_panel="Output"),
    redact: str = typer.Option("none", "--redact", help="Images in report.html: none, blur or omit (samples and training images).", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print the audit summary as JSON on stdout.", rich_help_panel="Output"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output (bars, the sampling plan, plain progress lines).", rich_help_panel="Output"),
    cache_dir: Optional[Path] = _cache_dir_option(),
    no_cache: bool = _no_cache_option(),
) -> None:
    """Audit MODEL (or --samples) against its training set."""
    from memaudit.api import run_audit
    from memaudit.config import AuditConfig
    from memaudit.adapters.edm import parse_sampler_options
    from memaudit.criteria import parse_thresholds

    progress.set_enabled(not quiet)
    with _user_errors(), _cache(cache_dir, no_cache):
        result = run_audit(AuditConfig(
            train=train, out=out, model=model, samples=samples, n=n, seed=seed, batch_size=batch_size,
            steps=steps, device=device, threshold=_fraction(threshold, "--threshold"), spaces=space, holdout=holdout,
            criterion_thresholds=parse_thresholds(criterion_threshold), relative_alpha=relative_alpha,
            relative_n=relative_n, index=index, exact_limit=exact_limit, nlist=nlist, m=pq_m, nbits=nbits,
            nprobe=nprobe, ef=ef, target_recall=target_recall,
            on_error=on_error, resize=resize, image_size=image_size,
            fail_above=fail_above, target_fpr=target_fpr, redact=redact, labels=labels,
            prompts=prompts, guidance=guidance, scheduler=scheduler, dtype=dtype, trust_checkpoint=trust_checkpoint,
            code_path=code_path, factory=factory, seeding=seeding,
            sampler_options=parse_sampler_options(sampler_option), include_initial_snapshot=include_initial_snapshot,
            variant=variant, safety_checker=safety_checker, resume=resume,
            mia_members=members, mia_nonmembers=nonmembers,
            command=_command_line(),
        ))
    _print_result(result, as_json)
    if result.exceeds(fail_above):
        copies = len(result.exact_copies)
        why = (f"{copies} exact cop{'ies' if copies != 1 else 'y'} of training images" if copies else
               f"memorized share {result.gate['fraction']:.1%} is above --fail-above {fail_above:.1%}")
        err_console.print(f"memaudit: release gate failed: {why}", highlight=False)
        raise typer.Exit(EXIT_OVER_LIMIT)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the three demo runs (two DDIM checkpoints and the optimal denoiser)."),
    n: int = typer.Option(1000, "--n", help="Samples per model."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output (bars, the sampling plan, plain progress lines)."),
) -> None:
    """Audit the built-in DDIM checkpoints trained on the digits, and the optimal denoiser."""
    from memaudit.demo import run_demo

    progress.set_enabled(not quiet)
    with _user_errors():
        results = run_demo(out, n=n, device=device, command=_command_line())
    for name, result in results.items():
        out_console.print(f"[bold]{name}[/bold]")
        _print_result(result, as_json=False)


@app.command()
def mia(
    model: str = typer.Argument(..., help="A diffusers pipeline directory (UNet: unconditional, class- or text-conditional), an EDM snapshot, TorchScript or state-dict denoiser."),
    members: Optional[str] = typer.Option(None, "--members", help="Images known to be in the training set (same forms as audit --train), e.g. digits:100.", rich_help_panel="Data"),
    nonmembers: Optional[str] = typer.Option(None, "--nonmembers", help="Images known to be outside it, from the same distribution, e.g. digits:N:rest beside --members digits:N (the digits a model trained on digits:N never saw).", rich_help_panel="Data"),
    query: Optional[str] = typer.Option(None, "--query", help="Images of unknown status: each gets a p-value against the --nonmembers scores.", rich_help_panel="Data"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N images of each set (a quick look).", rich_help_panel="Data"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.", rich_help_panel="Model"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow pickled checkpoints and checkpoint code to run. Only for files you trust.", rich_help_panel="Model"),
    code_path: Optional[str] = typer.Option(None, "--code-path", help="Folder put on the import path for a trusted pickle's classes (EDM's code).", rich_help_panel="Model"),
    factory: Optional[str] = typer.Option(None, "--factory", help="file.py:build constructing the network of a .safetensors MODEL.", rich_help_panel="Model"),
    attack: list[str] = typer.Option([], "--attack", help="Attack to run (repeatable): loss, pia, secmi, score-norm (default: all).", rich_help_panel="Attacks"),
    setting: list[str] = typer.Option([], "--setting", help="ATTACK.KEY=VALUE (repeatable) overriding an attack's paper default, e.g. pia.timestep=100.", rich_help_panel="Attacks"),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per model call.", rich_help_panel="Attacks"),
    out: Path = typer.Option(..., "--out", help="Run directory for mia.json, scores.csv, mia.html.", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print each attack's AUC and TPR at low FPR as JSON on stdout.", rich_help_panel="Output"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output (bars, the sampling plan, plain progress lines).", rich_help_panel="Output"),
) -> None:
    """Membership inference: was an image in MODEL's training set? (loss, PIA, SecMI, score norm)"""
    from memaudit.api import run_mia
    from memaudit.mia import ATTACKS, parse_settings
    from memaudit.mia.audit import MiaConfig, unsupported_tpr

    progress.set_enabled(not quiet)
    with _user_errors():
        document = run_mia(MiaConfig(
            model=model, out=out, members=members, nonmembers=nonmembers, query=query,
            attacks=list(dict.fromkeys(attack)) or list(ATTACKS), settings=parse_settings(setting),
            batch_size=batch_size, device=device, limit=limit, trust_checkpoint=trust_checkpoint,
            code_path=code_path, factory=factory, command=_command_line()))
    # a TPR at an FPR the non-members cannot measure is null here, as unsupported in mia.json
    summary = {name: {key: a.get(key) for key in ("auc", "auc_ci95", "tpr_at_fpr")} | {
        f"tpr_at_fpr_{t['fpr']:g}": t["tpr"] if t["supported"] else None for t in a.get("tpr_at_fpr", [])}
        for name, a in document["attacks"].items()}
    if as_json:
        out_console.print_json(json.dumps({"attacks": summary, "best_attack": document["best_attack"],
                                           "verdict": document["verdict"], "run_dir": str(out)}))
        return
    out_console.print(document["verdict"]["sentence"] + ".", highlight=False, soft_wrap=True, markup=False)
    for name, a in document["attacks"].items():
        if "auc" in a:
            low, high = a["auc_ci95"]
            tprs = ", ".join(f"TPR@{t['fpr']:.1%} FPR " + (f"{t['tpr']:.1%}" if t["supported"] else unsupported_tpr(t))
                             for t in a["tpr_at_fpr"])
            out_console.print(f"{name}: AUC {a['auc']:.4f} (95% CI {low:.3f}-{high:.3f}), {tprs}", highlight=False, soft_wrap=True)
        else:
            out_console.print(f"{name}: scored {len(a.get('query', []))} query images", highlight=False)
    out_console.print(f"report: {Path(out) / 'mia.html'}", highlight=False, soft_wrap=True)


@app.command()
def extract(
    model: str = typer.Argument(..., help="The model to extract from: a diffusers pipeline directory or any MODEL audit takes."),
    train: Optional[str] = typer.Option(None, "--train", help="Verify each candidate against this training set (optional).", rich_help_panel="Data"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.", rich_help_panel="Model"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow pickled checkpoints and checkpoint code to run.", rich_help_panel="Model"),
    n: int = typer.Option(1000, "--n", help="Generations to sample (conditional models: grouped by class or prompt).", rich_help_panel="Sampling"),
    seed: int = typer.Option(0, "--seed", help="Seed of the first generation; generation i uses seed + i.", rich_help_panel="Sampling"),
    batch_size: int = typer.Option(256, "--batch-size", help="Samples per model call (does not change the results).", rich_help_panel="Sampling"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model's own).", rich_help_panel="Sampling"),
    labels: Optional[str] = typer.Option(None, "--labels", help="Class-conditional models: uniform, train or a class index.", rich_help_panel="Sampling"),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="Text-to-image models: a file with one prompt per line.", rich_help_panel="Sampling"),
    threshold: float = typer.Option(0.15, "--threshold", help="Tiled L2 distance ([0, 1] pixels) at or below which two generations are near-identical.", rich_help_panel="Criteria"),
    min_clique: int = typer.Option(10, "--min-clique", help="Generations a clique needs to count as an extracted image (paper: 10).", rich_help_panel="Criteria"),
    out: Path = typer.Option(..., "--out", help="Run directory for extract.json, extract.html, samples.npz.", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON on stdout.", rich_help_panel="Output"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output (bars, the sampling plan, plain progress lines).", rich_help_panel="Output"),
) -> None:
    """Extract training images without the training set: cliques of near-identical generations (Carlini et al. 2023)."""
    from memaudit.api import run_extract

    progress.set_enabled(not quiet)
    with _user_errors():
        document = run_extract(model, out, n, train=train, threshold=threshold, min_clique=min_clique, seed=seed,
                               batch_size=batch_size, steps=steps, device=device, labels=labels, prompts=prompts,
                               trust_checkpoint=trust_checkpoint, command=_command_line())
    counts = {key: document[key] for key in ("n_samples", "n_cliques", "samples_in_cliques", "n_verified",
                                             "distinct_training_images", "false_clique_rate")}
    if as_json:
        out_console.print_json(json.dumps({**counts, "run_dir": str(out)}))
        return
    verified = "" if document["n_verified"] is None else f", {document['n_verified']} verified as training images"
    out_console.print(f"{document['n_cliques']} cliques of >= {min_clique} near-identical generations among "
                      f"{document['n_samples']}{verified}", highlight=False, soft_wrap=True)
    out_console.print(f"report: {Path(out) / 'extract.html'}", highlight=False, soft_wrap=True)


@app.command()
def detect(
    pipeline: str = typer.Argument(..., help="A text-to-image diffusers pipeline directory (or hf:ORG/NAME in the local cache)."),
    prompts: str = typer.Option(..., "--prompts", help="Prompts, one per line; PROMPT<TAB>memorized|novel labels them for an AUC.", rich_help_panel="Data"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.", rich_help_panel="Model"),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Allow pickled checkpoints and checkpoint code to run.", rich_help_panel="Model"),
    detector: str = typer.Option("text-noise-norm", "--detector",
                                 help="text-noise-norm (Wen et al. 2024), hessian-score-difference-norm (Jeon et al. "
                                      "2025) or norm-plus-alignment (Asthana & Belagiannis 2026).", rich_help_panel="Detector"),
    gamma_norm: Optional[float] = typer.Option(None, "--gamma-norm", help="norm-plus-alignment: weight of the norm (1).", rich_help_panel="Detector"),
    gamma_alignment: Optional[float] = typer.Option(None, "--gamma-alignment", help="norm-plus-alignment: weight of the alignment (2, SD 1.4).", rich_help_panel="Detector"),
    steps: Optional[int] = typer.Option(None, "--steps", help="DDIM schedule length (all detectors; papers: 50).", rich_help_panel="Sampling"),
    first_steps: Optional[int] = typer.Option(None, "--first-steps", help="text-noise-norm: steps averaged from the start (Wen et al.: all 50).", rich_help_panel="Sampling"),
    generations: Optional[int] = typer.Option(None, "--generations", help="Starting noises per prompt (Wen, Jeon: 4; Asthana: 1).", rich_help_panel="Sampling"),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="text-noise-norm: guidance scale of the trajectory (Wen et al.: 7.5).", rich_help_panel="Sampling"),
    seed: int = typer.Option(0, "--seed", help="Generation g starts from the noise of seed + g, for every prompt.", rich_help_panel="Sampling"),
    batch_size: int = typer.Option(64, "--batch-size", help="Prompt-generation pairs per model call.", rich_help_panel="Sampling"),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for detect.json and detect.html.", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print per-prompt scores and the AUC as JSON on stdout.", rich_help_panel="Output"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output (bars, the sampling plan, plain progress lines).", rich_help_panel="Output"),
) -> None:
    """Detect memorized prompts of a text-to-image model without its training data (Wen et al., ICLR 2024, and later detectors)."""
    from memaudit.api import run_detect

    progress.set_enabled(not quiet)
    with _user_errors():
        document = run_detect(pipeline, prompts, out, detector=detector, steps=steps, guidance=guidance,
                              generations=generations, first_steps=first_steps, gamma_norm=gamma_norm,
                              gamma_alignment=gamma_alignment, seed=seed, batch_size=batch_size, device=device,
                              trust_checkpoint=trust_checkpoint, command=_command_line())
    if as_json:
        out_console.print_json(json.dumps({"prompts": document["prompts"], "evaluation": document["evaluation"]}))
        return
    for row in sorted(document["prompts"], key=lambda r: -r["score"]):
        label = f" [{row['label']}]" if row["label"] else ""
        out_console.print(f"{row['score']:10.4f}  {row['prompt']}{label}", highlight=False, markup=False, soft_wrap=True)
    if document["evaluation"]:
        evaluation = document["evaluation"]
        out_console.print(f"AUC memorized vs novel: {evaluation['auc']:.4f} (95% CI {evaluation['auc_ci95'][0]:.3f}-"
                          f"{evaluation['auc_ci95'][1]:.3f})", highlight=False)


@app.command()
def index(
    data: str = typer.Argument(..., help="Training set: digits[:N], or a path: a folder of images, .npz/.npy, an EDM dataset zip, a CIFAR batch folder, webdataset .tar shards (globs, {000..009}), parquet, a save_to_disk folder; FORMAT:PATH names the format."),
    space: list[str] = typer.Option(..., "--space", help="Feature space to precompute (repeatable), as for audit --space."),
    index_kind: Optional[str] = typer.Option(None, "--index", help="Also build this approximate index in each space: ivf-pq, ivf or hnsw (audits with the same --index and parameters load it)."),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="ivf, ivf-pq: inverted lists (default: the largest power of two at most sqrt(n))."),
    pq_m: Optional[int] = typer.Option(None, "--m", help="ivf-pq: PQ sub-quantizers (default: the largest divisor of the dimension up to dim/2 and 128 at 4 bits, dim/4 and 64 at 8); hnsw: graph degree (32)."),
    nbits: Optional[int] = typer.Option(None, "--nbits", help="ivf-pq: bits per PQ code (default 4: faiss's fast-scan codes)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the cache entries as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output (bars, the sampling plan, plain progress lines)."),
    cache_dir: Optional[Path] = _cache_dir_option(),
) -> None:
    """Precompute a training set's features, and optionally its approximate index, for later audits (--cache-dir, else $MEMAUDIT_CACHE, else ~/.cache/memaudit)."""
    from memaudit.api import index_training_set

    progress.set_enabled(not quiet)
    with _user_errors(), _cache(cache_dir):
        rows = index_training_set(data, space, device=device, index=index_kind, nlist=nlist, m=pq_m, nbits=nbits)
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


@app.command()
def dedup(
    data: str = typer.Argument(..., help="Training set: digits[:N], a folder, an archive or array file (see --train)."),
    space: str = typer.Option("pixel", "--space", help="Where to compare images: pixel, pixel-N or an embedding space."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Near-duplicate limit: RMS pixel difference in [0, 1] (default 0.02) in pixel spaces, cosine similarity (default 0.98) in embedding spaces."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder to write dedup.json into."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the clusters as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output (bars, the sampling plan, plain progress lines)."),
    cache_dir: Optional[Path] = _cache_dir_option(),
    no_cache: bool = _no_cache_option(),
) -> None:
    """Find exact and near-duplicate clusters in a training set."""
    from memaudit.api import find_training_duplicates

    progress.set_enabled(not quiet)
    with _user_errors(), _cache(cache_dir, no_cache):
        result = find_training_duplicates(data, space, threshold, device=device, out=out)
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


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="The --out folder of a finished audit."),
    redact: Optional[str] = typer.Option(None, "--redact", help="none, blur or omit (default: as recorded in audit.json)."),
) -> None:
    """Re-render report.html from a run's audit.json."""
    from memaudit.api import render_report

    with _user_errors():
        path = render_report(run_dir, redact=redact)
    out_console.print(f"report: {path}", highlight=False, soft_wrap=True)


@app.command()
def compare(
    run_dirs: list[Path] = typer.Argument(..., help="Two or more --out folders of finished audits, in the order to plot."),
    out: Path = typer.Option(..., "--out", help="Folder for compare.json and compare.html."),
    allow_mismatch: bool = typer.Option(False, "--allow-mismatch", help="Compare audits of different training sets or criteria."),
    as_json: bool = typer.Option(False, "--json", help="Print compare.json on stdout."),
) -> None:
    """Compare several audits (checkpoints, snapshots, sizes) on one page."""
    from memaudit.api import compare_runs

    with _user_errors():
        path = compare_runs(run_dirs, out, allow_mismatch=allow_mismatch)
    if as_json:
        out_console.print_json((path.parent / "compare.json").read_text())
    else:
        out_console.print(f"comparison: {path}", highlight=False, soft_wrap=True)


@app.command()
def emm(
    train: str = typer.Option("digits", "--train", help="Training set to subsample: digits (the default, sklearn's 1797 8x8 digits), a folder of images, or an .npz (with labels for balanced subsets).", rich_help_panel="Data"),
    classes: Optional[int] = typer.Option(None, "--classes", help="Inter-diversity: train on the first C classes only.", rich_help_panel="Data"),
    mix: Optional[str] = typer.Option(None, "--mix", help="Intra-diversity: DATA:ALPHA, a share ALPHA of each subset from another set (resized to match), e.g. photos:0.5.", rich_help_panel="Data"),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Resize the images to R x R before training.", rich_help_panel="Data"),
    labels: str = typer.Option("none", "--labels", help="Condition on none, true (the classes), random:C, or unique (one class per image).", rich_help_panel="Data"),
    subset: str = typer.Option("balanced", "--subset", help="balanced (first |D|/C of each class) or random (nested).", rich_help_panel="Data"),
    precond: Optional[str] = typer.Option(None, "--precond", help="(budget) Preconditioning and loss: edm, vp, ve (EDM's Table 1, Heun-sampled, as Gu et al.) or ddpm (diffusers UNet, DDIM-sampled).", rich_help_panel="Model"),
    arch: Optional[str] = typer.Option(None, "--arch", help="(budget) U-Net preset: tiny, small, ddpmpp, ncsnpp (the paper's), ddpmpp-32 (diffusers, ddpm only).", rich_help_panel="Model"),
    width: Optional[int] = typer.Option(None, "--width", help="Base channel count (overrides the preset).", rich_help_panel="Model"),
    depth: Optional[int] = typer.Option(None, "--depth", help="Residual blocks per level (overrides the preset).", rich_help_panel="Model"),
    attention: Optional[str] = typer.Option(None, "--attention", help="Resolutions with self-attention, e.g. 16 or 16,8, or none.", rich_help_panel="Model"),
    time_embedding: Optional[str] = typer.Option(None, "--time-embedding", help="positional or fourier (default: the preset's; edm/vp/ve only).", rich_help_panel="Model"),
    skips: Optional[str] = typer.Option(None, "--skips", help="Skip connections kept: all or a 0/1 mask per encoder output, e.g. 1,0,1,1,1,1 (edm/vp/ve only).", rich_help_panel="Model"),
    budget: str = typer.Option("default", "--budget", help="Training budget T the answer is stated under: quick (tests, demos), default (minutes on a CPU), paper (Gu et al.'s CIFAR-10 recipe: DDPM++, VP, 40,000 epochs, batch 512, lr 2e-4; a GPU budget). Options below marked (budget) override it.", rich_help_panel="Training"),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="(budget) Training duration in epochs: images seen = epochs x |D|.", rich_help_panel="Training"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="(budget) Training batch size.", rich_help_panel="Training"),
    lr: Optional[float] = typer.Option(None, "--lr", help="(budget) Adam learning rate.", rich_help_panel="Training"),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="(budget) Learning-rate warm-up steps.", rich_help_panel="Training"),
    ema: Optional[float] = typer.Option(None, "--ema", help="(budget) EMA decay of the saved weights.", rich_help_panel="Training"),
    weight_decay: float = typer.Option(0, "--weight-decay", help="Adam weight decay.", rich_help_panel="Training"),
    seeds: int = typer.Option(1, "--seeds", help="Training seeds per size (0..N-1); decisions use the mean.", rich_help_panel="Training"),
    snapshots: Optional[int] = typer.Option(None, "--snapshots", help="(budget) EMA models saved evenly through training; the highest ratio counts.", rich_help_panel="Training"),
    extend: Optional[int] = typer.Option(None, "--extend", help="(budget) A larger T for points still rising: double a point's training up to this many times while its ratio still rises (0 in every budget).", rich_help_panel="Training"),
    converge_tolerance: float = typer.Option(0.03, "--converge-tolerance", help="Still rising: the second half of a point's training raised its highest ratio by more than this.", rich_help_panel="Training"),
    checkpoint_every: int = typer.Option(500, "--checkpoint-every", help="Training steps between resumable checkpoints.", rich_help_panel="Training"),
    parallel: str = typer.Option("points", "--parallel", help="Under torchrun: points (each rank trains its own points, several sizes per round) or ddp (all ranks train each point together, data parallel).", rich_help_panel="Training"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu, cuda or cuda:N.", rich_help_panel="Training"),
    threads: int = typer.Option(1, "--threads", help="Torch CPU threads (1: fastest for small U-Nets, above all on a busy CPU).", rich_help_panel="Training"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Points trained at once, one process each (default: 2 on a machine with at least 2 cores, else 1; not under torchrun).", rich_help_panel="Training"),
    epsilon: float = typer.Option(0.1, "--epsilon", help="EMM threshold: memorization ratio >= 1 - epsilon.", rich_help_panel="Search"),
    tolerance: Optional[int] = typer.Option(None, "--tolerance", help="Stop bisecting when the bracket is narrower than this many images (default: the size grid).", rich_help_panel="Search"),
    relative_tolerance: float = typer.Option(1.25, "--relative-tolerance", help="Stop bisecting once the bracket's upper end is at most this times its lower end (1: down to --tolerance).", rich_help_panel="Search"),
    stop_passed: bool = typer.Option(True, "--stop-passed/--full-points", help="With one seed, stop a point's training at its first snapshot that passes (its verdict is settled; its ratio is then that snapshot's), or train every point to its full budget.", rich_help_panel="Search"),
    start: Optional[int] = typer.Option(None, "--start", help="First size tried (default: 2 per class, then doubling).", rich_help_panel="Search"),
    max_size: Optional[int] = typer.Option(None, "--max-size", help="Largest size tried (default: the whole set).", rich_help_panel="Search"),
    grid: Optional[str] = typer.Option(None, "--grid", help="Sizes to measure in any case, e.g. 10,20,40,80 (the paper's fixed grid).", rich_help_panel="Search"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="One search per value: KEY=V1,V2,... (width, depth, labels, resolution, weight-decay, ...).", rich_help_panel="Search"),
    n: Optional[int] = typer.Option(None, "--n", help="(budget) Samples generated per audited snapshot.", rich_help_panel="Sampling"),
    sample_steps: Optional[int] = typer.Option(None, "--sample-steps", help="Sampler steps (default: EDM's 18 Heun steps; 50 DDIM steps for ddpm).", rich_help_panel="Sampling"),
    out: Path = typer.Option(..., "--out", help="Run directory: emm.json, emm.html and points/ (models, audits).", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print emm.json on stdout.", rich_help_panel="Output"),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output (bars, the sampling plan, plain progress lines).", rich_help_panel="Output"),
    cache_dir: Optional[Path] = _cache_dir_option(),
    no_cache: bool = _no_cache_option(),
) -> None:
    """Estimate Effective Model Memorization: retrain on nested subsets and search the largest |D| that memorizes."""
    from memaudit.api import run_emm
    from memaudit.emm.recipe import EMMConfig

    progress.set_enabled(not quiet)
    with _user_errors(), _cache(cache_dir, no_cache):
        result = run_emm(EMMConfig(
            train=train, out=out, budget=budget, precond=precond, arch=arch, width=width, depth=depth, attention=attention,
            time_embedding=time_embedding, skips=skips, classes=classes, mix=mix, resolution=resolution,
            epochs=epochs, batch_size=batch_size, learning_rate=lr, warmup_steps=warmup, ema_decay=ema,
            weight_decay=weight_decay, labels=labels, subset=subset, epsilon=epsilon, tolerance=tolerance,
            relative_tolerance=relative_tolerance, stop_passed=stop_passed,
            seeds=seeds, start=start, max_size=max_size, grid=_sizes(grid), n=n, sample_steps=sample_steps, snapshots=snapshots,
            extend=extend, converge_tolerance=converge_tolerance,
            checkpoint_every=checkpoint_every, sweep=sweep, parallel=parallel, device=device, threads=threads,
            workers=workers, command=_command_line()))
    if as_json:
        out_console.print_json(json.dumps(result.emm))
        return
    for search in result.emm["searches"]:
        answer = search["emm"]
        # a size stopped at its first passing snapshot: its ratio is a lower bound
        sizes = ", ".join(f"{s['size']}: {'>=' if s.get('lower_bound') else ''}{s['mean']:.1%}" for s in search["sizes"])
        name = f"{search['label']}: " if search["label"] else ""
        out_console.print(f"{name}{answer['answer']}", highlight=False, soft_wrap=True)
        out_console.print(f"{name}ratio by |D|: {sizes}", highlight=False, soft_wrap=True)
        if answer["still_rising"]:
            out_console.print(f"{name}still rising at the end of T: |D| = {answer['upper']} was still memorizing more in the "
                              "second half of its training; a larger T (--epochs, --extend) may raise EMM", highlight=False,
                              soft_wrap=True)
        if answer["advice"]:
            out_console.print(f"{name}advice: {answer['advice']}", highlight=False, soft_wrap=True)
        if not search["monotone"]:
            out_console.print(f"{name}warning: the measured ratios are not monotone in |D|", highlight=False)
    out_console.print(f"emm: {result.out / 'emm.json'}\npage: {result.page}", highlight=False, soft_wrap=True)


def _fraction(text: str, option: str) -> float:
    """A number as people write it: 0.25, or a fraction such as 1/3."""
    from fractions import Fraction

    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise MemauditError(f"{option} {text}: expected a number such as 0.25 or a fraction such as 1/3") from None


def _sizes(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise MemauditError(f"--grid {text}: expected comma-separated sizes such as 10,20,40") from None


def main() -> None:
    """The ``memaudit`` command; under torchrun each rank joins the process group first, and only
    rank 0 prints results (see README.md, "Scaling out")."""
    hub.offline_environment()  # nothing this process loads may reach the network
    if distributed.launched_by_torchrun():
        try:
            world = distributed.init_from_environment()
        except MemauditError as error:
            err_console.print(f"memaudit: error: {error}", markup=False, highlight=False, soft_wrap=True)
            raise SystemExit(EXIT_BAD_INPUT) from None
        out_console.quiet = not world.is_main
    try:
        app()
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
