"""What a diffusers pipeline is sampled with: options it cannot use refused, settings recorded with
the pipeline's defaults resolved, weight variants, and safety checkers that never black samples out."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from memaudit.adapters import SamplerOptions, load_model
from memaudit.cli import app
from memaudit.data import ImageSet, load_image_set
from memaudit.errors import ModelError

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_image_set("digits:50")


def captioned(n: int = 3) -> ImageSet:
    return ImageSet(np.zeros((n, 16, 16, 3), np.uint8), [str(i) for i in range(n)], "captioned",
                    captions=["a red square", "a blue circle", "two lines"][:n])


@pytest.mark.parametrize("options, message", [
    (dict(guidance=3.0), "--guidance 3.0 does not apply to an unconditional DDIMPipeline; it takes --steps, --scheduler, --dtype, --variant"),
    (dict(labels="train"), "--labels train does not apply to an unconditional DDIMPipeline"),
    (dict(prompts="train"), "--prompts train does not apply to an unconditional DDIMPipeline"),
    (dict(factory="build.py:make"), "--factory build.py:make does not apply to an unconditional DDIMPipeline"),
    (dict(safety_checker="flag"), "--safety-checker flag does not apply to an unconditional DDIMPipeline"),
])
def test_options_an_unconditional_pipeline_cannot_use_are_refused(tiny_pipeline_dir, digits, options, message):
    with pytest.raises(ModelError, match=re.escape(message)):
        load_model(str(tiny_pipeline_dir), digits, SamplerOptions(**options))


def test_refusals_follow_what_each_model_takes(tiny_class_pipeline_dir, tiny_sd_pipeline_dir, digits):
    # a class-conditional UNet2DModel has no guidance; a text-to-image pipeline takes no labels
    with pytest.raises(ModelError, match="--guidance 2.0 does not apply to a class-conditional DDIMPipeline"):
        load_model(str(tiny_class_pipeline_dir), digits, SamplerOptions(labels="train", guidance=2.0))
    with pytest.raises(ModelError, match="--labels 3 does not apply to a text-to-image StableDiffusionPipeline"):
        load_model(str(tiny_sd_pipeline_dir), captioned(), SamplerOptions(prompts="train", labels="3"))
    # the optimal denoiser samples with EDM's Heun sampler in float64: only --steps applies
    for options, flag in ((dict(scheduler="ddim"), "--scheduler ddim"), (dict(dtype="fp16"), "--dtype fp16"),
                          (dict(variant="fp16"), "--variant fp16")):
        with pytest.raises(ModelError, match=re.escape(f"{flag} does not apply to the optimal denoiser")):
            load_model("optimal", digits, SamplerOptions(**options))


def test_a_refusal_is_one_line_and_exit_2(tmp_path, tiny_pipeline_dir):
    result = runner.invoke(app, ["audit", str(tiny_pipeline_dir), "--train", "digits:50", "--out", str(tmp_path),
                                 "--guidance", "5", "--quiet"])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--guidance 5.0 does not apply" in result.stderr
    assert not (tmp_path / "audit.json").exists()


def test_settings_record_the_pipeline_defaults(tiny_pipeline_dir, tiny_dit_pipeline_dir, digits):
    settings = load_model(str(tiny_pipeline_dir), digits, SamplerOptions()).settings()
    assert settings["steps"] == 50 and settings["guidance"] is None  # DDIMPipeline's default, no guidance
    assert settings["scheduler"] == "DDIMScheduler" and settings["scheduler_config"]["num_train_timesteps"] == 1000
    assert settings["loop"] == "memaudit" and settings["safety_checker"] is None and settings["variant"] is None
    labelled = ImageSet(np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"], "l", labels=np.array([0, 1]))
    dit = load_model(str(tiny_dit_pipeline_dir), labelled, SamplerOptions(labels="train", scheduler="ddpm")).settings()
    assert dit["guidance"] == 4.0 and dit["steps"] == 50  # DiTPipeline's defaults
    assert dit["scheduler"] == "DDPMScheduler" and dit["scheduler_config"]["variance_type"] == "fixed_small"
    swapped = load_model(str(tiny_pipeline_dir), digits, SamplerOptions(scheduler="euler")).fingerprint()
    assert swapped != load_model(str(tiny_pipeline_dir), digits, SamplerOptions()).fingerprint()


def test_a_sampler_drawing_from_the_global_state_is_refused(tiny_pipeline_dir, digits):
    """A pipeline that is called as it is must take every draw from the seeds' generators."""
    model = load_model(str(tiny_pipeline_dir), digits, SamplerOptions(steps=2))
    model.loop = None  # as an unlisted pipeline: diffusers' call
    original = model.pipeline.scheduler.step

    def step_without_generator(*args, generator=None, **kwargs):
        torch.randn(1)  # what DiTPipeline's step noise does: torch's global state
        return original(*args, **kwargs)

    model.pipeline.scheduler.step = step_without_generator
    with pytest.raises(ModelError, match="draws random numbers outside the seeds' generators"):
        model.sample([0, 1], 2)


