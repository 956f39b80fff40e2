"""The LoRA ground truth (tests/lora_ground_truth.py): a fine-tune that copies its 10 captioned
training images and the base that does not, checked first by diffusers' own per-seed pipeline calls
against a brute-force nn-ratio, then audited end to end with ``--base --lora --prompts train``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lora_ground_truth as gt
from memaudit.cli import app

STEPS, GUIDANCE = 10, 1.0  # DDIM 10 steps without classifier-free guidance: how the fine-tune is audited
SEEDS = [0, 1]


@pytest.fixture(scope="session")
def lora_truth(request, tmp_path_factory) -> gt.GroundTruth:
    """Built once per session, in pytest's cache when it is on (keyed by the builder's settings and source)."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("lora-ground-truth") if cache is not None else tmp_path_factory.mktemp("lora-ground-truth")
    return gt.build(Path(root))


@pytest.fixture(scope="module")
def direct_samples(lora_truth, one_torch_thread):
    """Every member caption x SEEDS, sampled by the pipeline's own call: base, then base + LoRA."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(lora_truth.base, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    captions = [c for c in lora_truth.captions for _ in SEEDS]
    seeds = SEEDS * len(lora_truth.captions)
    base = gt.sample(pipe, captions, seeds, steps=STEPS, guidance=GUIDANCE)
    pipe.load_lora_weights(lora_truth.lora)
    finetune = gt.sample(pipe, captions, seeds, steps=STEPS, guidance=GUIDANCE)
    return {"base": base, "finetune": finetune, "own": np.repeat(np.arange(len(lora_truth.captions)), len(SEEDS))}


def test_the_ground_truth_is_real_and_captioned(lora_truth):
    from memaudit.data import load_image_set

    assert lora_truth.members.shape == (10, gt.PIXELS, gt.PIXELS, 3) and len(set(lora_truth.captions)) == 10
    train = load_image_set(str(lora_truth.captioned))  # NAME.png with its caption in NAME.txt
    assert len(train.images) == 10
    for image, caption in zip(lora_truth.members, lora_truth.captions):  # each member with its own caption
        match = [i for i, img in enumerate(train.images) if np.array_equal(img, image)]
        assert len(match) == 1 and train.captions[match[0]] == caption
    # members are far from every non-member, so a copy's ratio is decided by the copy, not by a look-alike
    a = lora_truth.members.reshape(10, -1).astype(np.float64)
    b = lora_truth.nonmembers.reshape(len(lora_truth.nonmembers), -1).astype(np.float64)
    assert np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).min() > 1000


def test_the_fine_tune_draws_each_captions_image_and_the_base_does_not(lora_truth, direct_samples):
    reference = np.concatenate([lora_truth.members, lora_truth.nonmembers])  # members first: index = caption
    ft_ratio, ft_nearest = gt.nn_ratios(direct_samples["finetune"], reference)
    base_ratio, base_nearest = gt.nn_ratios(direct_samples["base"], reference)
    own = direct_samples["own"]
    assert (ft_nearest == own).mean() >= 0.9, ft_nearest  # the fine-tune draws the image of the caption it is given
    assert (base_nearest == own).mean() <= 0.3, base_nearest  # the base does not (chance: 10%)
    assert (base_ratio < 1 / 3).sum() == 0 and np.median(base_ratio) > 0.8, base_ratio.round(2)
    assert np.median(ft_ratio) < np.median(base_ratio) - 0.2, (ft_ratio.round(2), base_ratio.round(2))


def _neighbors(run: Path) -> list[dict]:
    with open(run / "neighbors.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["space"] == "pixel"]


N_AUDIT = 40


@pytest.fixture(scope="module")
def lora_audit(lora_truth, tmp_path_factory, one_torch_thread) -> Path:
    """memaudit audit BASE --base BASE --lora L.safetensors --train captioned/ --prompts train."""
    out = tmp_path_factory.mktemp("lora-audit") / "run"
    result = CliRunner().invoke(app, [str(a) for a in [
        "audit", lora_truth.base, "--base", lora_truth.base, "--lora", lora_truth.lora, "--train", lora_truth.captioned,
        "--prompts", "train", "--n", N_AUDIT, "--steps", STEPS, "--guidance", GUIDANCE, "--out", out, "--quiet"]])
    assert result.exit_code == 0, result.output
    return out


def test_audit_of_base_versus_fine_tune(lora_truth, lora_audit):
    """Both runs on the same seeds and the training captions, the audit's verdicts equal to a brute-force
    nn-ratio of its own samples, the fine-tune's share above the base's, and the pairs in the report."""
    out = lora_audit
    audit = json.loads((out / "audit.json").read_text())
    section = audit["base_comparison"]
    finetune, base = section["nn_ratio"]["finetune"], section["nn_ratio"]["base"]
    assert finetune["n"] == base["n"] == N_AUDIT
    assert base["fraction"] == 0.0 and finetune["fraction"] > base["fraction"], (finetune, base)
    for share in (finetune, base):
        assert share["ci95"][0] <= share["fraction"] <= share["ci95"][1]

    # the audit's verdicts equal a brute-force nn-ratio of its own samples against the captioned images
    from memaudit.data import load_image_set

    train = load_image_set(str(lora_truth.captioned))
    samples = np.load(out / "samples.npz")
    ratio, _ = gt.nn_ratios(samples["images"], train.images)
    rows = _neighbors(out)
    assert [r["memorized"] == "true" for r in rows] == (ratio < 1 / 3).tolist()
    assert [float(r["ratio"]) for r in rows] == pytest.approx(ratio.tolist(), abs=1e-4)
    assert finetune["fraction"] == pytest.approx((ratio < 1 / 3).mean())
    # prompts are the training captions drawn per seed, the same for the base
    base_samples = np.load(out / "base" / "samples.npz")
    assert set(map(str, samples["prompts"])) <= set(lora_truth.captions)
    assert list(samples["prompts"]) == list(base_samples["prompts"])

    flagged = np.array([r["memorized"] == "true" for r in rows]) | \
        np.array([r["memorized"] == "true" for r in _neighbors(out / "base")])
    pairs = section["pairs"]
    assert sorted(p["sample"] for p in pairs) == np.flatnonzero(flagged).tolist() and pairs
    for pair in pairs:
        assert pair["seed"] == int(samples["seeds"][pair["sample"]])
        assert pair["finetune"]["memorized"] and not pair["base"]["memorized"]
        assert pair["base"]["ratio"] > pair["finetune"]["ratio"]
    page = (out / "report.html").read_text()
    assert 'id="base-pairs"' in page and "Base versus fine-tune" in page


def test_audit_separates_fine_tune_from_base(lora_audit):
    """The Done-when bullet: the fine-tune's ratio well above the base's, intervals apart."""
    section = json.loads((lora_audit / "audit.json").read_text())["base_comparison"]
    finetune, base = section["nn_ratio"]["finetune"], section["nn_ratio"]["base"]
    assert finetune["ci95"][0] > base["ci95"][1], (finetune, base)
    assert section["nn_ratio"]["difference"]["ci95"][0] > 0
