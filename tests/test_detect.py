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
    from memaudit.detect.ground_truth import train_text_to_image

    digits = load_image_set("digits:10")
    return train_text_to_image(digits.images[:5], CAPTIONS[:5], tmp_path_factory.mktemp("t2i") / "pipeline", steps=3)


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
    from memaudit.mia import metrics

    expected = metrics.auc([scores[c] for c in CAPTIONS[:5]], [scores[c] for c in CAPTIONS[5:]])
    assert document["evaluation"]["auc"] == expected
    assert json.loads(result.stdout)["evaluation"]["auc"] == expected
    page = (out / "detect.html").read_text()
    assert "Content-Security-Policy" in page and "https://" not in page


def test_detect_magnitudes_follow_the_definition(memorizing_pipeline):
    """d_t at the first step is ||eps(x_T, prompt) - eps(x_T, "")||_2 at the seed's starting noise."""
    import torch
    from diffusers import DDIMScheduler, DiffusionPipeline

    from memaudit.detect.wen import text_noise_magnitudes

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


@pytest.mark.parametrize("text, message", [("", "holds no prompts"), ("a cat\tmaybe\n", "expected memorized or novel")])
def test_bad_prompt_files_are_one_line_and_exit_2(tmp_path, text, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text(text)
    result = runner.invoke(app, ["detect", "optimal", "--prompts", str(prompts)])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