# --- weight variants ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def variant_dir(tiny_pipeline_dir, tmp_path_factory):
    """The tiny pipeline saved as diffusers saves variant="fp16" weights (fp16 files only)."""
    from diffusers import DiffusionPipeline

    path = tmp_path_factory.mktemp("variant") / "tiny-fp16"
    DiffusionPipeline.from_pretrained(tiny_pipeline_dir).save_pretrained(path, safe_serialization=True, variant="fp16")
    assert (path / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    return path


def test_variant_weights_load_with_variant(variant_dir, tiny_pipeline_dir, digits):
    with pytest.raises(ModelError, match=r"holds weights of variant fp16 only: pass --variant fp16\)$") as error:
        load_model(str(variant_dir), digits, SamplerOptions(steps=2))
    assert "--trust-checkpoint" not in str(error.value)  # it would not help
    model = load_model(str(variant_dir), digits, SamplerOptions(steps=2, variant="fp16"))
    plain = load_model(str(tiny_pipeline_dir), digits, SamplerOptions(steps=2))
    np.testing.assert_array_equal(model.sample([1, 2], 2), plain.sample([1, 2], 2))
    assert model.settings()["variant"] == "fp16" and model.fingerprint() != plain.fingerprint()
    with pytest.raises(ModelError, match=r"--variant bf16: .* has no weights of that variant; variants there: fp16"):
        load_model(str(variant_dir), digits, SamplerOptions(variant="bf16"))
    with pytest.raises(ModelError, match=r"variants there: none \(plain weights only: leave --variant out\)"):
        load_model(str(tiny_pipeline_dir), digits, SamplerOptions(variant="fp16"))


# --- safety checkers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_with_checker(tiny_sd_pipeline_dir, tmp_path_factory):
    """The tiny Stable Diffusion with a tiny CLIP safety checker that flags every image."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(3)
    config = CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=1),
                        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                           num_hidden_layers=1, image_size=32, patch_size=8), projection_dim=16)
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():  # every concept's threshold below any cosine similarity: all flagged
        checker.concept_embeds_weights.fill_(-2.0)
        checker.special_care_embeds_weights.fill_(-2.0)
    pipeline = DiffusionPipeline.from_pretrained(tiny_sd_pipeline_dir)
    pipeline.register_modules(safety_checker=checker, feature_extractor=CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}))
    pipeline.register_to_config(requires_safety_checker=True)
    path = tmp_path_factory.mktemp("pipeline") / "tiny-sd-checked"
    pipeline.save_pretrained(path, safe_serialization=True)
    # diffusers' own call: the flagged images come back black
    reloaded = DiffusionPipeline.from_pretrained(path)
    reloaded.set_progress_bar_config(disable=True)
    out = reloaded(prompt=["a red square"], num_inference_steps=2, output_type="np",
                   generator=[torch.Generator().manual_seed(0)])
    assert out.nsfw_content_detected == [True] and out.images.max() == 0
    return path


def test_safety_checker_off_by_default_and_flagging_never_blacks_out(tmp_path, sd_with_checker):
    off = load_model(str(sd_with_checker), captioned(), SamplerOptions(steps=2, prompts="train"))
    assert off.settings()["safety_checker"] == "off" and off.safety_flags(np.zeros((1, 16, 16, 3), np.uint8)) is None
    samples = off.sample([0, 1, 2], 3)
    assert samples.max() > 0  # what the model draws, not black squares
    flag = load_model(str(sd_with_checker), captioned(), SamplerOptions(steps=2, prompts="train", safety_checker="flag"))
    np.testing.assert_array_equal(flag.sample([0, 1, 2], 3), samples)
    assert flag.safety_flags(samples).tolist() == [True, True, True]
    assert flag.fingerprint() != off.fingerprint()

    np.savez(tmp_path / "train.npz", images=np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    (tmp_path / "prompts.txt").write_text("a red square\n")
    result = runner.invoke(app, ["audit", str(sd_with_checker), "--train", str(tmp_path / "train.npz"),
                                 "--out", str(tmp_path / "run"), "--n", "3", "--steps", "2", "--quiet",
                                 "--prompts", str(tmp_path / "prompts.txt"), "--safety-checker", "flag"])
    assert result.exit_code == 0, result.output
    audit = json.loads((tmp_path / "run" / "audit.json").read_text())
    assert audit["model"]["safety_checker"] == {"flagged": 3, "flagged_seeds": [0, 1, 2]}
    assert audit["model"]["settings"]["safety_checker"] == "flag"
    assert all(f["safety_flagged"] for f in audit["findings"])
    assert np.load(tmp_path / "run" / "samples.npz")["images"].max() > 0
    report = (tmp_path / "run" / "report.html").read_text()
    assert "3 flagged by the pipeline&#39;s safety checker" in report or "3 flagged by the pipeline's safety checker" in report
    result = runner.invoke(app, ["audit", str(sd_with_checker), "--train", str(tmp_path / "train.npz"),
                                 "--out", str(tmp_path / "bad"), "--prompts", str(tmp_path / "prompts.txt"),
                                 "--safety-checker", "on"])
    assert result.exit_code == 2 and "--safety-checker on: expected one of off, flag" in result.stderr
