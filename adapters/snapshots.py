"""Training snapshots: EDM ``network-snapshot-*.pkl`` files and the ``checkpoint-N`` folders of the
diffusers training scripts. ``list_snapshots`` orders a folder's snapshots by training progress;
each one is an ordinary MODEL for the adapters.
"""

from __future__ import annotations

import re
from pathlib import Path

from memaudit.errors import ModelError
from memaudit.torchcompat import prepare_torchvision

from .base import SamplerOptions
from .diffusers_pipeline import DiffusersPipelineAdapter, _first_line, _quiet_diffusers, is_pipeline_dir

_EDM_SNAPSHOT = re.compile(r"^network-snapshot-(\d+)\.pkl$")
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
UNET_FOLDERS = ("unet_ema", "unet")  # the EMA weights first, as they are what gets released


def _unet_folder(path: Path) -> Path | None:
    return next((path / name for name in UNET_FOLDERS if (path / name / "config.json").is_file()), None)


def is_diffusers_checkpoint(path: Path) -> bool:
    return path.is_dir() and bool(_CHECKPOINT.match(path.name)) and _unet_folder(path) is not None


def list_snapshots(folder: Path) -> list[tuple[int, Path]]:
    """(training step or kimg, path) of every snapshot directly in ``folder``, in training order."""
    found = []
    for child in folder.iterdir() if folder.is_dir() else []:
        match = _EDM_SNAPSHOT.match(child.name) if child.is_file() else _CHECKPOINT.match(child.name)
        if match and (child.is_file() or is_diffusers_checkpoint(child)):
            found.append((int(match.group(1)), child))
    return sorted(found)


def is_snapshot_folder(path: Path) -> bool:
    """A folder of snapshots that is not itself a pipeline (a pipeline folder is audited as one model)."""
    return path.is_dir() and not is_pipeline_dir(path) and bool(list_snapshots(path))


def load_diffusers_checkpoint(spec: str, path: Path, train, options: SamplerOptions) -> DiffusersPipelineAdapter:
    """A checkpoint's UNet with the scheduler of the pipeline it was trained for (the parent folder's,
    else DDIM's defaults), sampled as a DDIMPipeline or DDPMPipeline."""
    prepare_torchvision()  # diffusers' UNet imports torchvision, which a CPU torch cannot import bare
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, UNet2DModel

    try:
        with _quiet_diffusers():
            unet = UNet2DModel.from_pretrained(_unet_folder(path), use_safetensors=True)
            scheduler = _parent_scheduler(path.parent / "scheduler") or DDIMScheduler()
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ModelError(f"{spec}: cannot load the checkpoint's UNet with safetensors weights ({_first_line(error)})") from None
    pipeline_class = DDIMPipeline if isinstance(scheduler, DDIMScheduler) else DDPMPipeline
    return DiffusersPipelineAdapter(spec, path, train, options, pipeline=pipeline_class(unet=unet, scheduler=scheduler))


def _parent_scheduler(folder: Path):
    """The scheduler saved beside the checkpoints, if any, of the class its config names."""
    import json

    import diffusers

    config_file = folder / "scheduler_config.json"
    if not config_file.is_file():
        return None
    scheduler_class = getattr(diffusers, str(json.loads(config_file.read_text()).get("_class_name")), None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
        raise ModelError(f"{config_file}: names no diffusers scheduler class")
    return scheduler_class.from_pretrained(folder)
