"""The Python API with objects: arrays, ImageSets, callables and pipeline objects as inputs, runs
kept in memory, the cache rule for objects, option checking, and the exports of ``memaudit``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest

import memaudit
from memaudit.errors import DataError, InputError, MemauditError, ModelError
from conftest import spaces_without_ids


@pytest.fixture(scope="module")
def train() -> np.ndarray:
    """60 real 8x8 digits, uint8 NHWC."""
    from sklearn.datasets import load_digits

    return np.rint(load_digits().images[:60] * (255.0 / 16.0)).astype(np.uint8)[..., None]


def copies_and_noise(train: np.ndarray):
    """A model that draws training image (seed mod N) for even seeds and seeded noise for odd ones."""
    calls = []

    def sample(seeds):
        calls.append(list(seeds))
        return np.stack([train[s % len(train)] if s % 2 == 0 else
                         np.random.default_rng(s).integers(0, 256, train.shape[1:], dtype=np.uint8) for s in seeds])
    return sample, calls


def brute_force_ratios(samples: np.ndarray, train: np.ndarray) -> np.ndarray:
    """d1/d2 over flattened uint8 pixels, in float64 (Gu et al. 2023's criterion, independently)."""
    distances = np.sqrt(((samples.reshape(len(samples), 1, -1).astype(np.float64)
                          - train.reshape(1, len(train), -1).astype(np.float64)) ** 2).sum(-1))
    nearest = np.sort(distances, axis=1)
    return nearest[:, 0] / nearest[:, 1]


@pytest.fixture
def scratch_tmp(tmp_path, monkeypatch) -> Path:
    """tempfile's folder, watched: runs kept in memory must leave nothing in it."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_callable_and_arrays_give_the_brute_force_ratios_and_leave_nothing_behind(train, scratch_tmp):
    sample, calls = copies_and_noise(train)
    result = memaudit.audit(sample, train=train, n=20, seed=3, batch_size=7, progress=False)
    expected = brute_force_ratios(sample(list(range(3, 23))), train)
    per_sample = result.spaces["pixel"]["per_sample"]
    ratios = np.array([row[per_sample["columns"].index("ratio")] for row in per_sample["rows"]])
    np.testing.assert_allclose(ratios, expected, atol=1e-6)
    assert result.n_samples == 20 and result.memorization_ratio == pytest.approx(np.mean(expected < 1 / 3))
    assert result.memorization_ratio == 0.5  # the ten even seeds are copies
    assert result.headline["memorized"] == 10 and result.criteria["pixel/nn-ratio"]["memorized"] == 10
    assert result.audit["train"]["spec"] == "array 60x8x8x1 uint8"
    assert result.model["spec"] == "<copies_and_noise.<locals>.sample function>"
    np.testing.assert_array_equal(result.seeds, np.arange(3, 23))
    np.testing.assert_array_equal(result.samples[1::2], train[np.arange(4, 24, 2) % 60])  # seeds 4, 6, ...
    assert result.out is None and result.report is None
    assert repr(result) == "AuditResult(memorization_ratio=0.5, memorized=10, n_samples=20, in memory)"
    assert "<html" in result.report_html().lower()
    assert list(scratch_tmp.iterdir()) == []  # the temporary run folder is gone


def test_given_samples_as_array_imageset_or_file_give_the_same_figures(train, tmp_path):
    rng = np.random.default_rng(0)
    samples = np.concatenate([train[:5], rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)])
    np.savez(tmp_path / "samples.npz", images=samples)
    np.savez(tmp_path / "train.npz", images=train)
    from_files = memaudit.audit(train=str(tmp_path / "train.npz"), samples=tmp_path / "samples.npz", progress=False)
    from_array = memaudit.audit(train=train, samples=samples, progress=False)
    as_set = memaudit.ImageSet(images=samples, ids=[f"s{i}" for i in range(10)], spec="my samples")
    from_set = memaudit.audit(train=train, samples=as_set, progress=False)
    for result in (from_array, from_set):
        assert spaces_without_ids(result.spaces) == spaces_without_ids(from_files.spaces)
        # the per-sample table names the same training rows: train[j] for an array, train.npz[j] for the file
        assert [[row[2], row[4]] for row in result.spaces["pixel"]["per_sample"]["rows"]] == \
            [[i.replace("train.npz", "train") for i in (row[2], row[4])] for row in from_files.spaces["pixel"]["per_sample"]["rows"]]
        assert result.audit["train"]["fingerprint"] == from_files.audit["train"]["fingerprint"]  # content-keyed
        assert result.audit["model"]["samples_fingerprint"] == from_files.audit["model"]["samples_fingerprint"]
    assert from_set.audit["model"]["samples"] == "my samples"
    assert from_array.memorization_ratio == 0.5


def test_out_writes_the_run_and_save_copies_a_memory_run(train, tmp_path):
    from memaudit.auditing import render_report
    from memaudit.rundir import read_manifest

    sample, _ = copies_and_noise(train)
    on_disk = memaudit.audit(sample, train=train, n=6, out=tmp_path / "run", progress=False)
    assert on_disk.out == tmp_path / "run" and on_disk.report.is_file()
    assert json.loads((tmp_path / "run" / "audit.json").read_text()) == on_disk.audit
    np.testing.assert_array_equal(on_disk.samples[0], train[0])

    in_memory = memaudit.audit(sample, train=train, n=6, progress=False)
    saved = in_memory.save(tmp_path / "saved")
    assert read_manifest(saved)["state"] == "complete"
    assert render_report(saved).is_file()  # `memaudit report` accepts the folder
    assert json.loads((saved / "audit.json").read_text())["spaces"] == on_disk.spaces
    with pytest.raises(InputError, match="already holds a run"):
        in_memory.save(saved)
    copy = on_disk.save(tmp_path / "copy")  # a run on disk copies too, without its sample cache
    assert (copy / "report.html").read_bytes() == on_disk.report.read_bytes() and not (copy / ".cache").exists()
    comparison = memaudit.compare([on_disk, in_memory, saved], allow_mismatch=True)
    assert [run["memorization_ratio"] for run in comparison["runs"]] == [0.5, 0.5, 0.5]
    assert comparison.out is None and "<svg" in comparison.page_html()


class Fingerprinted:
    """A model object with the adapter signature and its own fingerprint."""

    image_shape = (8, 8, 1)

    def __init__(self, train):
        self.train, self.calls = train, 0

    def fingerprint(self):
        return "copies-v1"

    def sample(self, seeds, batch_size, conditioning=None):
        self.calls += len(seeds)
        return self.train[np.asarray(seeds) % len(self.train)]


def test_objects_without_fingerprint_are_never_reused_from_the_cache(train, tmp_path):
    sample, calls = copies_and_noise(train)
    for resume in (False, True):  # not even on resume
        memaudit.audit(sample, train=train, n=4, out=tmp_path / "run", resume=resume, progress=False)
    assert sum(len(c) for c in calls) == 8
    assert not list((tmp_path / "run" / ".cache" / "samples").iterdir())  # such shards do not pile up

    model = Fingerprinted(train)
    first = memaudit.audit(model, train=train, n=4, out=tmp_path / "fp", progress=False)
    second = memaudit.audit(model, train=train, n=4, out=tmp_path / "fp", progress=False)
    assert model.calls == 4  # its fingerprint keys the shards: the second run reuses them
    assert first.spaces == second.spaces and first.memorization_ratio == 1.0


def test_pipeline_object_samples_as_its_folder_and_is_keyed_by_its_weights(tiny_pipeline_dir, train, one_torch_thread):
    import torch
    from diffusers import DDIMPipeline

    from memaudit.adapters import SamplerOptions, load_model
    from memaudit.adapters.objects import PipelineObjectAdapter
    from memaudit.data import ImageSet

    train_set = ImageSet(images=train, ids=[str(i) for i in range(len(train))], spec="t")
    pipeline = DDIMPipeline.from_pretrained(tiny_pipeline_dir)
    scheduler = pipeline.scheduler
    options = SamplerOptions(steps=3, scheduler="ddpm")
    from_object = PipelineObjectAdapter(pipeline, train_set, options)
    from_folder = load_model(str(tiny_pipeline_dir), train_set, options)
    np.testing.assert_array_equal(from_object.sample([5, 9], 2), from_folder.sample([5, 9], 2))
    assert pipeline.scheduler is scheduler  # the caller's pipeline keeps its own sampler
    assert from_object.fingerprint_trusted and from_object.settings()["scheduler"] == "DDPMScheduler"
    same = PipelineObjectAdapter(DDIMPipeline.from_pretrained(tiny_pipeline_dir), train_set, options)
    assert same.fingerprint() == from_object.fingerprint()
    with torch.no_grad():
        next(pipeline.unet.parameters()).view(-1)[0] += 1e-3
    assert PipelineObjectAdapter(pipeline, train_set, options).fingerprint() != from_object.fingerprint()
    with pytest.raises(ModelError, match="--guidance 2.0 does not apply"):
        memaudit.audit(pipeline, train=train, n=2, guidance=2.0)

    class OwnPipeline(DDIMPipeline):  # code outside diffusers, which the weights' digest cannot see
        pass

    own = PipelineObjectAdapter(OwnPipeline(**pipeline.components), train_set, options)
    assert not own.fingerprint_trusted and not own.reusable


def test_unknown_or_mistyped_options_name_the_option_and_the_valid_ones(train):
    with pytest.raises(InputError, match=r"memaudit.audit: unknown option 'nn' \(did you mean 'n'\?\); valid options are .*batch_size"):
        memaudit.audit(train=train, samples=train, nn=3)
    with pytest.raises(InputError, match=r"option n='10': expected int"):
        memaudit.audit(lambda seeds: train[: len(seeds)], train=train, n="10")
    with pytest.raises(InputError, match=r"option spaces='pixel-4': expected list \(default \[\]\)"):
        memaudit.audit(train=train, samples=train, spaces="pixel-4")
    with pytest.raises(DataError, match=r"--train: expected a path, an ImageSet or a uint8 .* got list"):
        memaudit.audit(train=train.tolist(), samples=train)
    with pytest.raises(InputError, match="memaudit.mia: unknown option 'attack'.*attacks"):
        memaudit.mia("optimal", members=train, nonmembers=train, attack=["loss"])
    with pytest.raises(InputError, match="memaudit.extract: unknown option 'min_cliques'.*min_clique"):
        memaudit.extract(lambda seeds: train[: len(seeds)], n=4, min_cliques=3)
    with pytest.raises(InputError, match="memaudit.emm: unknown option 'epoch'.*epochs"):
        memaudit.emm("digits", epoch=3)
    with pytest.raises(InputError, match="emm retrains on subsets of a training set named by a spec or path"):
        memaudit.emm(train, epochs=1.0)


def test_bad_arrays_and_models_are_one_line_errors(train):
    with pytest.raises(DataError, match=r"--train: the array has dtype float32; expected uint8"):
        memaudit.audit(train=train.astype(np.float32), samples=train)
    with pytest.raises(DataError, match=r"--samples: the array has shape \(5, 1, 8, 8\); expected \(N, H, W, C\)"):
        memaudit.audit(train=train, samples=train[:5].transpose(0, 3, 1, 2))
    with pytest.raises(ModelError, match=r"sample\(\) returned ndarray float64 \(2, 8, 8, 1\); expected a uint8"):
        memaudit.audit(lambda seeds: np.zeros((len(seeds), 8, 8, 1)), train=train, n=2)
    with pytest.raises(ModelError, match="not a model memaudit can sample"):
        memaudit.audit(42, train=train, n=2)
    with pytest.raises(ModelError, match=r"--steps 5 does not apply to a Python callable"):
        memaudit.audit(lambda seeds: train[: len(seeds)], train=train, n=2, steps=5)
    assert issubclass(DataError, MemauditError)


def test_progress_false_is_silent_and_restores_the_setting(train, capsys):
    from memaudit import progress

    progress.set_enabled(True)
    memaudit.audit(lambda seeds: train[np.asarray(seeds) % 60], train=train, n=3, progress=False)
    assert capsys.readouterr().err == ""
    assert progress._enabled is True


def test_extract_takes_a_callable_and_an_array(train, scratch_tmp):
    result = memaudit.extract(lambda seeds: np.repeat(train[7:8], len(seeds), axis=0), n=12, train=train,
                              min_clique=10, progress=False)
    assert result["n_cliques"] == 1 and result["samples_in_cliques"] == 12 and result["n_verified"] == 1
    assert result["cliques"][0]["verification"]["nearest_train_index"] == 7
    assert result["model"]["spec"] == "<test_extract_takes_a_callable_and_an_array.<locals>.<lambda> function>"
    assert "<html" in result.page_html().lower() and list(scratch_tmp.iterdir()) == []


def test_mia_with_a_pipeline_object_scores_as_with_its_folder(tiny_pipeline_dir, tmp_path, one_torch_thread):
    from diffusers import DDIMPipeline

    from memaudit.data import load_image_set

    members = load_image_set("digits:20").images
    settings = dict(attacks=["loss"], limit=8, batch_size=8, progress=False)
    from_object = memaudit.mia(DDIMPipeline.from_pretrained(tiny_pipeline_dir), members=members,
                               nonmembers="digits:20:rest", **settings)
    from_folder = memaudit.mia(str(tiny_pipeline_dir), members="digits:20", nonmembers="digits:20:rest",
                               out=tmp_path / "mia", **settings)
    assert from_object["attacks"]["loss"]["auc"] == from_folder["attacks"]["loss"]["auc"]
    assert from_object["model"]["spec"] == "<DDIMPipeline object>" and from_folder.page.is_file()


def test_exports_are_the_api_functions_and_no_module_shares_their_names():
    import importlib.util
    import inspect

    import memaudit.api

    names = ("audit", "compare", "mia", "extract", "detect", "emm", "index", "dedup")
    # no submodule bears a public function's name: importing one can never replace the function
    assert [name for name in names if importlib.util.find_spec(f"memaudit.{name}") is not None] == []
    for package in ("auditing", "comparison", "membership", "extraction", "detection", "retraining", "trainset", "cli"):
        importlib.import_module(f"memaudit.{package}")
    for name in names:
        function = getattr(memaudit, name)
        assert inspect.isfunction(function) and function is getattr(memaudit.api, name), name
    assert memaudit.AuditResult is memaudit.api.AuditResult
    assert list(inspect.signature(memaudit.compare).parameters) == ["runs", "out", "allow_mismatch"]
    with pytest.raises(InputError, match="compare needs at least two audits"):
        memaudit.compare([])
    assert set(names) <= set(memaudit.__all__)
    assert not Path(memaudit.__file__).with_name("entry.py").exists()


def test_emm_kept_in_memory(scratch_tmp, one_torch_thread):
    result = memaudit.emm("digits", start=4, max_size=4, subset="random", labels="unique", precond="ddpm", extend=0,
                          arch="tiny", width=8, epochs=40.0, batch_size=16, warmup_steps=5, n=24, sample_steps=4,
                          checkpoint_every=10, progress=False)
    point = next(p for p in result["points"] if p["size"] == 4)
    assert point["num_classes"] == 4 and point["n"] == 24
    assert point["memorization_ratio"] == pytest.approx(point["memorized"] / point["n"])
    assert result.out is None and sorted(result.files) == ["emm.html", "emm.json"]
    assert json.loads(result.read_file("emm.json")) == result.document
    # the run folder is gone (torch may leave its own torchinductor_* cache there)
    assert [p.name for p in scratch_tmp.iterdir() if p.name.startswith("memaudit-")] == []


def test_class_conditional_pipeline_object_draws_the_folder_labels_and_samples(tiny_class_pipeline_dir, one_torch_thread):
    from diffusers import DDIMPipeline

    from memaudit.adapters import SamplerOptions, load_model
    from memaudit.adapters.objects import adapt_object
    from memaudit.data import load_image_set

    train_set = load_image_set("digits:20")  # with the digits' classes, for labels="train"
    options = SamplerOptions(steps=2, labels="train")
    from_object = adapt_object(DDIMPipeline.from_pretrained(tiny_class_pipeline_dir), train_set, options)
    from_folder = load_model(str(tiny_class_pipeline_dir), train_set, options)
    seeds = [0, 1, 2, 3]
    assert from_object.conditioning(seeds) == from_folder.conditioning(seeds)
    assert from_object.settings()["family"] == "class-conditional"
    np.testing.assert_array_equal(from_object.sample(seeds, 4), from_folder.sample(seeds, 4))


def test_text_to_image_pipeline_object_samples_as_its_folder(tiny_sd_pipeline_dir, one_torch_thread):
    from diffusers import StableDiffusionPipeline

    from memaudit.adapters import SamplerOptions, load_model
    from memaudit.adapters.objects import adapt_object, weights_digest
    from memaudit.data import ImageSet

    captions = ["a red square", "a blue circle", "a green line"]
    train_set = ImageSet(images=np.zeros((3, 16, 16, 3), np.uint8), ids=["a", "b", "c"], spec="t", captions=captions)
    options = SamplerOptions(steps=2, prompts="train", guidance=3.0)
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_sd_pipeline_dir)
    from_object = adapt_object(pipeline, train_set, options)
    from_folder = load_model(str(tiny_sd_pipeline_dir), train_set, options)
    assert from_object.fingerprint_trusted and from_object.settings()["family"] == "text-to-image"
    assert from_object.conditioning([0, 1]) == from_folder.conditioning([0, 1])
    np.testing.assert_array_equal(from_object.sample([0, 1], 2), from_folder.sample([0, 1], 2))
    # the text encoder's weights and the tokenizer's vocabulary are part of the key
    before = weights_digest(pipeline)
    pipeline.tokenizer.add_tokens(["<new-token>"])
    assert weights_digest(pipeline) != before
