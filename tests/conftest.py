from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memaudit import progress


@pytest.fixture(autouse=True)
def _quiet_progress():
    progress.set_enabled(False)
    yield
    progress.set_enabled(True)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory) -> Path:
    """A randomly initialised 8x8 grayscale DDIMPipeline saved with safetensors, as users save one."""
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    path = tmp_path_factory.mktemp("pipeline") / "tiny-ddim"
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(path, safe_serialization=True)
    return path


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(path)
    return path
