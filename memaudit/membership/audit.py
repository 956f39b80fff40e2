"""A membership-inference run: score members, non-members (and query images) with each attack,
evaluate, write mia.json, scores.csv and mia.html into the run folder."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from memaudit import rundir
from memaudit import roc as metrics
from memaudit.devices import resolve_device
from memaudit.errors import DataError, InputError
from memaudit.inputs import as_image_set, describe_input, shape_mismatch
from memaudit.outputs import png_data_uri
from memaudit.storage import write_json_atomic

from .attacks import DEFAULT_ATTACKS, attack_settings, get_attack
from .loss import image_keys
from .predictor import Conditions, noise_predictor
from .run import MIA_JSON, ScoredSet, evaluate, reconstruct, score_set, write_scores_csv
from .timesteps import check_timesteps, parse_timesteps, scan_table

SCHEMA_VERSION = 1
EXPOSED_SHOWN = 12  # members shown beside their reconstruction in mia.html


@dataclass
class MiaConfig:
    model: str
    out: Path
    members: str | None = None
    nonmembers: str | None = None
    query: str | None = None
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    settings: dict[str, dict[str, float]] = field(default_factory=dict)  # attack -> overrides
    timesteps: list[int] | str | None = None  # score every attack at each step too ("10:300:10", "10,50" or a list)
    loss_noise: str | None = None  # the loss attack's noise: "shared" (None: the default) or "per-image"
    batch_size: int = 256
    device: str = "auto"
    limit: int | None = None  # score at most this many images of each set (first ones), for quick looks
    trust_checkpoint: bool = False
    code_path: str | None = None
    factory: str | None = None
    command: str | None = None


def scored_set(role: str, image_set, limit: int | None) -> ScoredSet:
    rows = slice(0, limit)
    captions = image_set.captions[rows] if image_set.captions else None
    labels = None if image_set.labels is None else np.asarray(image_set.labels)[rows]
    images = image_set.images[rows]
    return ScoredSet(role, images, list(image_set.ids[rows]), Conditions(labels, captions, image_keys(images)))


def run(config: MiaConfig, adapter, sets: list[ScoredSet], device: str) -> dict:
    """Score ``sets`` with every attack of ``config``; write the run folder; return mia.json's content."""
    from memaudit.reports import write_mia_page

    predictor = noise_predictor(adapter, config.model)
    for scored in sets:
        predictor.check(scored.conditions, f"--{scored.role}s" if scored.role != "query" else "--query")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = adapter.fingerprint()
    schedule = len(predictor.alphas_cumprod)
    timesteps = config.timesteps
    settings_used: dict[str, dict] = {}
    for name in config.attacks:  # every setting checked against the model before any scoring
        attack = get_attack(name)
        settings_used[name] = attack_settings(name, config.settings.get(name, {}), config.loss_noise)
        last = max(int(v) for k, v in settings_used[name].items() if k in ("timestep", "t_sec"))
        if last >= schedule:
            raise InputError(f"--setting {name}: step {last} is past the model's {schedule} training timesteps")
        if timesteps is not None:
            check_timesteps(attack, settings_used[name], timesteps, schedule)
    roles = {s.role: s for s in sets}
    scores: dict[str, dict[str, np.ndarray]] = {}
    held: dict[str, dict[str, np.ndarray]] = {}  # learned attacks: the rows each role is evaluated on
    extra: dict[str, dict] = {name: {} for name in config.attacks}
    timings = {}
    for name in config.attacks:
        attack, settings = get_attack(name), settings_used[name]
        started = time.perf_counter()

        def scored(s, steps=None):
            return score_set(predictor, fingerprint, s, name, settings, config.batch_size, out / "scores", steps)

        if attack.learned:
            fitted = attack.fit(scored(roles["member"]), scored(roles["nonmember"]), settings, device)
            scores[name], held[name] = fitted["scores"], fitted["held"]
            extra[name]["split"] = {
                "seed": settings["seed"], "train_fraction": settings["train_fraction"],
                "train": {role: [roles[role].ids[i] for i in rows] for role, rows in fitted["train"].items()},
                "evaluated": {role: len(rows) for role, rows in fitted["held"].items()},
                "note": "trained on the listed images, evaluated on the others of each set"}
        else:
            scores[name] = {s.role: scored(s) for s in sets}
        if timesteps is not None:
            key = attack.timestep_key
            features = {role: scored(roles[role], timesteps) for role in ("member", "nonmember")}
            if attack.learned:  # one classifier per step, on the same split
                per_step = [attack.fit(features["member"][i], features["nonmember"][i], settings, device)["scores"]
                            for i in range(len(timesteps))]
                features = {role: np.stack([p[role] for p in per_step]) for role in ("member", "nonmember")}
            extra[name]["timesteps"] = {"key": key, **scan_table(timesteps, features["member"], features["nonmember"],
                                                                 settings[key])}
        timings[name] = time.perf_counter() - started
    results = evaluate(scores)
    p_values = {}
    if "query" in roles and "nonmember" in roles:
        p_values = {name: metrics.p_values(by_role["query"], by_role["nonmember"]) for name, by_role in scores.items()}
    write_scores_csv(out, sets, scores, p_values, held)
    attacks = {}
    for name in config.attacks:
        attack = get_attack(name)
        entry = {"paper": attack.paper, "settings": settings_used[name], "queries_per_image": attack.queries(settings_used[name]),
                 "seconds": round(timings[name], 3), **results.get(name, {})}
        if attack.timestep_key is not None:
            key = attack.timestep_key
            entry["timestep"] = {"key": key, "t": settings_used[name][key], "default": attack.defaults[key],
                                 "source": attack.timestep_source}
        entry.update(extra[name])
        if p_values:
            entry["query"] = [{"image": image_id, "score": float(s), "p_value": float(p)}
                              for image_id, s, p in zip(roles["query"].ids, scores[name]["query"], p_values[name])]
        attacks[name] = entry
    compared = {name: r for name, r in results.items() if not get_attack(name).learned}
    document = {
        "schema_version": SCHEMA_VERSION, "kind": "mia",
        "model": {"spec": config.model, "fingerprint": fingerprint, "noise_predictor": predictor.kind,
                  "conditioning": predictor.conditioning},
        "sets": {s.role: {"spec": getattr(config, s.role + "s" if s.role != "query" else "query"), "n": len(s.ids)}
                 for s in sets},
        "attacks": attacks,
        "best_attack": max(compared, key=lambda n: compared[n]["auc"]) if compared else None,
        "options": {"timesteps": timesteps, "loss_noise": settings_used["loss"]["noise"] if "loss" in settings_used else None},
        "provenance": {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       "command": config.command, "device": device, "batch_size": config.batch_size},
    }
    document["verdict"] = membership_verdict({n: attacks[n] for n in compared} or attacks, document["best_attack"])
    document["exposed"] = _exposed(predictor, document["best_attack"], settings_used, scores, roles)
    write_json_atomic(out / MIA_JSON, document)
    write_mia_page(out)
    return document


