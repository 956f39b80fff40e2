"""Model adapters beyond the unconditional pipeline: class labels, schedulers, dtypes, the hub cache."""

import json
import re

import numpy as np
import pytest
import torch
from batch_invariance import assert_seed_invariance
from typer.testing import CliRunner

from memaudit.adapters import SamplerOptions, load_model
from memaudit.data import load_image_set
from memaudit.errors import ModelError
from memaudit.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny networks: a second thread only waits


@pytest.fixture(scope="module")
def digits():
    return load_image_set("digits:50")


def test_class_conditional_labels_follow_the_seed(tiny_class_pipeline_dir, digits):
    model = load_model(str(tiny_class_pipeline_dir), digits, SamplerOptions(steps=5, labels="train"))
    seeds = list(range(20))
    labels = model.conditioning(seeds)["labels"]
    assert set(labels) <= set(digits.labels.tolist()) and len(set(labels)) > 3
    assert model.conditioning(seeds[5:8])["labels"] == labels[5:8]  # per seed, not per batch: exact
    noise = model.initial_noise(seeds)  # exact: each seed's own generator
    torch_reference = torch.randn((1, 8, 8), generator=torch.Generator().manual_seed(6))
    assert torch.equal(model.initial_noise(seeds[5:8]), noise[5:8]) and torch.equal(noise[6], torch_reference)
    # exact for one batch shape, within one grey level across batch shapes (CPU kernels round per shape)
    assert_seed_invariance(model, seeds, batch_sizes=(3, 7))
    assert model.settings()["family"] == "class-conditional"


def test_the_label_changes_the_sample(tiny_class_pipeline_dir, digits):
    zero = load_model(str(tiny_class_pipeline_dir), digits, SamplerOptions(steps=5, labels="0")).sample([7], 1)
    nine = load_model(str(tiny_class_pipeline_dir), digits, SamplerOptions(steps=5, labels="9")).sample([7], 1)
    assert np.abs(zero.astype(int) - nine.astype(int)).max() > 10


def test_uniform_labels_cover_the_classes(tiny_class_pipeline_dir, digits):
    model = load_model(str(tiny_class_pipeline_dir), digits, SamplerOptions(steps=5, labels="uniform"))
    assert set(model.conditioning(list(range(200)))["labels"]) == set(range(10))


@pytest.mark.parametrize("labels, message", [
    (None, "class-conditional (10 classes); give --labels"),
    ("10", "--labels 10: out of range; the model has classes 0..9"),
    ("cats", "--labels cats: expected train, uniform or a class index"),
])
def test_bad_labels(tiny_class_pipeline_dir, digits, labels, message):
    with pytest.raises(ModelError, match=re.escape(message)):
        load_model(str(tiny_class_pipeline_dir), digits, SamplerOptions(labels=labels))


def test_train_labels_need_a_labelled_set(tmp_path, tiny_class_pipeline_dir):
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(ModelError, match="has none; use --labels uniform"):
        load_model(str(tiny_class_pipeline_dir), load_image_set(str(tmp_path / "x.npz")), SamplerOptions(labels="train"))


@pytest.mark.parametrize("scheduler", ["euler", "dpm-solver++", "heun", "ddpm"])
def test_swapped_schedulers_sample_deterministically(tiny_pipeline_dir, digits, scheduler):
    model = load_model(str(tiny_pipeline_dir), digits, SamplerOptions(steps=4, scheduler=scheduler))
    first = assert_seed_invariance(model, [1, 2, 3], batch_sizes=(2,))
    assert first.shape == (3, 8, 8, 1) and model.settings()["scheduler"] != "DDIMScheduler"


def test_unknown_scheduler_and_cpu_half_precision(tiny_pipeline_dir, digits):
    with pytest.raises(ModelError, match="valid schedulers are ddim, ddpm, dpm-solver\\+\\+, dpm-solver\\+\\+-sde, euler, euler-ancestral, heun"):
        load_model(str(tiny_pipeline_dir), digits, SamplerOptions(scheduler="lms"))
    with pytest.raises(ModelError, match="--dtype fp16: half precision needs a CUDA device"):
        load_model(str(tiny_pipeline_dir), digits, SamplerOptions(dtype="fp16"))


def test_hub_repo_not_in_cache(tmp_path, monkeypatch, digits):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="hf:someone/model: not in the local Hugging Face cache"):
        load_model("hf:someone/model", digits, SamplerOptions())


