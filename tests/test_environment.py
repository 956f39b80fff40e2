"""The environment memaudit sets up on import: torchvision importable beside a CPU torch, cheaply."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import memaudit


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_memaudit_makes_model_libraries_importable():
    # The Done-when line of the issue, in a fresh interpreter (pytest's own process may have
    # imported torchvision already through conftest).
    result = _run("import memaudit; from diffusers import UNet2DModel; import open_clip; import timm; "
                  "import transformers; import torchvision.transforms as T; print(T.Resize.__name__)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "Resize"


def test_import_memaudit_imports_neither_torch_nor_torchvision():
    # The guard is an import hook: importing memaudit alone stays cheap (no torch import).
    result = _run("import sys, memaudit; print('torch' in sys.modules, 'torchvision' in sys.modules)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "False"]


def test_guard_is_installed_once():
    from memaudit import torchcompat

    torchcompat.install_guard()
    torchcompat.install_guard()
    assert sum(finder is torchcompat._finder for finder in sys.meta_path) == 1


def test_version_matches_the_installed_distribution():
    assert memaudit.__version__ == importlib.metadata.version("memaudit")


# --- every model load is offline -------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty hub cache, and any attempt to open a connection or resolve a name recorded."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    from huggingface_hub import constants  # read from the environment once, at import

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # open_clip's URL cache is ~/.cache/clip
    return attempts


def test_a_missing_open_clip_tag_fails_at_once_without_a_request(no_network):
    from memaudit.errors import InputError
    from memaudit.features import get_space
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import open_clip  # noqa: F401  (its import time is not what this test measures)

    started = time.perf_counter()
    with pytest.raises(InputError) as error:
        get_space("clip:ViT-B-32:openai")
    assert time.perf_counter() - started < 5.0
    assert no_network == []
    message = str(error.value)
    assert "ViT-B-32:openai" in message and "never downloads" in message and "\n" not in message


def test_an_unknown_open_clip_tag_names_the_known_ones(no_network):
    from memaudit.errors import InputError
    from memaudit.features import get_space

    with pytest.raises(InputError, match="no pretrained tag 'no-such-tag' for ViT-B-32; its tags: .*openai"):
        get_space("clip:ViT-B-32:no-such-tag")
    assert no_network == []


def test_a_cached_tag_loads_from_the_hub_cache_offline(no_network, tmp_path):
    # A tag hosted on the hub, registered for a tiny model of our own, and its weights laid out in
    # the hub cache as huggingface_hub leaves them: the real open_clip path loads them, offline.
    from memaudit.features import get_space
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import open_clip
    import torch
    from open_clip import pretrained

    config = tmp_path / "tiny-offline-clip.json"
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32,
                                                                   "head_width": 16, "patch_size": 8},
                                  "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                                               "layers": 1}}))
    open_clip.add_model_config(config)
    torch.manual_seed(3)
    model = open_clip.create_model("tiny-offline-clip", pretrained=None)
    snapshot = tmp_path / "empty-hub-cache" / "models--memaudit-test--tiny-offline-clip" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.save(model.state_dict(), snapshot / pretrained.HF_WEIGHTS_NAME)
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    pretrained._PRETRAINED["tiny-offline-clip"] = {"local": pretrained._pcfg(hf_hub="memaudit-test/tiny-offline-clip/")}
    try:
        space = get_space("clip:tiny-offline-clip:local")
    finally:
        del pretrained._PRETRAINED["tiny-offline-clip"]
    assert no_network == []
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    with torch.inference_mode():
        direct = model.eval().encode_image(torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
                                           .sub(torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1))
                                           .div(torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)))
    direct = torch.nn.functional.normalize(direct, dim=1).numpy()
    np.testing.assert_allclose(space.extract(images), direct, atol=1e-4)  # the cached weights, not a fresh init


def test_cli_missing_tag_is_one_line_exit_2_and_makes_no_request(tmp_path):
    # the hub endpoint is a socket of this test: any request of the real command would arrive there
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty"), "HOME": str(tmp_path),
               "MEMAUDIT_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": f"http://127.0.0.1:{server.getsockname()[1]}"}
        env.pop("HF_HUB_OFFLINE", None)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "memaudit", "audit", "optimal", "--train", "digits:10", "--n",
                                 "2", "--space", "clip:ViT-B-32:openai", "--out", str(tmp_path / "run")],
                                capture_output=True, text=True, env=env, timeout=300)
        elapsed = time.perf_counter() - started
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # no connection was ever made
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("memaudit: error: --space clip:ViT-B-32:openai")
    # imports of torch and open_clip take a few seconds (more on a busy machine); the hub's retries took a minute
    assert elapsed < 60


def test_offline_puts_the_hub_libraries_offline_for_the_block_only(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    from memaudit.hub import OFFLINE_VARIABLES, offline

    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with offline():
        assert huggingface_hub.is_offline_mode()
        assert all(os.environ[name] == "1" for name in OFFLINE_VARIABLES)
    assert not huggingface_hub.is_offline_mode()
    assert not any(name in os.environ for name in OFFLINE_VARIABLES)


def test_a_clip_space_from_a_file_logs_no_random_init_warning(tmp_path, caplog):
    # open_clip warns "No pretrained weights loaded ... initialized randomly" when memaudit builds
    # the model it then loads the user's weights into: that line would mislead every such audit
    import logging

    from memaudit.features import get_space
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import open_clip
    import torch

    config = tmp_path / "tiny-file-clip.json"
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 16, "layers": 1, "width": 32,
                                                                   "head_width": 16, "patch_size": 8},
                                  "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                                               "layers": 1}}))
    open_clip.add_model_config(config)
    torch.save(open_clip.create_model("tiny-file-clip").state_dict(), tmp_path / "weights.pt")
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        get_space(f"clip:{config}@{tmp_path / 'weights.pt'}")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert logging.root.manager.disable == logging.NOTSET  # logging is back as it was