def membership_verdict(attacks: dict, best: str | None) -> dict:
    """The sentence mia.html and the terminal open with: whether the strongest attack tells members
    from non-members (its AUC's 95% interval above 0.5), and how well at a low FPR. ``leaks``:
    True, False, or None when no attack was evaluated (query images only). Choosing the best of
    several attacks on the same images is optimistic: the sentence says which one it is."""
    if best is None:
        return {"leaks": None, "sentence": "No attack was evaluated against known members and non-members "
                                           "(query images only): no membership verdict"}
    a = attacks[best]
    low, high = a["auc_ci95"]
    leaks = low > 0.5
    tprs = [t for t in a.get("tpr_at_fpr", []) if t["supported"]]
    at = f"; TPR {tprs[0]['tpr']:.1%} at {tprs[0]['fpr']:.1%} FPR" if tprs else ""
    sentence = (f"{'Members are told from non-members' if leaks else 'No evidence that members can be told from non-members'}"
                f": the strongest of {len(attacks)} attack{'s' if len(attacks) != 1 else ''}, {best}, has AUC "
                f"{a['auc']:.3f} (95% interval {low:.3f} to {high:.3f}{', above' if leaks else ', not above'} 0.5){at}")
    return {"leaks": leaks, "sentence": sentence, "attack": best}


def _tprs(rows: list[dict]) -> dict:
    """``tpr_at_fpr_0.01`` etc., each with mia.json's support flag beside the value."""
    return {f"tpr_at_fpr_{t['fpr']:g}": {"tpr": t["tpr"], "supported": t["supported"], "nonmembers": t["nonmembers"]}
            for t in rows}


def json_summary(a: dict) -> dict:
    """What ``memaudit mia --json`` prints of one attack: mia.json's numbers and support flags, no ROC."""
    out = {key: a[key] for key in ("auc", "auc_ci95", "tpr_at_fpr", "timestep") if key in a}
    out.update(_tprs(a.get("tpr_at_fpr", [])))
    if "split" in a:
        out["split"] = {k: v for k, v in a["split"].items() if k != "train"}
    if "timesteps" in a:
        out["timesteps"] = {"key": a["timesteps"]["key"], "best": a["timesteps"]["best"],
                            "rows": [{"t": r["t"], "auc": r["auc"], "auc_ci95": r["auc_ci95"], "default": r["default"],
                                      "best": r["best"], **_tprs(r["tpr_at_fpr"])} for r in a["timesteps"]["rows"]]}
    return out


