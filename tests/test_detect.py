"""Wen et al. (ICLR 2024)'s detector on a tiny text-to-image model built here (locally built CLIP
text encoder and tokenizer): the magnitudes against their definition, the CLI run's AUC against
the per-prompt scores it reports, and bad prompt files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.data import load_image_set

runner = CliRunner()
WORDS = "zero one two three four five six seven eight nine".split()
CAPTIONS = [f"a photo of digit {w}" for w in WORDS]


@pytest.fixture(scope="module")
def memorizing_pipeline(tmp_path_factory):
    """A few training steps only: these tests check the computation, not that the model memorizes."""
    from memaudit.detection.ground_truth import train_text_to_image

    digits = load_image_set("digits:10")
    return train_text_to_image(digits.images[:5], CAPTIONS[:5], tmp_path_factory.mktemp("t2i") / "pipeline", steps=3,
                               autoencoder_steps=3)


def test_detect_run_reports_scores_and_their_auc(tmp_path, memorizing_pipeline):
    prompts = tmp_path / "prompts.txt"
    lines = [f"{c}\tmemorized" for c in CAPTIONS[:5]] + [f"{c}\tnovel" for c in CAPTIONS[5:]]
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "detect"
    result = runner.invoke(app, ["detect", str(memorizing_pipeline), "--prompts", str(prompts), "--out", str(out),
                                 "--steps", "20", "--first-steps", "5", "--generations", "2", "--device", "cpu",
                                 "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads((out / "detect.json").read_text())
    scores = {r["prompt"]: r["score"] for r in document["prompts"]}
    assert len(scores) == 10 and all(np.isfinite(v) and v >= 0 for v in scores.values())
    from memaudit import roc as metrics

    expected = metrics.auc([scores[c] for c in CAPTIONS[:5]], [scores[c] for c in CAPTIONS[5:]])
    assert document["evaluation"]["auc"] == expected
    assert json.loads(result.stdout)["evaluation"]["auc"] == expected
    page = (out / "detect.html").read_text()
    assert "Content-Security-Policy" in page and "https://" not in page
    import memaudit  # the Python door to the same command, kept in memory

    kept = memaudit.detect(memorizing_pipeline, prompts=prompts, steps=20, first_steps=5, generations=2, device="cpu",
                           progress=False)
    assert kept.out is None and "detect.html" in kept.files
    np.testing.assert_allclose([r["score"] for r in kept["prompts"]], [scores[c] for c in CAPTIONS], rtol=1e-5)


def test_detect_ranks_the_captions_a_small_model_memorized_first(tmp_path):
    """The ground truth in small (benchmarks/detect_ground_truth.py trains the fully memorizing
    version): all digits under ordinary captions, five under unique titles duplicated to a third of
    the draws, 600 steps. Wen et al.'s detector scores every memorized title above every novel
    ordinary caption, with a margin (measured: the lowest title scores 1.11 x the highest novel caption)."""
    from memaudit.detection.ground_truth import memorizing_set, train_text_to_image

    digits = load_image_set("digits")
    chosen = memorizing_set(digits.images, digits.labels, n_memorized=5, share=1 / 3, n_novel=10)
    assert len(chosen.images) == len(chosen.captions) and chosen.captions.count(chosen.memorized[0]) > 100
    path = train_text_to_image(chosen.images, chosen.captions, tmp_path / "pipeline", steps=600, autoencoder_steps=150)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"{p}\tmemorized\n" for p in chosen.memorized) + "".join(f"{p}\tnovel\n" for p in chosen.novel))
    result = runner.invoke(app, ["detect", str(path), "--prompts", str(prompts), "--device", "cpu", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    scores = {r["prompt"]: r["score"] for r in document["prompts"]}
    assert document["evaluation"]["auc"] == 1.0
    assert min(scores[p] for p in chosen.memorized) > 1.05 * max(scores[p] for p in chosen.novel)


def test_detect_magnitudes_follow_the_definition(memorizing_pipeline):
    """d_t at the first step is ||eps(x_T, prompt) - eps(x_T, "")||_2 at the seed's starting noise."""
    import torch
    from diffusers import DDIMScheduler, DiffusionPipeline

    from memaudit.detection.wen import text_noise_magnitudes

    pipeline = DiffusionPipeline.from_pretrained(memorizing_pipeline, use_safetensors=True)
    got = text_noise_magnitudes(pipeline, CAPTIONS[:2], steps=10, generations=2, first_steps=2, seed=3)
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(10)
    shape = (pipeline.unet.config.in_channels, pipeline.unet.config.sample_size, pipeline.unet.config.sample_size)
    ids = pipeline.tokenizer([CAPTIONS[1], ""], padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipeline.text_encoder(ids)[0]
        x = torch.randn(shape, generator=torch.Generator().manual_seed(4))[None] * scheduler.init_noise_sigma
        t = scheduler.timesteps[0]
        eps_text = pipeline.unet(x, t, encoder_hidden_states=states[:1]).sample
        eps_empty = pipeline.unet(x, t, encoder_hidden_states=states[1:]).sample
    assert got.shape == (2, 2, 2)
    assert got[1, 1, 0] == pytest.approx(float((eps_text - eps_empty).norm()), rel=1e-4)


def _direct(pipeline, prompt: str, seed: int, steps: int = 10):
    """The U-Net's pieces at the seed's starting noise, computed here without the detectors' code."""
    import torch
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(steps)
    shape = (pipeline.unet.config.in_channels, pipeline.unet.config.sample_size, pipeline.unet.config.sample_size)
    ids = pipeline.tokenizer([prompt, ""], padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipeline.text_encoder(ids)[0]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))[None] * scheduler.init_noise_sigma

    def eps(y, t, which):  # which 0: the prompt, 1: the empty prompt
        return pipeline.unet(y, t, encoder_hidden_states=states[which:which + 1]).sample

    return scheduler, x, eps


