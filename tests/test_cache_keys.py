"""Sample caches cannot go stale: a rerun into the same --out reuses a shard only when everything
its images depend on is unchanged (weights, seeds, the labels or prompts actually drawn, what a
user factory loads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.adapters import SamplerOptions, load_model
from memaudit.auditing import run_audit
from memaudit.cli import app
from memaudit.auditing.config import AuditConfig
from memaudit.data import load_image_set
from memaudit.sampling import generate_samples

runner = CliRunner()


def _audit(out: Path, **settings):
    return run_audit(AuditConfig(out=out, **settings))


def test_class_conditional_samples_follow_the_labels_drawn(tmp_path, tiny_class_pipeline_dir):
    """--labels train draws each seed's label from the training set: another training subset draws
    other labels, so the samples of the first run must not be reused with the second's labels."""
    common = dict(model=str(tiny_class_pipeline_dir), n=40, steps=3, labels="train", batch_size=40)
    _audit(tmp_path / "run", train="digits", **common)
    first = np.load(tmp_path / "run" / "samples.npz")
    _audit(tmp_path / "run", train="digits:500", **common)
    rerun = np.load(tmp_path / "run" / "samples.npz")
    _audit(tmp_path / "fresh", train="digits:500", **common)
    fresh = np.load(tmp_path / "fresh" / "samples.npz")
    assert (first["labels"] != fresh["labels"]).sum() > 10  # the case matters: the labels did change
    np.testing.assert_array_equal(rerun["labels"], fresh["labels"])
    np.testing.assert_array_equal(rerun["images"], fresh["images"])  # generated with those labels


def test_prompt_file_edits_are_not_served_from_the_cache(tmp_path, tiny_sd_pipeline_dir):
    prompts = tmp_path / "prompts.txt"
    np.savez(tmp_path / "train.npz", images=np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    common = dict(model=str(tiny_sd_pipeline_dir), train=str(tmp_path / "train.npz"), n=2, steps=2,
                  prompts=str(prompts), batch_size=2)
    prompts.write_text("a red square\na blue circle\n")
    _audit(tmp_path / "run", **common)
    before = np.load(tmp_path / "run" / "samples.npz")["images"]
    prompts.write_text("two green lines\na yellow star\n")
    _audit(tmp_path / "run", **common)
    rerun = np.load(tmp_path / "run" / "samples.npz")
    _audit(tmp_path / "fresh", **common)
    fresh = np.load(tmp_path / "fresh" / "samples.npz")
    assert rerun["prompts"].tolist() == ["two green lines", "a yellow star"]
    assert not np.array_equal(before, fresh["images"])
    np.testing.assert_array_equal(rerun["images"], fresh["images"])


class _Counting:
    def __init__(self, inner):
        self.inner, self.sampled = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def sample(self, seeds, batch_size, conditioning=None):
        self.sampled.extend(seeds)
        return self.inner.sample(seeds, batch_size)


def test_a_shard_is_keyed_by_its_conditioning(tmp_path):
    """The same model and seeds with other labels drawn: every shard is generated again."""
    model = load_model("optimal", load_image_set("digits:50"), SamplerOptions(steps=4))
    labelled = _Counting(model)
    labelled.conditioning = lambda seeds: {"labels": [s % 3 for s in seeds]}
    generate_samples(labelled, 0, 20, 8, tmp_path, shard_size=8)
    same = _Counting(model)
    same.conditioning = lambda seeds: {"labels": [s % 3 for s in seeds]}
    generate_samples(same, 0, 20, 8, tmp_path, shard_size=8)
    assert same.sampled == []
    other = _Counting(model)
    other.conditioning = lambda seeds: {"labels": [s % 3 if s < 8 else 7 for s in seeds]}
    generate_samples(other, 0, 20, 8, tmp_path, shard_size=8)
    assert other.sampled == list(range(8, 20))  # shard 0 drew the same labels; shards 1 and 2 did not


FACTORY = '''
import numpy as np

class Model:
    def __init__(self, mean):
        self.mean = mean

    def sample(self, seeds, batch_size, conditioning=None):
        noise = [np.random.default_rng(int(s)).normal(0, 8, self.mean.shape) for s in seeds]
        return np.clip(np.rint(self.mean + np.array(noise)), 0, 255).astype(np.uint8)

def build(weights="{weights}"):
    return Model(np.load(weights))

def build_hidden():
    return Model(np.load("{weights}"))
'''


@pytest.fixture()
def user_model(tmp_path):
    weights = tmp_path / "weights.npy"
    factory = tmp_path / "factory.py"
    factory.write_text(FACTORY.format(weights=weights))
    return factory, weights


def _ratio_and_images(out):
    return (load_json(out / "audit.json")["memorization_ratio"], np.load(out / "samples.npz")["images"])


def load_json(path):
    import json

    return json.loads(Path(path).read_text())


def test_user_factory_weights_file_is_in_the_key(tmp_path, user_model):
    """The factory file is unchanged, the weights file its argument names changed: fresh samples."""
    factory, weights = user_model
    train = load_image_set("digits:50").images
    weights.write_bytes(b"")
    np.save(weights, np.zeros((8, 8, 1)))  # a model far from every digit
    common = dict(model=f"{factory}:build", train="digits:50", n=20, batch_size=20)
    _audit(tmp_path / "run", **common)
    stale_ratio, _ = _ratio_and_images(tmp_path / "run")
    np.save(weights, train[3].astype(np.float64))  # "retrained": now it copies digit 3
    _audit(tmp_path / "run", **common)
    _audit(tmp_path / "fresh", **common)
    ratio, images = _ratio_and_images(tmp_path / "run")
    fresh_ratio, fresh_images = _ratio_and_images(tmp_path / "fresh")
    assert stale_ratio < fresh_ratio
    assert ratio == fresh_ratio
    np.testing.assert_array_equal(images, fresh_images)


def test_user_model_without_fingerprint_is_not_reused_without_resume(tmp_path, user_model):
    """What build_hidden loads is invisible to memaudit: such samples are never reused silently;
    --resume reuses them (the user's explicit choice), a note says which happened."""
    factory, weights = user_model
    np.save(weights, np.zeros((8, 8, 1)))
    args = ["audit", f"{factory}:build_hidden", "--train", "digits:50", "--out", str(tmp_path / "run"),
            "--n", "20", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    first = np.load(tmp_path / "run" / "samples.npz")["images"]
    np.save(weights, np.full((8, 8, 1), 200.0))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "defines no fingerprint(), so samples of earlier runs" in result.stderr
    assert len([line for line in result.stderr.splitlines() if "note:" in line]) == 1
    regenerated = np.load(tmp_path / "run" / "samples.npz")["images"]
    assert regenerated.mean() > first.mean() + 100
    np.save(weights, np.zeros((8, 8, 1)))
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0 and "note:" not in result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "samples.npz")["images"], regenerated)  # reused on request
