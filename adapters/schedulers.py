"""Samplers a diffusers model can be run with (``--scheduler``), by kebab-case name."""

from __future__ import annotations

from memaudit.errors import ModelError

# name -> (diffusers class, extra config). ddpm, euler-ancestral, dpm-solver++-sde and lcm add noise at
# every step: memaudit draws it from the seed's generator (adapters.diffusers_loops).
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm-solver++-sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lcm": ("LCMScheduler", {}),  # latent consistency: LCM-LoRA on an SD/SDXL pipeline, --steps 1..8
}


def swap_scheduler(current, name: str):
    """A new scheduler of kind ``name`` built from the current one's configuration (betas, timesteps)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ModelError(f"--scheduler {name}: unknown; valid schedulers are {', '.join(SCHEDULERS)}")
    class_name, extra = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(current.config, **extra)
