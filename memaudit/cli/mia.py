"""``memaudit mia``: options to ``MiaConfig``, ``memaudit.membership.run_mia``, the AUCs printed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from memaudit import progress
from memaudit.cli import options
from memaudit.cli.common import command_line, out_console, user_errors


def mia(
    model: str = typer.Argument(..., help="A diffusers pipeline directory (UNet: unconditional, class- or text-conditional), an EDM snapshot, TorchScript or state-dict denoiser."),
    members: Optional[str] = typer.Option(None, "--members", help="Images known to be in the training set (same forms as audit --train), e.g. digits:100.", rich_help_panel="Data"),
    nonmembers: Optional[str] = typer.Option(None, "--nonmembers", help="Images known to be outside it, from the same distribution, e.g. digits:N:rest beside --members digits:N (the digits a model trained on digits:N never saw).", rich_help_panel="Data"),
    query: Optional[str] = typer.Option(None, "--query", help="Images of unknown status: each gets a p-value against the --nonmembers scores.", rich_help_panel="Data"),
    limit: Optional[int] = typer.Option(None, "--limit", help="Score only the first N images of each set (a quick look).", rich_help_panel="Data"),
    device: str = options.device("Model"),
    trust_checkpoint: bool = options.trust_checkpoint(),
    code_path: Optional[str] = options.code_path(),
    factory: Optional[str] = options.factory(),
    attack: list[str] = typer.Option([], "--attack", help="Attack to run (repeatable): loss, pia, secmi, score-norm, secmi-nns (default: the first four; secmi-nns trains a ResNet-18 on 20% of each set and scores the rest).", rich_help_panel="Attacks"),
    setting: list[str] = typer.Option([], "--setting", help="ATTACK.KEY=VALUE (repeatable) overriding an attack's paper default, e.g. pia.timestep=100.", rich_help_panel="Attacks"),
    timesteps: Optional[str] = typer.Option(None, "--timesteps", help="Also score each attack at these steps: a list 10,50,100 or START:STOP:STEP with STOP included (10:300:10, PIA's scan); a per-step table (AUC, 95% interval, TPR at 1% and 0.1% FPR) goes into mia.json and mia.html, its best step marked as chosen on the evaluated data (optimistic). The headline stays at each attack's default step.", rich_help_panel="Attacks"),
    loss_noise: Optional[str] = typer.Option(None, "--loss-noise", help="The loss attack's noise: shared (default: 4 seeded noises, the same for every image, so members and non-members are compared under the same draws) or per-image (one fresh noise per image, as the authors' baselines; --setting loss.noises=K for K).", rich_help_panel="Attacks"),
    batch_size: int = typer.Option(256, "--batch-size", help="Images per model call.", rich_help_panel="Attacks"),
    out: Path = typer.Option(..., "--out", help="Run directory for mia.json, scores.csv, mia.html.", rich_help_panel="Output"),
    as_json: bool = typer.Option(False, "--json", help="Print each attack's AUC and TPR at low FPR as JSON on stdout.", rich_help_panel="Output"),
    quiet: bool = options.quiet("Output"),
) -> None:
    """Membership inference: was an image in MODEL's training set? (loss, PIA, SecMI, score norm)"""
    from memaudit.membership import DEFAULT_ATTACKS, MiaConfig, parse_settings, run_mia
    from memaudit.membership.audit import json_summary, unsupported_tpr

    progress.set_enabled(not quiet)
    with user_errors():
        document = run_mia(MiaConfig(
            model=model, out=out, members=members, nonmembers=nonmembers, query=query,
            attacks=list(dict.fromkeys(attack)) or list(DEFAULT_ATTACKS), settings=parse_settings(setting),
            timesteps=timesteps, loss_noise=loss_noise,
            batch_size=batch_size, device=device, limit=limit, trust_checkpoint=trust_checkpoint,
            code_path=code_path, factory=factory, command=command_line()))
    summary = {name: json_summary(a) for name, a in document["attacks"].items()}
    if as_json:
        out_console.print_json(json.dumps({"attacks": summary, "best_attack": document["best_attack"], "options": document["options"],
                                           "verdict": document["verdict"], "run_dir": str(out)}))
        return
    out_console.print(document["verdict"]["sentence"] + ".", highlight=False, soft_wrap=True, markup=False)
    for name, a in document["attacks"].items():
        if "auc" in a:
            low, high = a["auc_ci95"]
            tprs = ", ".join(f"TPR@{t['fpr']:.1%} FPR " + (f"{t['tpr']:.1%}" if t["supported"] else unsupported_tpr(t))
                             for t in a["tpr_at_fpr"])
            out_console.print(f"{name}: AUC {a['auc']:.4f} (95% CI {low:.3f}-{high:.3f}), {tprs}", highlight=False, soft_wrap=True)
            if "timesteps" in a:
                best = a["timesteps"]["best"]
                out_console.print(f"  {a['timesteps']['key']} scan over {len(a['timesteps']['rows'])} steps: best {a['timesteps']['key']}="
                                  f"{best['t']} AUC {best['auc']:.4f}, {best['note']}; headline at {a['timestep']['t']}",
                                  highlight=False, soft_wrap=True)
        else:
            out_console.print(f"{name}: scored {len(a.get('query', []))} query images", highlight=False)
    out_console.print(f"report: {Path(out) / 'mia.html'}", highlight=False, soft_wrap=True)
