"""``memaudit audit``: options to ``AuditConfig``, ``memaudit.auditing.run_audit``, the summary printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memaudit import progress
from memaudit.cli import options
from memaudit.cli.common import EXIT_OVER_LIMIT, cache, command_line, err_console, out_console, user_errors
from memaudit.errors import MemauditError
from memaudit.storage import displayable

COPIES_LISTED = 10  # exact copies named one per line in the terminal summary

MODEL_HELP = (
    "What to sample: optimal (the optimal denoiser of --train, the positive control); a diffusers pipeline folder, "
    "or hf:ORG/NAME from the local Hugging Face cache (never downloaded); a checkpoint-N folder of the diffusers "
    "training scripts; a fine-tuned UNet/transformer folder (config.json + weights) with --base DIR; an EDM network-snapshot-*.pkl (with --trust-checkpoint); a TorchScript denoiser file; a folder "
    "written by memaudit emm; weights.safetensors with --factory file.py:build; your own code as file.py:factory or "
    "package.module:factory; a folder of snapshots (EDM .pkl files or checkpoint-N folders: every snapshot audited). "
    "Leave out with --samples.")


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
    device: str = options.device("Model"),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32, fp16 or bf16 (half precision on CUDA only).", rich_help_panel="Model"),
    trust_checkpoint: bool = options.trust_checkpoint(),
    code_path: Optional[str] = options.code_path(),
    factory: Optional[str] = options.factory(),
    include_initial_snapshot: bool = typer.Option(False, "--include-initial-snapshot", help="Snapshot folders: also audit the untrained step-0 snapshot (skipped by default, as DiffMemorize's mem_ratio.py does).", rich_help_panel="Model"),
    variant: Optional[str] = typer.Option(None, "--variant", help="diffusers weight variant to load, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).", rich_help_panel="Model"),
    lora: list[str] = typer.Option([], "--lora", help="FILE[:SCALE] (repeatable): a LoRA on a diffusers pipeline MODEL, diffusers/PEFT or kohya .safetensors, loaded by diffusers' load_lora_weights, at SCALE (default 1).", rich_help_panel="Model"),
    embedding: list[str] = typer.Option([], "--embedding", help="FILE (repeatable): a textual-inversion embedding (.safetensors) loaded into a diffusers pipeline MODEL; its token is recorded.", rich_help_panel="Model"),
    base: Optional[str] = typer.Option(None, "--base", help="The base pipeline of a fine-tune (a folder or hf:ORG/NAME): sampled with the same seeds, prompts and settings and audited against the same --train, to show how much memorization the fine-tune added; a fine-tuned UNet/transformer folder as MODEL is loaded into it.", rich_help_panel="Model"),
    safety_checker: str = typer.Option("off", "--safety-checker", help="A pipeline's safety checker: off (the audit sees what the model draws) or flag (mark flagged samples; never blacked out).", rich_help_panel="Model"),
    n: int = typer.Option(1000, "--n", help="Number of samples to generate.", rich_help_panel="Sampling"),
    seed: int = typer.Option(0, "--seed", help="Seed of the first sample; sample i uses seed + i.", rich_help_panel="Sampling"),
    batch_size: int = options.batch_size(64),
    steps: Optional[int] = options.steps(),
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
    nlist: Optional[int] = options.nlist("Search"),
    pq_m: Optional[int] = options.pq_m("Search"),
    nbits: Optional[int] = options.nbits("Search"),
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
    quiet: bool = options.quiet("Output"),
    cache_dir: Optional[Path] = options.cache_dir(),
    no_cache: bool = options.no_cache(),
) -> None:
    """Audit MODEL (or --samples) against its training set."""
    from memaudit.adapters.edm import parse_sampler_options
    from memaudit.auditing import AuditConfig, run_audit
    from memaudit.criteria import parse_thresholds

    progress.set_enabled(not quiet)
    with user_errors(), cache(cache_dir, no_cache):
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
            variant=variant, safety_checker=safety_checker, resume=resume, loras=lora, embeddings=embedding, base=base,
            mia_members=members, mia_nonmembers=nonmembers,
            command=command_line(),
        ))
    print_result(result, as_json)
    if result.exceeds(fail_above):
        copies = len(result.exact_copies)
        why = (f"{copies} exact cop{'ies' if copies != 1 else 'y'} of training images" if copies else
               f"memorized share {result.gate['fraction']:.1%} is above --fail-above {fail_above:.1%}")
        err_console.print(f"memaudit: release gate failed: {why}", highlight=False)
        raise typer.Exit(EXIT_OVER_LIMIT)


def print_result(result, as_json: bool) -> None:
    audit = result.audit
    if as_json:
        summary = {key: audit[key] for key in ("schema_version", "memorization_ratio", "n_samples", "train", "model",
                                               "headline", "gate", "warnings")}
        summary["spaces"] = {name: {"criteria": {c: {k: v for k, v in value.items() if k != "histogram"}
                                                 for c, value in space["criteria"].items()}}
                             for name, space in audit["spaces"].items()}
        if audit.get("base_comparison"):  # the figures; the pairs stay in audit.json
            summary["base_comparison"] = {k: v for k, v in audit["base_comparison"].items() if k != "pairs"}
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
    base = audit.get("base_comparison")
    if base:
        for key, what in (("nn_ratio", "paper's ratio"), ("verdict", "verdict's share")):
            c = base[key]
            difference = c["difference"]
            out_console.print(
                f"base {base['base']['spec']}: {what} {c['base']['fraction']:.1%} (95% CI {c['base']['ci95'][0]:.1%}-"
                f"{c['base']['ci95'][1]:.1%}); the fine-tune's {c['finetune']['fraction']:.1%}; added "
                f"{difference['value'] * 100:+.1f} points (95% CI {difference['ci95'][0] * 100:+.1f} to "
                f"{difference['ci95'][1] * 100:+.1f})", highlight=False, soft_wrap=True, markup=False)
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


def _fraction(text: str, option: str) -> float:
    """A number as people write it: 0.25, or a fraction such as 1/3."""
    from fractions import Fraction

    try:
        return float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError):
        raise MemauditError(f"{option} {text}: expected a number such as 0.25 or a fraction such as 1/3") from None