def test_class_conditional_audit_through_the_cli(tmp_path, tiny_class_pipeline_dir):
    result = runner.invoke(app, ["audit", str(tiny_class_pipeline_dir), "--train", "digits:50", "--out", str(tmp_path),
                                 "--n", "12", "--steps", "4", "--labels", "train", "--quiet"])
    assert result.exit_code == 0, result.output
    samples = np.load(tmp_path / "samples.npz")
    audit = json.loads((tmp_path / "audit.json").read_text())
    assert samples["labels"].shape == (12,) and audit["model"]["settings"]["labels"] == "train"
    assert audit["findings"][0]["label"] in samples["labels"].tolist()
    result = runner.invoke(app, ["audit", str(tiny_class_pipeline_dir), "--train", "digits:50", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "give --labels" in result.stderr


# --- text-to-image ----------------------------------------------------------------------------


def test_text_to_image_prompts_from_training_captions(tiny_sd_pipeline_dir):
    from memaudit.data import ImageSet

    train = ImageSet(np.zeros((3, 16, 16, 3), np.uint8), ["a", "b", "c"], "captioned",
                     captions=["a red square", "a blue circle", "two lines"])
    model = load_model(str(tiny_sd_pipeline_dir), train, SamplerOptions(steps=3, prompts="train", guidance=3.0))
    assert model.image_shape == (16, 16, 3) and model.settings()["family"] == "text-to-image"
    prompts = model.conditioning(list(range(12)))["prompts"]
    assert set(prompts) == set(train.captions)
    assert_seed_invariance(model, [0, 1, 2], batch_sizes=(2,))


def test_text_to_image_without_prompts_or_captions(tiny_sd_pipeline_dir):
    from memaudit.data import ImageSet

    train = ImageSet(np.zeros((2, 16, 16, 3), np.uint8), ["a", "b"], "plain")
    with pytest.raises(ModelError, match="text-to-image; give --prompts"):
        load_model(str(tiny_sd_pipeline_dir), train, SamplerOptions())
    with pytest.raises(ModelError, match="needs a training set with captions"):
        load_model(str(tiny_sd_pipeline_dir), train, SamplerOptions(prompts="train"))


def test_text_to_image_audit_with_a_prompt_file(tmp_path, tiny_sd_pipeline_dir):
    (tmp_path / "prompts.txt").write_text("a red square\n\na <b>bold</b> circle\n")
    np.savez(tmp_path / "train.npz", images=np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    result = runner.invoke(app, ["audit", str(tiny_sd_pipeline_dir), "--train", str(tmp_path / "train.npz"),
                                 "--out", str(tmp_path / "run"), "--n", "4", "--steps", "2",
                                 "--prompts", str(tmp_path / "prompts.txt"), "--quiet"])
    assert result.exit_code == 0, result.output
    samples = np.load(tmp_path / "run" / "samples.npz")
    assert samples["prompts"].tolist() == ["a red square", "a <b>bold</b> circle"] * 2
    assert "a &lt;b&gt;bold&lt;/b&gt; circle" in (tmp_path / "run" / "report.html").read_text()


def test_dit_style_class_conditional_pipeline(tiny_dit_pipeline_dir):
    from memaudit.data import ImageSet

    train = ImageSet(np.zeros((4, 8, 8, 3), np.uint8), list("abcd"), "labelled", labels=np.array([0, 1, 2, 3]))
    model = load_model(str(tiny_dit_pipeline_dir), train, SamplerOptions(steps=3, labels="train", guidance=1.0))
    assert model.settings()["family"] == "class-conditional" and model.image_shape == (8, 8, 3)
    assert set(model.conditioning(list(range(40)))["labels"]) == {0, 1, 2, 3}
    assert_seed_invariance(model, [0, 1, 2], batch_sizes=(2,))
    with pytest.raises(ModelError, match="out of range; the model has classes 0..999"):
        load_model(str(tiny_dit_pipeline_dir), train, SamplerOptions(labels="1000"))


def test_hub_repo_from_the_local_cache(tmp_path, monkeypatch, tiny_pipeline_dir, digits):
    """The Hugging Face cache layout (models--ORG--NAME/snapshots/REV + refs/main), offline."""
    import shutil

    repo = tmp_path / "models--someone--tiny-ddim"
    shutil.copytree(tiny_pipeline_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("hf:someone/tiny-ddim", digits, SamplerOptions(steps=3))
    local = load_model(str(tiny_pipeline_dir), digits, SamplerOptions(steps=3))
    np.testing.assert_array_equal(model.sample([4, 5], 2), local.sample([4, 5], 2))
