"""Today's text-to-image families (adapters.text_to_image_families): the settings each pipeline's
call resolves internally are recorded, equal what the pipeline itself uses, and change the samples;
options a family cannot use are refused in one line. (Seed-for-seed equality with each pipeline's
own call is tests/test_conformance.py's ``test_family_conformance``.)"""

from __future__ import annotations

import functools
import json
import shutil

import numpy as np
import pytest
import torch

from memaudit.adapters import SamplerOptions, load_model
from memaudit.data import ImageSet
from memaudit.errors import ModelError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CAPTIONED = ImageSet(np.zeros((2, 16, 16, 3), np.uint8), ["a", "b"], "set", captions=["a red square", "two lines"])


def load(folder, **options):
    return load_model(str(folder), CAPTIONED, SamplerOptions(prompts="train", **options))


def pipeline_of(folder):
    from diffusers import DiffusionPipeline

    pipeline = DiffusionPipeline.from_pretrained(folder)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def mu_seen(pipeline, **call) -> list:
    """The ``mu`` the pipeline's own call hands its scheduler (spied on set_timesteps)."""
    seen, set_timesteps = [], pipeline.scheduler.set_timesteps

    @functools.wraps(set_timesteps)  # the pipeline reads its signature (custom sigmas)
    def spy(*args, **kwargs):
        seen.append(kwargs.get("mu"))
        return set_timesteps(*args, **kwargs)

    pipeline.scheduler.set_timesteps = spy
    pipeline(prompt="a red square", generator=torch.Generator().manual_seed(0), output_type="np", **call)
    return seen


def test_sdxl_records_its_size_and_crop_conditioning_and_they_matter(family_pipeline_dir):
    folder = family_pipeline_dir("sdxl")
    model = load(folder, steps=2)
    recorded = model.settings()["text_to_image"]
    assert recorded["name"] == "stable-diffusion-xl"
    assert recorded["call"] | {"guidance_rescale": 0.0} == {
        "height": 16, "width": 16, "original_size": [16, 16], "crops_coords_top_left": [0, 0], "target_size": [16, 16],
        "guidance_rescale": 0.0}
    assert recorded["derived"]["refiner"].startswith("not supported")
    assert model.settings()["guidance"] == 5.0  # the pipeline's default, resolved
    json.dumps(model.settings())  # JSON-ready (provenance, fingerprints)
    # the micro-conditioning is not decoration: another original_size changes the pixels
    pipeline = pipeline_of(folder)
    draw = {"prompt": "a red square", "num_inference_steps": 2, "output_type": "np"}
    default = pipeline(generator=torch.Generator().manual_seed(0), **draw).images
    other = pipeline(generator=torch.Generator().manual_seed(0), original_size=(4, 4), **draw).images
    assert np.abs(default - other).max() * 255 > 1


def test_flux_records_the_mu_its_pipeline_computes(family_pipeline_dir):
    folder = family_pipeline_dir("flux")
    recorded = load(folder, steps=1).settings()["text_to_image"]
    assert recorded["derived"]["use_dynamic_shifting"] is True
    assert recorded["guidance"].startswith("distilled guidance")
    seen = mu_seen(pipeline_of(folder), num_inference_steps=1)
    assert seen == [pytest.approx(recorded["derived"]["mu"], abs=1e-12)]
    # 128x128 pixels, one-block VAE, 2x2 packing: 4096 tokens, the line's top end (max_shift 1.15)
    assert recorded["derived"]["image_seq_len"] == 4096 and recorded["derived"]["mu"] == pytest.approx(1.15)


def test_sd3_static_shift_and_dynamic_mu_both_recorded_and_equal_to_the_pipeline(family_pipeline_dir, tmp_path):
    folder = family_pipeline_dir("sd3")
    static = load(folder, steps=2).settings()["text_to_image"]["derived"]
    assert static["shift"] == 3.0 and static["mu"] is None and static["t5"] is True
    dynamic_folder = shutil.copytree(folder, tmp_path / "sd3-dynamic")
    config_file = dynamic_folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "use_dynamic_shifting": True}))
    model = load(dynamic_folder, steps=2, guidance=2.0)
    derived = model.settings()["text_to_image"]["derived"]
    assert derived["shift"] is None and derived["image_seq_len"] == 64  # 8x8 latents, patch 1
    assert mu_seen(pipeline_of(dynamic_folder), num_inference_steps=2) == [pytest.approx(derived["mu"], abs=1e-12)]
    # memaudit passes its mu explicitly, and the samples still equal the pipeline's own call
    reference = pipeline_of(dynamic_folder)(prompt=model.conditioning([7])["prompts"], num_inference_steps=2,
                                            guidance_scale=2.0, generator=torch.Generator().manual_seed(7),
                                            output_type="np").images
    from memaudit.adapters.base import to_uint8

    np.testing.assert_array_equal(model.sample([7], batch_size=1), to_uint8(np.asarray(reference, np.float64)))
    assert model.fingerprint() != load(folder, steps=2, guidance=2.0).fingerprint()


