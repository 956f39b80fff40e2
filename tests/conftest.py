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


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path_factory, monkeypatch):
    """Feature caches go to a folder of this test session, never the user's ~/.cache."""
    monkeypatch.setenv("MEMAUDIT_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))


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


@pytest.fixture(scope="session")
def tiny_class_pipeline_dir(tmp_path_factory) -> Path:
    """A randomly initialised class-conditional (10 classes) 8x8 UNet2DModel in a DDIMPipeline."""
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import torch
    from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

    torch.manual_seed(1)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, num_class_embeds=10,
                       block_out_channels=(32, 32), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8)
    with torch.no_grad():  # make the class embedding matter visibly in a random network
        unet.class_embedding.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("pipeline") / "tiny-class-ddim"
    DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=1000)).save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_stable_diffusion(path: Path) -> Path:
    """A tiny Stable Diffusion pipeline (16x16 pixels) with a locally built byte-level CLIP tokenizer."""
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from family_pipelines import clip_tokenizer

    # Byte-level BPE vocabulary with no merges: every character is a token (GPT-2's byte map).
    tokenizer, vocab = clip_tokenizer(path.parent / "tokenizer-files", max_length=16)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=16, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=DDIMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path

@pytest.fixture(scope="session")
def tiny_dit_pipeline_dir(tmp_path_factory) -> Path:
    """A tiny DiT (class-conditional latent transformer, 10 labelled classes), 8x8 RGB pixels."""
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=1000)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(32, 64), latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
    pipeline = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(),
                           id2label={i: f"class {i}" for i in range(10)})
    path = tmp_path_factory.mktemp("pipeline") / "tiny-dit"
    pipeline.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_sd_pipeline_dir(tmp_path_factory) -> Path:
    return build_tiny_stable_diffusion(tmp_path_factory.mktemp("pipeline") / "tiny-sd")


@pytest.fixture(scope="session")
def family_pipeline_dir(tmp_path_factory):
    """A function building (once per session) a tiny pipeline of a text-to-image family by name:
    sdxl, sd3, flux, flux-schnell, pixart-sigma, lcm, sdxl-refiner (tests/family_pipelines.py)."""
    from family_pipelines import BUILDERS

    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            built[name] = BUILDERS[name](tmp_path_factory.mktemp("pipeline") / name)
        return built[name]

    return build


def diffusers_checkpoint_folder(pipeline_dir: Path, folder: Path) -> Path:
    """A diffusers training script's output folder: the scheduler, checkpoint-500/unet with the
    pipeline's weights and checkpoint-1000/unet_ema with the weights halved (another model)."""
    import shutil

    import torch
    from diffusers import UNet2DModel

    shutil.copytree(pipeline_dir / "scheduler", folder / "scheduler")
    unet = UNet2DModel.from_pretrained(pipeline_dir / "unet")
    unet.save_pretrained(folder / "checkpoint-500" / "unet")
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.mul_(0.5)
    unet.save_pretrained(folder / "checkpoint-1000" / "unet_ema")
    return folder


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(path)
    return path


CHROMIUM = "/usr/bin/chromium"
# Flags of a closed machine: no background networking, no component updates, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps"]


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright. Skipped where Chromium is absent, except in CI."""
    import os

    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium package for the browser tests")
        pytest.skip("needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


class PageVisit:
    """A page opened from a file URL, with everything it tried to do recorded."""

    def __init__(self, browser, path: Path, width: int = 1200):
        self.page = browser.new_page(viewport={"width": width, "height": 900})
        self.requests, self.console, self.errors, self.dialogs = [], [], [], []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("console", lambda message: self.console.append((message.type, message.text)))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def external_requests(self) -> list[str]:
        return [url for url in self.requests if url != self.url and not url.startswith("data:")]

    def close(self):
        self.page.close()


@pytest.fixture
def visit(browser):
    opened = []

    def open_page(path: Path, width: int = 1200) -> PageVisit:
        page = PageVisit(browser, path, width)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Train on one CPU thread: the tiny test U-Nets run as fast on one, and a second thread stalls
    whenever another process holds a core of a shared machine (steps 100x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spaces_without_ids(spaces: dict) -> dict:
    """audit.json's spaces without the per-sample table's training ids (nn1, nn2): the figures
    alone, for comparing audits of the same images named differently (train[j], train.npz[j],
    digits/i)."""
    pixel = dict(spaces["pixel"])
    table = pixel["per_sample"]
    keep = [i for i, column in enumerate(table["columns"]) if column not in ("nn1", "nn2")]
    pixel["per_sample"] = {"columns": [table["columns"][i] for i in keep],
                           "rows": [[row[i] for i in keep] for row in table["rows"]]}
    return {**spaces, "pixel": pixel}
