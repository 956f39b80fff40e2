"""``memaudit detect``: score each prompt of a text-to-image pipeline with a detector of
memorized prompts (``detectors``), and evaluate the scores when the prompt file labels them."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path

from memaudit import roc as metrics
from memaudit import rundir
from memaudit.detection.detectors import get_detector
from memaudit.detection.wen import read_prompts
from memaudit.devices import resolve_device
from memaudit.errors import ModelError


@dataclass
class DetectConfig:
    """The settings of a detection (the options of ``memaudit detect``); settings left None take
    the detector's paper defaults."""

    pipeline: str  # a text-to-image diffusers pipeline folder or hf:ORG/NAME in the local cache
    prompts: str  # a file of prompts, one per line; PROMPT<TAB>memorized|novel labels them
    out: Path | None = None
    detector: str = "text-noise-norm"
    steps: int | None = None
    guidance: float | None = None
    generations: int | None = None
    first_steps: int | None = None
    gamma_norm: float | None = None
    gamma_alignment: float | None = None
    seed: int = 0
    batch_size: int = 64
    device: str = "auto"
    trust_checkpoint: bool = False
    command: str | None = None


@rundir.claimed(("detect.json", "detect.html"), "detect")
def run_detect(config: DetectConfig) -> dict:
    """Training-data-free detection of memorized prompts (``memaudit detect``): each prompt's score
    under ``detector`` (see ``detectors``; default Wen et al. ICLR 2024's text-conditional
    noise magnitude), and the AUC of memorized against novel prompts when the prompt file labels
    them. Settings left None take the detector's paper defaults; one it does not have is refused.
    Writes detect.json and detect.html into ``out`` when given; returns detect.json's content."""
    from memaudit.adapters import SamplerOptions, load_model_to_query

    pipeline, prompts, out, detector = config.pipeline, config.prompts, config.out, config.detector
    steps, guidance, generations, first_steps = config.steps, config.guidance, config.generations, config.first_steps
    gamma_norm, gamma_alignment, seed, batch_size = config.gamma_norm, config.gamma_alignment, config.seed, config.batch_size
    device, trust_checkpoint, command = config.device, config.trust_checkpoint, config.command
    chosen = get_detector(detector)
    settings = chosen.settings({"steps": steps, "guidance": guidance, "generations": generations,
                                "first_steps": first_steps, "gamma_norm": gamma_norm,
                                "gamma_alignment": gamma_alignment})
    if "first_steps" in settings:
        settings["first_steps"] = min(settings["first_steps"], settings["steps"])
    texts, labels = read_prompts(prompts)
    device = resolve_device(device)
    adapter = load_model_to_query(pipeline, SamplerOptions(device=device, trust_checkpoint=trust_checkpoint))
    if getattr(adapter, "family", None) != "text-to-image":
        raise ModelError(f"{pipeline}: detect needs a text-to-image pipeline (a prompt-taking diffusers pipeline)")
    columns = chosen.run(adapter.pipeline, texts, seed=seed, device=device, batch_size=batch_size, **settings)
    scores = columns["score"]
    rows = [{"prompt": p, "label": {1: "memorized", 0: "novel", None: None}[lab],
             **{name: float(values[i]) for name, values in columns.items()}}
            for i, (p, lab) in enumerate(zip(texts, labels))]
    document = {"schema_version": 1, "kind": "detect", "model": {"spec": pipeline, "fingerprint": adapter.fingerprint()},
                "detector": chosen.name, "method": chosen.method, "settings": {**settings, "seed": seed},
                "columns": [name for name in columns if name != "score"], "prompts": rows, "evaluation": None,
                "provenance": {"command": command, "device": device,
                               "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}}
    memorized = [s for s, lab in zip(scores, labels) if lab == 1]
    novel = [s for s, lab in zip(scores, labels) if lab == 0]
    if memorized and novel:
        document["evaluation"] = {k: v for k, v in metrics.summary(memorized, novel).items() if k != "roc"}
        for name in document["columns"]:  # each part of the score on its own
            document["evaluation"]["auc_" + name] = metrics.auc(
                [r[name] for r in rows if r["label"] == "memorized"], [r[name] for r in rows if r["label"] == "novel"])
    if out is not None:
        from memaudit.reports import write_detect_page
        from memaudit.storage import write_json_atomic

        Path(out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(out) / "detect.json", document)
        write_detect_page(Path(out))
    return document