def test_pixart_records_its_bins_and_caption_cleaning(family_pipeline_dir):
    recorded = load(family_pipeline_dir("pixart-sigma"), steps=2).settings()["text_to_image"]
    assert recorded["call"]["use_resolution_binning"] is False
    assert recorded["derived"]["resolution_binning"] == "off: sample size 8 has no resolution bin"
    assert recorded["call"]["max_sequence_length"] == 300 and recorded["call"]["clean_caption"] in (True, False)


def test_lcm_records_its_schedule_and_guidance_embedding(family_pipeline_dir):
    model = load(family_pipeline_dir("lcm"))
    settings = model.settings()
    assert settings["steps"] == 4 and settings["guidance"] == 8.5  # the pipeline's defaults
    assert settings["text_to_image"]["call"]["original_inference_steps"] == 50
    assert settings["text_to_image"]["guidance"].startswith("LCM guidance embedding")


@pytest.mark.parametrize("pipeline, options, message", [
    ("flux-schnell", {"guidance": 2.0}, "--guidance 2.0 does not apply to a text-to-image FluxPipeline"),
    ("sd3", {"scheduler": "ddim"}, "--scheduler ddim does not apply to stable-diffusion-3: it samples by flow matching"),
    ("flux", {"scheduler": "euler"}, "--scheduler euler does not apply to flux"),
    ("lcm", {"scheduler": "ddim"}, "--scheduler ddim does not apply to latent-consistency"),
    ("lcm", {"steps": 60}, "--steps 60: the LCM scheduler takes at most its original_inference_steps (50)"),
    ("sdxl", {"steps": 51, "scheduler": "lcm"}, "--steps 51: the LCM scheduler takes at most"),
    ("sdxl-refiner", {}, "StableDiffusionXLImg2ImgPipeline is an image-to-image pipeline (the SDXL refiner)"),
])
def test_options_a_family_cannot_use_are_refused_in_one_line(family_pipeline_dir, pipeline, options, message):
    with pytest.raises(ModelError) as error:
        load(family_pipeline_dir(pipeline), **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_flux_schnell_samples_without_guidance_and_knows_its_size(family_pipeline_dir):
    model = load(family_pipeline_dir("flux-schnell"), steps=1)
    assert model.settings()["guidance"] is None and model.settings()["text_to_image"]["guidance"] is None
    assert model.image_shape == (128, 128, 3)  # known before sampling, though the transformer has no sample_size


def test_sana_samples_at_its_own_size_and_records_its_instruction(family_pipeline_dir):
    model = load(family_pipeline_dir("sana"), steps=2)
    recorded = model.settings()["text_to_image"]
    assert model.image_shape == (32, 32, 3) and recorded["call"]["height"] == 32  # not the call's 1024
    assert recorded["derived"]["complex_human_instruction"].startswith("the call's default, ")
    assert recorded["derived"]["resolution_binning"] == "off: sample size 8 has no resolution bin"


def test_cli_audit_records_the_family_and_refuses_in_one_line(family_pipeline_dir, tmp_path):
    from typer.testing import CliRunner

    from memaudit.cli import app

    runner = CliRunner()
    (tmp_path / "prompts.txt").write_text("a red square\ntwo lines\n")
    np.savez(tmp_path / "train.npz", images=np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    common = ["--train", str(tmp_path / "train.npz"), "--n", "2", "--prompts", str(tmp_path / "prompts.txt"), "--quiet"]
    result = runner.invoke(app, ["audit", str(family_pipeline_dir("sd3")), "--out", str(tmp_path / "run"), "--steps", "2",
                                 *common])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run" / "audit.json").read_text())["model"]["settings"]
    assert settings["text_to_image"]["name"] == "stable-diffusion-3" and settings["text_to_image"]["derived"]["shift"] == 3.0
    refused = runner.invoke(app, ["audit", str(family_pipeline_dir("flux-schnell")), "--out", str(tmp_path / "run2"),
                                  "--guidance", "2", *common])
    assert refused.exit_code == 2 and "--guidance 2.0 does not apply" in refused.output
    assert "Traceback" not in refused.output