def test_hessian_score_difference_norm_follows_its_formula(memorizing_pipeline):
    """Jeon et al.: ||(H_p - H_empty)(s_p - s_empty)|| at x_T with the score s = -eps / sqrt(1 - abar_t);
    here the Hessian-vector products are central differences of the score difference in float64
    along s_p - s_empty, instead of the detector's forward-mode JVP in float32."""
    import torch
    from diffusers import DiffusionPipeline

    from memaudit.detection.jeon import hessian_score_products

    pipeline = DiffusionPipeline.from_pretrained(memorizing_pipeline, use_safetensors=True)
    got = hessian_score_products(pipeline, CAPTIONS[:2], steps=10, generations=2, seed=5)
    pipeline.unet.double()
    pipeline.text_encoder.double()
    scheduler, x, eps = _direct(pipeline, CAPTIONS[1], seed=6)
    x = x.double()
    t = scheduler.timesteps[0]
    scale = float((1 - scheduler.alphas_cumprod[int(t)]).sqrt())

    def difference(y):  # s(y, prompt) - s(y, empty)
        return -(eps(y, t, 0) - eps(y, t, 1)) / scale

    with torch.no_grad():
        delta = difference(x)
        h = 1e-4 / float(delta.norm())
        expected = float(((difference(x + h * delta) - difference(x - h * delta)) / (2 * h)).norm())
    assert got.shape == (2, 2) and expected > 0
    assert got[1, 1] == pytest.approx(expected, rel=1e-3)


def test_norm_plus_alignment_follows_its_formula(memorizing_pipeline):
    """Asthana & Belagiannis: the guidance norm at the first timestep and the per-pixel channel
    cosine of eps_u with eps_p - eps_u at the third-to-last timestep, both at x_T (numpy here)."""
    import torch
    from diffusers import DiffusionPipeline

    from memaudit.detection.asthana import norm_and_alignment, score

    pipeline = DiffusionPipeline.from_pretrained(memorizing_pipeline, use_safetensors=True)
    norms, alignments = norm_and_alignment(pipeline, CAPTIONS[:2], steps=10, generations=2, seed=5)
    scheduler, x, eps = _direct(pipeline, CAPTIONS[0], seed=6)
    first, low = scheduler.timesteps[0], scheduler.timesteps[-3]
    with torch.no_grad():
        norm = float((eps(x, first, 0) - eps(x, first, 1)).norm())
        u, p = (eps(x, low, which)[0].numpy().astype(np.float64) for which in (1, 0))
    g = p - u
    cosine = (u * g).sum(0) / (np.linalg.norm(u, axis=0) * np.linalg.norm(g, axis=0))
    assert norms[0, 1] == pytest.approx(norm, rel=1e-4)
    assert alignments[0, 1] == pytest.approx(cosine.mean(), rel=1e-4, abs=1e-6)
    combined = score(pipeline, CAPTIONS[:2], seed=5, device="cpu", batch_size=3, steps=10, generations=2,
                     gamma_norm=1.0, gamma_alignment=2.0)
    assert combined["score"] == pytest.approx(norms.mean(1) + 2.0 * alignments.mean(1), rel=1e-6)


@pytest.mark.parametrize("args, message", [(["--detector", "nope"], "expected one of text-noise-norm"),
                                           (["--detector", "norm-plus-alignment", "--first-steps", "3"],
                                            "does not take --first-steps")])
def test_detector_choice_and_settings_are_checked(tmp_path, args, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    result = runner.invoke(app, ["detect", "optimal", "--prompts", str(prompts), *args])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("text, message", [("", "holds no prompts"), ("a cat\tmaybe\n", "expected memorized or novel")])
def test_bad_prompt_files_are_one_line_and_exit_2(tmp_path, text, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text(text)
    result = runner.invoke(app, ["detect", "optimal", "--prompts", str(prompts)])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