def unsupported_tpr(t: dict) -> str:
    """How a TPR at an FPR too low for the non-members at hand reads, on the terminal and the page."""
    return f"n/a (needs {math.ceil(1.0 / t['fpr'] - 1e-9)} non-members, {t.get('nonmembers', '?')} given)"


def _exposed(predictor, best: str | None, settings: dict, scores: dict, roles: dict) -> list[dict]:
    """The members the best attack is surest of, each beside the model's reconstruction of it."""
    if best is None:
        return []
    member_scores = scores[best]["member"]
    top = np.argsort(-member_scores, kind="stable")[:EXPOSED_SHOWN]
    members = roles["member"]
    attack = get_attack(best)
    timestep = int(settings[best].get(attack.timestep_key, 100))
    rebuilt = reconstruct(predictor, members.images[top], members.conditions.take(top), timestep)
    threshold = float(np.max(scores[best]["nonmember"]))
    return [{"image": members.ids[i], "score": float(member_scores[i]), "rank": rank + 1,
             "above_all_nonmembers": bool(member_scores[i] > threshold),
             "member_png": png_data_uri(members.images[i]), "reconstruction_png": png_data_uri(rebuilt[k]),
             "reconstruction_timestep": timestep}
            for rank, (k, i) in enumerate(zip(range(len(top)), top))]


@rundir.claimed(("mia.json", "scores.csv", "mia.html"), "mia")
def run_mia(config: MiaConfig) -> dict:
    """Membership inference (``memaudit mia``): score ``config.members`` against ``config.nonmembers``
    (and ``config.query`` images of unknown status) with each attack of ``memaudit.membership``; write
    mia.json, scores.csv and mia.html into ``config.out``. Returns mia.json's content."""
    from memaudit.adapters import SamplerOptions, model_to_query

    if config.query is None and (config.members is None or config.nonmembers is None):
        raise InputError("mia: give --members DATA and --nonmembers DATA (ground truth), or --query DATA with "
                         "--nonmembers DATA (p-values)")
    if config.query is not None and config.nonmembers is None:
        raise InputError("--query: p-values need --nonmembers DATA, images known to be outside the training set")
    if config.limit is not None and config.limit < 1:
        raise InputError(f"--limit {config.limit}: expected a positive number of images per set")
    for name in config.attacks:  # every name and setting checked before any work
        attack_settings(name, config.settings.get(name, {}), config.loss_noise)
    if config.loss_noise is not None and "loss" not in config.attacks:
        raise InputError(f"--loss-noise {config.loss_noise}: applies to the loss attack only, which this run does not "
                         "include; add --attack loss or drop --loss-noise")
    if isinstance(config.timesteps, str):
        config = dataclasses.replace(config, timesteps=parse_timesteps(config.timesteps))
    elif config.timesteps is not None:
        config = dataclasses.replace(config, timesteps=parse_timesteps(",".join(str(int(t)) for t in config.timesteps)))
    if config.timesteps is not None and (config.members is None or config.nonmembers is None):
        raise InputError("--timesteps: the per-step table needs --members and --nonmembers (ground truth)")
    learned = [name for name in config.attacks if get_attack(name).learned]
    if learned and (config.members is None or config.nonmembers is None or config.query is not None):
        raise InputError(f"--attack {learned[0]}: trains on part of --members and --nonmembers and scores the rest; "
                         "give both, without --query")
    sets, shape = [], None
    for role, spec in (("member", config.members), ("nonmember", config.nonmembers), ("query", config.query)):
        if spec is None:
            continue
        image_set = as_image_set(spec, f"--{role}s" if role != "query" else "--query", role=role)
        if shape is not None and image_set.image_shape != shape:
            raise DataError(f"{describe_input(spec)}: images of shape {image_set.image_shape}, the other sets' are {shape}")
        shape = image_set.image_shape
        sets.append(scored_set(role, image_set, config.limit))
    device = resolve_device(config.device)
    options = SamplerOptions(device=device, trust_checkpoint=config.trust_checkpoint, code_path=config.code_path,
                             factory=config.factory)
    adapter = model_to_query(config.model, options)  # each image is scored under its own label or caption
    if adapter.image_shape is not None and tuple(adapter.image_shape) != shape:
        raise DataError(shape_mismatch(f"MODEL {describe_input(config.model)}", adapter.image_shape, sets[0].role, shape))
    described = {name: describe_input(getattr(config, name)) for name in ("model", "members", "nonmembers", "query")}
    return run(dataclasses.replace(config, **described), adapter, sets, device)  # mia.json names objects by kind
