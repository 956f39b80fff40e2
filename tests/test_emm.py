"""memaudit emm end to end on the real digits: a tiny search and sweep, resuming, the trained
pipelines through the ordinary audit, emm.json and emm.html, and bad input."""

import json

import numpy as np
import pytest
from test_cli import assert_one_line_error, run


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_torch_thread):
    pass

# a very small, short recipe: each model trains for a few dozen steps on 8x8 digits
TINY = ["--precond", "ddpm", "--extend", "0", "--arch", "tiny", "--width", "8", "--epochs", "40", "--batch-size", "16", "--warmup", "5",
        "--n", "24", "--sample-steps", "4", "--checkpoint-every", "10", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """One sweep over labels (none and random:10) with two sizes each, so both model kinds are trained."""
    out = tmp_path_factory.mktemp("emm") / "run"
    result = run("emm", "--train", "digits", "--out", out, "--start", 10, "--max-size", 20, "--tolerance", 5,
                 "--grid", "10,20", "--snapshots", 2, "--sweep", "labels=none,random:10", *TINY)
    assert result.exit_code == 0, result.output
    return out, result


def test_tiny_search_writes_emm_json_and_page(sweep_run):
    out, result = sweep_run
    emm = json.loads((out / "emm.json").read_text())
    assert emm["epsilon"] == 0.1 and emm["threshold"] == pytest.approx(0.9)
    assert emm["sweep"] == {"key": "labels", "values": ["none", "random:10"]}
    assert [s["label"] for s in emm["searches"]] == ["labels=none", "labels=random:10"]
    for search in emm["searches"]:
        assert search["grid"]["unit"] == 10 and search["grid"]["min_size"] == 10
        assert [s["size"] for s in search["sizes"]] == [10, 20]
        bracket = search["emm"]
        # the bracket agrees with the sizes' decisions
        passed = [s["size"] for s in search["sizes"] if s["passed"]]
        failed = [s["size"] for s in search["sizes"] if not s["passed"]]
        assert bracket["lower"] == (max(passed) if passed and (not failed or max(passed) < min(failed)) else bracket["lower"])
        assert bracket["upper"] in (None, *failed)
        assert search["monotone"] == (search["sizes"][1]["mean"] <= search["sizes"][0]["mean"])
        for point in search["points"]:
            assert set(point) >= {"size", "seed", "memorization_ratio", "ci95", "model", "audit", "train_set"}
            assert point["ci95"][0] <= point["memorization_ratio"] <= point["ci95"][1]
            assert point["n"] == 24 and len(point["snapshots"]) == 2
            # the highest ratio over the snapshots counts
            assert point["memorization_ratio"] == max(s["memorization_ratio"] for s in point["snapshots"])
            assert (out / point["model"] / "model_index.json").is_file()
            audit = json.loads((out / point["audit"] / "audit.json").read_text())
            assert audit["memorization_ratio"] == point["memorization_ratio"]
    labelled = emm["searches"][1]["points"][0]
    assert labelled["num_classes"] == 10
    html = (out / "emm.html").read_text()
    assert "Effective Model Memorization" in html and "labels=random:10" in html and "<svg" in html
    assert "http://" not in html and "https://" not in html
    assert "labels=none: " in result.stdout and "ratio by |D|" in result.stdout and "None" not in result.stdout


def test_rerun_skips_finished_points(sweep_run, monkeypatch):
    out, _ = sweep_run
    before = json.loads((out / "emm.json").read_text())
    import memaudit.retraining.recipe

    monkeypatch.setattr(memaudit.retraining.recipe, "train_model", lambda *a, **k: pytest.fail("a finished point was trained again"))
    result = run("emm", "--train", "digits", "--out", out, "--start", 10, "--max-size", 20, "--tolerance", 5,
                 "--grid", "10,20", "--snapshots", 2, "--sweep", "labels=none,random:10", *TINY)
    assert result.exit_code == 0, result.output
    after = json.loads((out / "emm.json").read_text())
    assert after["searches"] == before["searches"]


def test_trained_pipelines_load_with_the_ordinary_audit(sweep_run, tmp_path):
    out, _ = sweep_run
    emm = json.loads((out / "emm.json").read_text())
    plain, labelled = emm["searches"][0]["points"][0], emm["searches"][1]["points"][0]
    result = run("audit", out / plain["model"], "--train", "digits:10", "--out", tmp_path / "a", "--n", 8,
                 "--steps", 4, "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["settings"]["pipeline"] == "DDIMPipeline"
    # the class-conditional one, with the labels it was trained on (saved beside it)
    result = run("audit", out / labelled["model"], "--train", out / labelled["train_set"], "--labels", "train",
                 "--out", tmp_path / "b", "--n", 8, "--steps", 4, "--quiet", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["settings"]["family"] == "class-conditional"
    subset = np.load(out / labelled["train_set"])
    assert subset["images"].shape == (10, 8, 8, 1) and subset["labels"].shape == (10,)


def test_emm_page_escapes_and_stays_offline(sweep_run, tmp_path, visit):
    from memaudit.reports import write_emm_page

    out, _ = sweep_run
    emm = json.loads((out / "emm.json").read_text())
    emm["searches"][0]["label"] = emm["searches"][0]["value"] = '<img src="https://evil.example/x.png">'
    emm["provenance"]["command"] = "<script>alert(1)</script>"
    (tmp_path / "emm.json").write_text(json.dumps(emm))
    page = write_emm_page(tmp_path)
    html = page.read_text()
    assert "<script>alert(1)" not in html and '<img src="https://evil' not in html
    opened = visit(page)
    assert opened.external_requests() == [] and opened.errors == [] and opened.dialogs == []
    assert opened.page.locator("table.sortable tbody tr").count() == len(emm["searches"][0]["points"]) * 2


def test_labels_unique_and_random_subsets(tmp_path):
    result = run("emm", "--train", "digits", "--out", tmp_path, "--start", 4, "--max-size", 4, "--subset", "random",
                 "--labels", "unique", *TINY)
    assert result.exit_code == 0, result.output
    emm = json.loads((tmp_path / "emm.json").read_text())
    point = next(p for p in emm["points"] if p["size"] == 4)
    assert emm["searches"][0]["grid"]["unit"] == 1 and point["num_classes"] == 4
    subset = np.load(tmp_path / point["train_set"])
    assert subset["labels"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("args, fragments", [
    (["--arch", "huge"], ["--arch huge", "tiny, small, ddpmpp-32"]),
    (["--labels", "random"], ["--labels random", "none, true, random:C or unique"]),
    (["--labels", "random:x"], ["--labels random:x", "random:C"]),
    (["--labels", "all"], ["--labels all", "none, true, random:C or unique"]),
    (["--sweep", "colour=1,2"], ["--sweep colour=1,2", "unknown key 'colour'", "width"]),
    (["--sweep", "width=8,x"], ["'x' is not a valid value for width"]),
    (["--sweep", "width="], ["at least one value"]),
    (["--max-size", "5000"], ["--max-size 5000", "1797 images"]),
    (["--start", "2000"], ["--start 2000"]),
    (["--start", "15"], ["--start 15", "multiple of the 10 classes"]),
    (["--grid", "10,x"], ["--grid 10,x"]),
    (["--grid", "3000"], ["--grid 3000"]),
    (["--subset", "first"], ["--subset first", "balanced, random"]),
    (["--parallel", "mpi"], ["--parallel mpi", "points, ddp"]),
    (["--epsilon", "1.5"], ["--epsilon 1.5"]),
    (["--seeds", "0"], ["--seeds 0"]),
    (["--epochs", "0"], ["--epochs 0"]),
    (["--threads", "0"], ["--threads 0", "at least 1"]),
    (["--workers", "0"], ["--workers 0", "at least 1"]),
    (["--relative-tolerance", "0.8"], ["--relative-tolerance 0.8", "at least 1"]),
    (["--attention", "x"], ["--attention x"]),
    (["--arch", "ddpmpp-32", "--precond", "ddpm", "--resolution", "12"], ["divisible by 8", "--resolution"]),
    (["--arch", "ddpmpp-32"], ["--arch ddpmpp-32 --precond edm", "ddpm only"]),
])
def test_bad_input_is_one_line(tmp_path, args, fragments):
    # a short recipe first, so that a check that failed to fire costs seconds, not a long training
    result = run("emm", "--train", "digits", "--out", tmp_path / "run", "--epochs", "1", "--n", "2", *args, "--quiet")
    assert_one_line_error(result, *fragments)


def test_a_set_without_labels_needs_random_subsets(tmp_path):
    from memaudit.data import load_image_set

    np.savez(tmp_path / "plain.npz", images=load_image_set("digits:20").images)
    result = run("emm", "--train", tmp_path / "plain.npz", "--out", tmp_path / "run", "--epochs", "1", "--quiet")
    assert_one_line_error(result, "class-balanced subsets need class labels", "--subset random")
    result = run("emm", "--train", tmp_path / "plain.npz", "--out", tmp_path / "run", "--subset", "random",
                 "--labels", "true", "--epochs", "1", "--quiet")
    assert_one_line_error(result, "--labels true", "no class labels")


def test_an_interrupted_point_resumes_to_the_same_result(sweep_run, tmp_path, monkeypatch):
    """A training stopped mid-way (after checkpoints at steps 10 and 20 of 25) leaves a checkpoint and
    no point; the rerun resumes from it and gives the same weights and ratio as the uninterrupted run."""
    import memaudit.retraining.recipe
    from memaudit.retraining.training import train_model as train_ddpm
    from safetensors.numpy import load_file

    class Stop(Exception):
        pass

    def stop_at_step_22(*args, **kwargs):
        return train_ddpm(*args, **kwargs, on_step=lambda step: (_ for _ in ()).throw(Stop) if step == 22 else None)

    args = ["emm", "--train", "digits", "--out", tmp_path, "--start", 10, "--max-size", 10, "--snapshots", 2, *TINY]
    monkeypatch.setattr(memaudit.retraining.recipe, "train_model", stop_at_step_22)
    stopped = run(*args)
    assert isinstance(stopped.exception, Stop)
    [folder] = (tmp_path / "points").iterdir()
    assert (folder / "checkpoint.pt").is_file() and not (folder / "point.json").exists()

    steps = []
    monkeypatch.setattr(memaudit.retraining.recipe, "train_model", lambda *a, **k: train_ddpm(*a, **k, on_step=steps.append))
    resumed = run(*args)
    assert resumed.exit_code == 0, resumed.output
    assert steps == [21, 22, 23, 24, 25]  # only the steps after the last checkpoint are trained again
    point = json.loads((tmp_path / "emm.json").read_text())["points"][0]
    out, _ = sweep_run
    reference = json.loads((out / "emm.json").read_text())["searches"][0]["points"][0]  # labels=none, |D| = 10
    assert reference["size"] == point["size"] == 10
    assert point["memorization_ratio"] == reference["memorization_ratio"]
    assert [s["memorization_ratio"] for s in point["snapshots"]] == [s["memorization_ratio"] for s in reference["snapshots"]]
    for ours, theirs in zip(point["snapshots"], reference["snapshots"]):
        a = load_file(tmp_path / ours["model"] / "unet" / "diffusion_pytorch_model.safetensors")
        b = load_file(out / theirs["model"] / "unet" / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_non_monotone_ratios_are_reported_by_the_command(tmp_path, monkeypatch):
    """A measured curve that rises with |D| (20 memorizes more than 10) is flagged in the output,
    emm.json and emm.html; the bracket is still the search's."""
    import memaudit.retraining.run
    from memaudit.retraining.search import Point

    ratios = {10: 0.92, 20: 0.97, 40: 0.95, 80: 0.2, 60: 0.5, 50: 0.91}
    measured = []

    def fake(recipe, size, seed, stop_at=None):
        measured.append(size)
        return Point(size, seed, ratios[size], memorized=round(ratios[size] * 100), n=100, info={"ci95": [0.0, 1.0]})

    monkeypatch.setattr(memaudit.retraining.run, "measure_point", fake)
    result = run("emm", "--train", "digits", "--out", tmp_path, "--start", 10, "--max-size", 80, *TINY)
    assert result.exit_code == 0, result.output
    assert measured == [10, 20, 40, 80, 60, 50]  # doubling, then bisection of [40, 80) down to the 10 classes
    emm = json.loads((tmp_path / "emm.json").read_text())
    assert {k: emm["emm"][k] for k in ("lower", "upper", "status")} == {"lower": 50, "upper": 60, "status": "bracketed"}
    search = emm["searches"][0]
    assert not search["monotone"]
    assert {(v["smaller"], v["larger"]) for v in search["violations"]} == {(10, 20), (10, 40)}
    assert "not monotone" in result.stdout
    assert "monotone</th>" in (tmp_path / "emm.html").read_text()


def test_default_search_starts_small_on_one_thread_and_restores_threads(tmp_path, monkeypatch):
    """Without --start the search begins at 2 images per class (the cheapest points) and doubles;
    points train on --threads (default 1) and torch's thread count is restored afterwards."""
    import torch

    import memaudit.retraining.run
    from memaudit.retraining.search import Point

    ratios = {20: 1.0, 40: 0.95, 80: 0.5, 60: 0.8, 50: 0.92}
    measured, threads = [], []

    def fake(recipe, size, seed, stop_at=None):
        measured.append(size)
        threads.append(torch.get_num_threads())
        return Point(size, seed, ratios[size], memorized=round(ratios[size] * 250), n=250, info={"ci95": [0.0, 1.0]})

    monkeypatch.setattr(memaudit.retraining.run, "measure_point", fake)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = run("emm", "--train", "digits", "--out", tmp_path / "a", "--workers", "1", "--quiet")
        assert result.exit_code == 0, result.output
        assert measured == [20, 40, 80, 60, 50] and set(threads) == {1}
        assert torch.get_num_threads() == 2
        emm = json.loads((tmp_path / "a" / "emm.json").read_text())
        assert {k: emm["emm"][k] for k in ("lower", "upper", "status")} == {"lower": 50, "upper": 60,
                                                                           "status": "bracketed"}
        assert emm["searches"][0]["grid"]["start"] == 20 and emm["searches"][0]["settings"]["n_samples"] == 250
        threads.clear()
        assert run("emm", "--train", "digits", "--out", tmp_path / "b", "--threads", "2", "--workers", "1",
                   "--quiet").exit_code == 0
        assert set(threads) == {2}
    finally:
        torch.set_num_threads(before)


EDM_TINY = ["--arch", "tiny", "--width", "8", "--epochs", "60", "--batch-size", "16", "--warmup", "5", "--n", "24",
            "--sample-steps", "3", "--checkpoint-every", "10", "--snapshots", "2", "--quiet"]


@pytest.mark.parametrize("precond", ["edm", "vp"])
def test_edm_preconditioned_points_are_denoiser_folders_that_audit_loads_without_trust(tmp_path, precond):
    """--precond edm|vp: each snapshot is a safetensors + JSON folder, audited with EDM's Heun sampler;
    `memaudit audit` loads it as it is (no --trust-checkpoint) and reproduces the point's ratio."""
    out = tmp_path / "run"
    result = run("emm", "--train", "digits", "--out", out, "--start", 10, "--max-size", 10, "--precond", precond,
                 "--extend", 1, "--converge-tolerance", 0.0, "--labels", "random:3", *EDM_TINY)
    assert result.exit_code == 0, result.output
    emm = json.loads((out / "emm.json").read_text())
    settings = emm["searches"][0]["settings"]
    assert settings["precond"] == precond and settings["sampler"] == "edm-heun" and settings["sample_steps"] == 3
    assert settings["extend"] == 1 and settings["time_embedding"] == "positional" and settings["skips"] is None
    [point] = emm["points"]
    steps = [s["step"] for s in point["snapshots"]]
    # 60 epochs x 10 images / 16 = 38 steps, snapshots every 19; extended once while still rising
    assert steps == ([19, 38] if point["extensions"] == 0 else [19, 38, 57, 76])
    assert point["converged"] in (True, False) and (point["extensions"] == 1 or point["converged"])
    # the counting snapshot: the earliest reaching the highest ratio, every tie listed (memaudit.auditing.sweep's rule)
    highest = max(s["memorization_ratio"] for s in point["snapshots"])
    assert point["tied_at"] == [s["step"] for s in point["snapshots"] if s["memorization_ratio"] == highest]
    assert point["step"] == point["tied_at"][0] and point["memorization_ratio"] == highest
    model = out / point["model"]
    assert (model / "memaudit_denoiser.json").is_file() and (model / "model.safetensors").is_file()
    audit = json.loads((out / point["audit"] / "audit.json").read_text())
    assert audit["model"]["settings"]["adapter"] == "memaudit-denoiser"
    assert audit["model"]["settings"]["sampler"] == "edm-heun" and audit["model"]["settings"]["steps"] == 3
    again = run("audit", model, "--train", out / point["train_set"], "--out", tmp_path / "again",
                "--n", 24, "--steps", 3, "--labels", "train", "--quiet")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "again" / "audit.json").read_text())["memorization_ratio"] == point["memorization_ratio"]


def test_paper_factors_are_recorded_and_bad_ones_refused(tmp_path):
    bad = run("emm", "--train", "digits", "--out", tmp_path / "a", "--precond", "ddpm", "--time-embedding", "fourier")
    assert_one_line_error(bad, "--precond ddpm: the diffusers U-Net has no Fourier time embedding")
    assert_one_line_error(run("emm", "--train", "digits", "--out", tmp_path / "b", "--precond", "xx"),
                          "--precond xx: expected one of edm, vp, ve, ddpm")
    assert_one_line_error(run("emm", "--train", "digits", "--out", tmp_path / "c", "--skips", "1,0"),
                          "--skips 1,0: tiny with depth 1 has 6 skip connections")
    assert_one_line_error(run("emm", "--train", "digits", "--out", tmp_path / "d", "--classes", "11"),
                          "--classes 11: digits has only 10 classes")
    assert_one_line_error(run("emm", "--train", "digits", "--out", tmp_path / "e", "--sweep", "skips=1+0"),
                          "--skips 1,0: tiny with depth 1 has 6 skip connections")


def test_mix_takes_a_share_of_each_subset_from_another_set(tmp_path):
    """--mix photos:0.5 (intra-diversity): |D| = 20 holds the first 10 balanced digits and the first 10
    photo tiles, turned grey and resized to 8x8; the mix is recorded in emm.json."""
    from memaudit.data import load_image_set

    out = tmp_path / "run"
    result = run("emm", "--train", "digits", "--out", out, "--start", 20, "--max-size", 20, "--mix", "photos:0.5",
                 *EDM_TINY)
    assert result.exit_code == 0, result.output
    emm = json.loads((out / "emm.json").read_text())
    mix = emm["searches"][0]["settings"]["mix"]
    assert mix["data"] == "photos" and mix["alpha"] == 0.5 and mix["fingerprint"].startswith("sha256:")
    [point] = [p for p in emm["points"] if p["size"] == 20]
    subset = np.load(out / point["train_set"])
    ids = subset["ids"].tolist()
    assert len(ids) == 20 and sum(i.startswith("mix:") for i in ids) == 10
    assert subset["images"].shape == (20, 8, 8, 1)
    digits = load_image_set("digits")
    assert [i for i in ids if not i.startswith("mix:")] == [digits.ids[i] for i in range(len(digits)) if
                                                           digits.ids[i] in set(ids)][:10]
    assert_one_line_error(run("emm", "--train", "digits", "--out", tmp_path / "b", "--mix", "photos:1.5"),
                          "--mix photos:1.5: expected DATA:ALPHA")
    assert_one_line_error(run("emm", "--train", "digits", "--out", tmp_path / "c", "--mix", "photos:0.5",
                              "--labels", "true"), "--mix photos:0.5: mixed-in images have no labels")


def test_classes_keeps_the_first_c_classes(tmp_path):
    """--classes 3 (inter-diversity): the recipe's set holds only digits 0, 1, 2, and balanced subsets
    are multiples of 3."""
    from memaudit.auditing import run_audit
    from memaudit.data import load_image_set
    from memaudit.retraining.recipe import EMMConfig, make_recipe

    digits = load_image_set("digits")
    recipe = make_recipe(EMMConfig(train="digits", out=tmp_path, classes=3), digits, run_audit)
    assert sorted(set(recipe.full.labels.tolist())) == [0, 1, 2] and recipe.unit == 3
    assert len(recipe.full) == int(np.isin(digits.labels, [0, 1, 2]).sum())
    assert recipe.settings()["classes"] == 3


def test_converged_means_the_second_half_of_training_raised_the_highest_ratio_by_at_most_the_tolerance():
    from memaudit.retraining.recipe import converged

    def trail(*ratios):  # snapshots evenly spaced, the last at the end of training
        return [{"step": 100 * (i + 1), "memorization_ratio": r} for i, r in enumerate(ratios)]

    assert converged(trail(0.5), 0.03) is None  # no snapshot in the first half
    assert converged(trail(0.2, 0.6, 0.65, 0.7), 0.03) is False  # 0.6 at half time, 0.7 at the end
    assert converged(trail(0.2, 0.7, 0.71, 0.72), 0.03) is True  # within the tolerance
    assert converged(trail(0.9, 0.8), 0.03) is True  # falling is not rising
    assert converged(trail(0.5, 0.9, 0.99), 0.03) is True  # nothing left to rise
    # a pause between the last two snapshots is still a rise over the second half (seen at |D| = 160)
    assert converged(trail(0.0, 0.064, 0.324, 0.584, 0.740, 0.848, 0.844, 0.924), 0.03) is False
    # the highest ratio counts: a dip at the end after a rise is no convergence either
    assert converged(trail(0.2, 0.3, 0.6, 0.4), 0.03) is False
    assert converged(trail(0.0, 0.0, 0.0, 0.0), 0.03) is True  # flat at 0: the guard sees only rising ratios


def _tiny_recipe(out, **overrides):
    from memaudit.auditing import run_audit
    from memaudit.data import load_image_set
    from memaudit.retraining.recipe import EMMConfig, make_recipe

    settings = dict(precond="ddpm", arch="tiny", width=8, epochs=60, batch_size=16, warmup_steps=5, n=24,
                    sample_steps=4, checkpoint_every=10, snapshots=3, extend=0)
    return make_recipe(EMMConfig(train="digits", out=out, **{**settings, **overrides}), load_image_set("digits"),
                       run_audit)


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_a_point_stopped_at_a_pass_is_the_full_trainings_prefix_and_trains_on_when_asked(tmp_path, monkeypatch):
    """measure_point(stop_at=...): training goes snapshot by snapshot and ends at the first audited
    snapshot whose ratio reaches stop_at; that snapshot's model is the one the full training saves
    there, bit for bit. A later call that needs the full budget continues from the kept checkpoint
    (training only the remaining steps) to the full point's weights and ratios."""
    import memaudit.retraining.recipe
    from memaudit.retraining.recipe import measure_point, point_dir, settles
    from memaudit.retraining.training import train_model

    full = measure_point(_tiny_recipe(tmp_path / "full"), 10, 0)  # 60 x 10 / 16 = 38 steps, snapshots 13, 25, 38
    assert [s["step"] for s in full.info["snapshots"]] == [13, 25, 38] and full.info["stopped_at_pass"] is None
    recipe = _tiny_recipe(tmp_path / "stop")
    steps = []
    monkeypatch.setattr(memaudit.retraining.recipe, "train_model", lambda *a, **k: train_model(*a, **k, on_step=steps.append))
    stopped = measure_point(recipe, 10, 0, stop_at=0.0)  # every ratio reaches 0: stops at the first snapshot
    assert steps == list(range(1, 14))
    assert [s["step"] for s in stopped.info["snapshots"]] == [13] and stopped.info["train_steps"] == 13
    assert stopped.info["stopped_at_pass"] == 0.0 and stopped.info["converged"] is None
    folder = point_dir(recipe, 10, 0)
    assert (folder / "checkpoint.pt").is_file()  # kept, so that the point can be trained on
    first = full.info["snapshots"][0]
    assert stopped.ratio == first["memorization_ratio"]
    ours, theirs = _weights(folder / "snapshots" / "step-0000013"), _weights(tmp_path / "full" / first["model"])
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    # what a stopped point answers: the same or a lower stop, not a higher one nor the full budget
    assert settles(stopped.info, 0.0) and not settles(stopped.info, 0.5) and not settles(stopped.info, None)
    assert settles(full.info, None) and settles(full.info, 0.9)
    steps.clear()
    assert measure_point(recipe, 10, 0, stop_at=0.0).info == stopped.info and steps == []  # read back
    resumed = measure_point(recipe, 10, 0)
    assert steps == list(range(14, 39))  # only the steps after the stop
    assert resumed.ratio == full.ratio and resumed.info["stopped_at_pass"] is None
    assert [s["memorization_ratio"] for s in resumed.info["snapshots"]] == \
        [s["memorization_ratio"] for s in full.info["snapshots"]]
    for snapshot in full.info["snapshots"]:
        a, b = _weights(tmp_path / "stop" / snapshot["model"]), _weights(tmp_path / "full" / snapshot["model"])
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not (folder / "checkpoint.pt").exists()


def test_two_workers_train_the_same_points_as_one(sweep_run, tmp_path):
    """--workers 2: a round's sizes are trained at once in two processes; each point is the model
    the in-process run trains (same weights, same ratios), and the grid's two sizes form one round."""
    out, _ = sweep_run
    args = ["emm", "--train", "digits", "--start", 10, "--max-size", 20, "--tolerance", 5, "--grid", "10,20",
            "--snapshots", 2, *TINY]
    result = run(*args, "--out", tmp_path / "two", "--workers", "2")
    assert result.exit_code == 0, result.output
    two = json.loads((tmp_path / "two" / "emm.json").read_text())
    assert two["provenance"]["workers"] == 2
    reference = json.loads((out / "emm.json").read_text())["searches"][0]  # labels=none, trained in-process
    assert json.loads((out / "emm.json").read_text())["provenance"]["workers"] == 1
    assert [p["size"] for p in two["points"]] == [p["size"] for p in reference["points"]] == [10, 20]
    for ours, theirs in zip(two["points"], reference["points"]):
        assert ours["memorization_ratio"] == theirs["memorization_ratio"]
        assert [s["memorization_ratio"] for s in ours["snapshots"]] == [s["memorization_ratio"] for s in theirs["snapshots"]]
        a, b = _weights(tmp_path / "two" / ours["model"]), _weights(out / theirs["model"])
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_worker_pool_runs_every_job_in_processes_and_raises_their_errors(tmp_path):
    """PointPool: jobs run in separate processes, at most ``workers`` at once; a worker's error (here
    a bad --labels value) reaches the caller as the same exception, so the command's one-line errors hold."""
    from memaudit.retraining.recipe import parse_labels
    from memaudit.retraining.workers import PointPool
    from memaudit.errors import InputError
    from memaudit.storage import write_text_atomic

    pool = PointPool(2, 1)
    pool.run(write_text_atomic, [(tmp_path / f"{i}.txt", str(i)) for i in range(3)])
    assert sorted(p.read_text() for p in tmp_path.glob("*.txt")) == ["0", "1", "2"]
    with pytest.raises(InputError, match="--labels bogus"):
        pool.run(parse_labels, [("none",), ("bogus",)])


# --- worker processes: isolated from the working directory, dying with their parent ----------------

TWO_WORKERS = ["emm", "--train", "digits", "--start", 10, "--max-size", 20, "--tolerance", 5, "--grid", "10,20",
               "--snapshots", 2, *TINY[:-3], "--workers", "2", "--quiet"]  # TINY less its --workers 1


def _memaudit_command() -> list[str]:
    """The installed console script, as a user runs it (``python -m memaudit`` would itself put the
    working directory on the import path, which is the user's choice, not memaudit's)."""
    import shutil
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "memaudit"
    return [str(script)] if script.exists() else [shutil.which("memaudit") or "memaudit"]


def _group_alive(pgid: int) -> bool:
    """Whether any live (not zombie) process is in process group ``pgid`` (Linux /proc)."""
    from pathlib import Path

    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def test_a_numpy_py_in_the_working_directory_is_never_imported(tmp_path):
    """Issue 28: the workers started as ``python -m memaudit.retraining.workers`` imported a numpy.py lying
    in the folder memaudit was run from. They start with -P now: the file is not executed and the
    run is the ordinary one."""
    import os
    import subprocess

    marker = tmp_path / "executed"
    hostile = tmp_path / "cwd"
    hostile.mkdir()
    (hostile / "numpy.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit(7)\n")
    result = subprocess.run([*_memaudit_command(), *map(str, TWO_WORKERS), "--out", str(tmp_path / "run")],
                            cwd=hostile, capture_output=True, text=True, timeout=900,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists()
    emm = json.loads((tmp_path / "run" / "emm.json").read_text())
    assert emm["provenance"]["workers"] == 2 and [p["size"] for p in emm["points"]] == [10, 20]


def test_kill_9_of_emm_takes_its_workers_and_the_rerun_finishes_identically(sweep_run, tmp_path):
    """kill -9 of ``memaudit emm --workers 2`` mid-training: no worker outlives it by 5 s (the
    watchdog pipe), the immediate rerun is not refused by them, resumes the checkpoints and ends
    with the points of an uninterrupted run (the sweep's labels=none search, trained in-process)."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "run"
    parent = subprocess.Popen([*_memaudit_command(), *map(str, TWO_WORKERS), "--out", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    workers: list[int] = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and parent.poll() is None:  # both workers training, one checkpoint written
        workers = [int(p.name) for p in (out / ".children").glob("*")] if (out / ".children").is_dir() else []
        if len(workers) == 2 and any((out / "points").rglob("checkpoint.pt")):
            break
        time.sleep(0.05)
    assert parent.poll() is None and len(workers) == 2, "the run ended before both workers had a checkpoint"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    time.sleep(5)
    assert not [pid for pid in workers if _group_alive(pid)], "emm workers outlived their parent"
    assert json.loads((out / "run.json").read_text())["state"] == "running"  # killed: visibly incomplete

    rerun = run(*TWO_WORKERS, "--out", out)
    assert rerun.exit_code == 0, rerun.output
    assert json.loads((out / "run.json").read_text())["state"] == "complete"
    resumed = json.loads((out / "emm.json").read_text())
    reference = json.loads((sweep_run[0] / "emm.json").read_text())["searches"][0]  # labels=none
    assert resumed["emm"] == reference["emm"]
    assert [p["size"] for p in resumed["points"]] == [p["size"] for p in reference["points"]] == [10, 20]
    for ours, theirs in zip(resumed["points"], reference["points"]):
        assert ours["memorization_ratio"] == theirs["memorization_ratio"]  # counts of 24 samples
        assert [s["memorization_ratio"] for s in ours["snapshots"]] == [s["memorization_ratio"] for s in theirs["snapshots"]]
        a, b = _weights(out / ours["model"]), _weights(sweep_run[0] / theirs["model"])
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
