"""The base of a fine-tune (``--base``), audited beside it: sampled with the same seeds, prompts and
sampler settings, audited against the same training set into ``OUT/base/``, and compared
(``memaudit.baseline``) in audit.json's ``base_comparison``. The verdict and the gate stay the
fine-tune's: the base is context, what the fine-tune is measured against.

Any diffusers pipeline family can be compared (unconditional, class-conditional, text-to-image):
the same seeds give the same noise, labels and prompts. A base of another family than the
fine-tune is refused, as are MODELs and bases that are not diffusers pipelines (``adapters``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import numpy as np

from memaudit import distributed, outputs
from memaudit.auditing.config import AuditConfig
from memaudit.baseline import compare_with_base
from memaudit.errors import InputError, ModelError

BASE_DIR = "base"  # the base's run folder, inside the fine-tune's
_SAME = ("scheduler", "scheduler_config", "steps", "guidance", "prompts", "labels", "dtype")


def check_base(config: AuditConfig) -> None:
    """--base names a diffusers pipeline (said before any sampling)."""
    from memaudit.adapters import base_pipeline_path

    path = base_pipeline_path(str(config.base))
    same = str(config.model) == str(config.base) or Path(str(config.model)).expanduser().resolve() == path.resolve()
    if not config.loras and not config.embeddings and same:
        raise InputError(f"--base {config.base}: MODEL is the base itself, with no --lora or --embedding: "
                         "nothing to compare; give the fine-tune as MODEL, or its LoRA with --lora")


def base_config(config: AuditConfig, settings: dict) -> AuditConfig:
    """The base's audit: the fine-tune's seeds, data, criteria and search; its sampler settings as
    the fine-tune resolved them (steps, guidance), so the pipeline defaults of the two cannot differ."""
    guidance = config.guidance if config.guidance is not None else settings.get("guidance")
    return dataclasses.replace(
        config, model=str(config.base), base=None, loras=[], embeddings=[], out=Path(config.out) / BASE_DIR,
        steps=config.steps if config.steps is not None else settings.get("steps"), guidance=guidance,
        fail_above=None, mia_members=None, mia_nonmembers=None,
        command=None if config.command is None else f"{config.command}  # its --base, audited beside it")


def audit_base(config: AuditConfig, audit: dict, images, train, conditions: dict,
               run_audit: Callable) -> dict | None:
    """Audit the base into OUT/base/ and return audit.json's ``base_comparison`` (None on ranks
    other than the main one). ``run_audit`` is passed in: this module sits below the audit's run."""
    settings = (audit.get("model") or {}).get("settings") or {}
    result = run_audit(base_config(config, settings))
    if not distributed.current().is_main:
        return None
    base_settings = result.audit["model"].get("settings") or {}
    if base_settings.get("family") != settings.get("family"):
        raise ModelError(f"--base {config.base}: a {base_settings.get('family')} pipeline, and the fine-tune "
                         f"{config.model} is {settings.get('family')}; a base samples like its fine-tune")
    warnings = [f"{key} differs: the fine-tune's {settings.get(key)!r}, the base's {base_settings.get(key)!r}"
                for key in _SAME if settings.get(key) != base_settings.get(key)]
    base_out = Path(config.out) / BASE_DIR
    base_conditions = np.load(base_out / outputs.SAMPLES_NPZ, allow_pickle=False)
    for key in ("prompts", "labels"):
        if key in conditions and (key not in base_conditions.files
                                  or list(base_conditions[key]) != list(np.asarray(conditions[key]))):
            warnings.append(f"the base was sampled with other {key} than the fine-tune")
    info = {"spec": result.audit["model"].get("spec"), "fingerprint": result.audit["model"].get("fingerprint"),
            "run_dir": BASE_DIR, "settings": base_settings}
    section = compare_with_base((Path(config.out), audit), (base_out, result.audit), images,
                                outputs.mapped_samples(base_out), train,
                                [str(p) for p in conditions["prompts"]] if "prompts" in conditions else None, info)
    section["warnings"] = warnings
    return section
