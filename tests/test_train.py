"""Training from scratch: presets, determinism, and resuming after a kill gives the same weights."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from memaudit.denoisers.architectures import ARCHS, Architecture, build_unet, count_parameters, resolve_architecture
from memaudit.data import load_image_set
from memaudit.errors import InputError
from memaudit.retraining.training import TrainConfig, train_ddpm


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    pass

# a very small U-Net with dropout, so the resume test also covers the dropout RNG
SMALL = Architecture(width=8, multipliers=(1, 2), depth=1, dropout=0.1)
CONFIG = TrainConfig(steps=24, batch_size=8, warmup_steps=4, seed=3, arch=SMALL, checkpoint_every=5,
                     ema_warmup=True, snapshot_steps=(12,))


def weights(pipeline_dir):
    from safetensors.numpy import load_file

    return load_file(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors")


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)


@pytest.fixture(scope="module")
def digits20():
    return load_image_set("digits:20")


def test_presets_and_overrides():
    params = count_parameters(build_unet(ARCHS["ddpmpp-32"], (32, 32, 3)))
    assert 35e6 <= params <= 36.5e6  # the paper's ~35M-parameter basic configuration
    assert count_parameters(build_unet(ARCHS["tiny"], (8, 8, 1))) < 300_000
    arch = resolve_architecture("ddpmpp-32", width=64, depth=1, attention="8,4")
    assert arch.channels == (64, 128, 128, 128) and arch.depth == 1 and arch.attention == (8, 4)
    unet = build_unet(arch, (32, 32, 3), num_class_embeds=10)
    assert unet.config.down_block_types == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert unet.config.num_class_embeds == 10
    assert resolve_architecture("tiny", attention="none").attention == ()
    with pytest.raises(InputError, match="--arch huge: unknown architecture; valid presets are tiny, small, ddpmpp-32"):
        resolve_architecture("huge")
    with pytest.raises(InputError, match="divisible by 8"):
        build_unet(ARCHS["ddpmpp-32"], (12, 12, 1))


def test_training_is_deterministic_and_resumes_after_an_interruption(tmp_path, digits20):
    whole = train_ddpm(digits20.images, tmp_path / "whole", CONFIG, labels=digits20.labels, num_classes=10,
                       snapshot_dir=tmp_path / "whole-snaps")
    assert [step for step, _ in whole.snapshots] == [12, 24]

    class Stop(Exception):
        pass

    def stop_at(step):
        if step == 17:  # checkpoints at 5, 10, 15: three steps are lost and redone
            raise Stop

    checkpoint = tmp_path / "resumed.ckpt"
    with pytest.raises(Stop):
        train_ddpm(digits20.images, tmp_path / "resumed", CONFIG, labels=digits20.labels, num_classes=10,
                   checkpoint=checkpoint, snapshot_dir=tmp_path / "snaps", on_step=stop_at)
    assert checkpoint.is_file() and not (tmp_path / "resumed").exists()
    resumed = train_ddpm(digits20.images, tmp_path / "resumed", CONFIG, labels=digits20.labels, num_classes=10,
                         checkpoint=checkpoint, snapshot_dir=tmp_path / "snaps")
    assert_same_weights(whole.model, resumed.model)
    assert_same_weights(whole.snapshots[0][1], resumed.snapshots[0][1])
    assert not checkpoint.exists()  # removed once the model is saved
    # a finished training is not run again
    again = train_ddpm(digits20.images, tmp_path / "resumed", CONFIG, labels=digits20.labels, num_classes=10,
                       on_step=lambda step: pytest.fail("trained again"), snapshot_dir=tmp_path / "snaps")
    assert again.model == resumed.model


def test_a_killed_training_process_resumes_to_the_same_weights(tmp_path, digits20):
    """SIGKILL mid-training in a real process; the rerun continues from the last checkpoint."""
    config = TrainConfig(steps=20, batch_size=8, warmup_steps=4, seed=5, arch=SMALL, checkpoint_every=6)
    script = textwrap.dedent(f"""
        import os, signal
        from memaudit.data import load_image_set
        from memaudit.retraining.training import TrainConfig, train_ddpm
        from memaudit.denoisers.architectures import Architecture
        from memaudit import progress
        progress.set_enabled(False)
        config = TrainConfig(steps=20, batch_size=8, warmup_steps=4, seed=5,
                             arch=Architecture(width=8, multipliers=(1, 2), depth=1, dropout=0.1), checkpoint_every=6)
        def kill(step):
            if step == 14:
                os.kill(os.getpid(), signal.SIGKILL)
        train_ddpm(load_image_set("digits:20").images, {str(tmp_path / "killed")!r}, config,
                   checkpoint={str(tmp_path / "killed.ckpt")!r}, on_step=kill)
    """)
    process = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": str(__import__("torch").get_num_threads())})
    assert process.returncode == -signal.SIGKILL, process.stderr
    assert (tmp_path / "killed.ckpt").is_file() and not (tmp_path / "killed").exists()
    steps = []
    resumed = train_ddpm(digits20.images, tmp_path / "killed", config, checkpoint=tmp_path / "killed.ckpt",
                         on_step=steps.append)
    assert steps == list(range(13, 21))  # at most one checkpoint interval (6 steps) was lost
    whole = train_ddpm(digits20.images, tmp_path / "whole", config)
    assert_same_weights(whole.model, resumed.model)


def test_a_stale_checkpoint_of_another_recipe_is_ignored(tmp_path, digits20):
    other = TrainConfig(**{**CONFIG.__dict__, "seed": 4, "snapshot_steps": ()})
    with pytest.raises(RuntimeError):
        train_ddpm(digits20.images, tmp_path / "a", other, checkpoint=tmp_path / "c.ckpt",
                   on_step=lambda s: (_ for _ in ()).throw(RuntimeError) if s == 11 else None)
    plain = TrainConfig(**{**CONFIG.__dict__, "snapshot_steps": ()})
    steps = []
    train_ddpm(digits20.images, tmp_path / "b", plain, checkpoint=tmp_path / "c.ckpt", on_step=steps.append)
    assert steps[0] == 1  # started from scratch, not from the other recipe's step 10


def test_a_longer_training_continues_a_kept_final_state(tmp_path, digits20):
    """The convergence guard's extension: training to 2N steps from the state kept at N gives the weights
    of a 2N-step run from scratch, and the N-step model is its snapshot (EDM preconditioning)."""
    from safetensors.numpy import load_file

    arch = Architecture(width=8, multipliers=(1, 2), depth=1, dropout=0.1)
    short = TrainConfig(steps=10, batch_size=8, warmup_steps=4, seed=2, arch=arch, precond="edm", checkpoint_every=4,
                        snapshot_steps=(5,))
    long = TrainConfig(**{**short.__dict__, "steps": 20, "snapshot_steps": (5, 10, 15)})
    checkpoint = tmp_path / "state.ckpt"
    train_ddpm(digits20.images, tmp_path / "snaps" / "step-0000010", short, checkpoint=checkpoint,
               snapshot_dir=tmp_path / "snaps", keep_checkpoint=True)
    assert checkpoint.is_file()
    steps = []
    continued = train_ddpm(digits20.images, tmp_path / "snaps" / "step-0000020", long, checkpoint=checkpoint,
                           snapshot_dir=tmp_path / "snaps", on_step=steps.append)
    assert steps == list(range(11, 21)) and not checkpoint.exists()
    assert [s for s, _ in continued.snapshots] == [5, 10, 15, 20]
    whole = train_ddpm(digits20.images, tmp_path / "whole" / "step-0000020", long, snapshot_dir=tmp_path / "whole")
    for (_, a), (_, b) in zip(continued.snapshots, whole.snapshots):
        wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        assert wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
