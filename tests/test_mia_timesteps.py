"""memaudit mia --timesteps, --loss-noise, --json's support flags and SecMI_NNs: per-step tables
against a brute-force recomputation of each attack at each step, on the shipped digits checkpoints."""

from __future__ import annotations

import csv
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.data import load_image_set
from memaudit.membership.predictor import Conditions

ASSETS = Path(__file__).resolve().parents[1] / "memaudit" / "assets"
ALL_DIGITS = ASSETS / "digits-ddim"  # trained on all 1797 digits: AUCs well inside (0, 1), so rows differ
DIGITS100 = ASSETS / "digits100-ddim"
runner = CliRunner()
N = 6  # images of each set


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def predictor():
    from memaudit.adapters import SamplerOptions, load_model
    from memaudit.membership.predictor import noise_predictor

    return noise_predictor(load_model(str(ALL_DIGITS), load_image_set("digits:100"), SamplerOptions(device="cpu")), "m")


def _brute(predictor, images, attack, t):
    """Each attack's statistic at step t written out from its paper's formula, one image at a time."""
    import torch

    ab = predictor.alphas_cumprod.double()
    out = []
    for image in images:
        x0 = torch.from_numpy(image[None].astype(np.float32)).permute(0, 3, 1, 2) / 127.5 - 1.0
        eps = lambda x, s: predictor.eps(x, s, Conditions())  # noqa: E731
        if attack == "pia":
            e0 = eps(x0, 0)
            d = e0 - eps(float(ab[t].sqrt()) * x0 + float((1 - ab[t]).sqrt()) * e0, t)
            out.append(-float(d.double().abs().pow(4).sum()))
        elif attack == "score-norm":
            out.append(-float(eps(x0, t).double().abs().pow(4).sum()))
        elif attack == "loss":  # shared noises: seeds 0..3, the same for every image
            total = 0.0
            for k in range(4):
                n = torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(k))[None]
                total += float((n - eps(float(ab[t].sqrt()) * x0 + float((1 - ab[t]).sqrt()) * n, t)).double().pow(2).sum())
            out.append(-total / 4)
        else:  # secmi, the y/p form: y = x / sqrt(abar), p = sqrt(1/abar - 1), y' = y + eps (p' - p)
            def move(x, a, b):
                y = x / float(ab[a].sqrt()) + eps(x, a) * float((1 / ab[b] - 1).sqrt() - (1 / ab[a] - 1).sqrt())
                return y * float(ab[b].sqrt())
            x = x0
            for s in range(0, t - 10, 10):
                x = move(x, s, s + 10)
            out.append(-float((x - move(move(x, t - 10, t), t, t - 10)).double().pow(2).sum()))
    return np.array(out)


def _pairwise_auc(m, n):
    return float(np.mean([(1.0 if a > b else 0.5 if a == b else 0.0) for a in m for b in n]))


@pytest.fixture(scope="module")
def scan_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scan")
    result = _cli("mia", ALL_DIGITS, "--members", "digits:100", "--nonmembers", "digits:100:rest", "--limit", N,
                  "--attack", "pia", "--attack", "secmi", "--attack", "loss", "--attack", "score-norm",
                  "--timesteps", "10:100:90", "--out", out, "--device", "cpu", "--quiet", "--json")
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "mia.json").read_text()), json.loads(result.stdout)


def test_per_step_table_equals_a_brute_force_recomputation(scan_run, predictor):
    out, document, _ = scan_run
    members = load_image_set("digits:100").images[:N]
    nonmembers = load_image_set("digits:100:rest").images[:N]
    for name in ("pia", "secmi", "loss", "score-norm"):
        table = document["attacks"][name]["timesteps"]
        assert [r["t"] for r in table["rows"]] == [10, 100]
        stored = {role: np.load(glob.glob(str(out / "scores" / f"{name}-{role}-scan-*.npy"))[0])
                  for role in ("member", "nonmember")}
        for i, row in enumerate(table["rows"]):
            m, n = _brute(predictor, members, name, row["t"]), _brute(predictor, nonmembers, name, row["t"])
            np.testing.assert_allclose(stored["member"][i], m, rtol=2e-4)
            np.testing.assert_allclose(stored["nonmember"][i], n, rtol=2e-4)
            assert row["auc"] == pytest.approx(_pairwise_auc(m, n), abs=1e-12)
            assert [t["supported"] for t in row["tpr_at_fpr"]] == [False, False]  # 6 non-members
        # the row at the attack's own step is the headline, scored on its own
        key = document["attacks"][name]["timestep"]
        defaults = [r for r in table["rows"] if r["default"]]
        assert [r["t"] for r in defaults] == ([key["t"]] if key["t"] in (10, 100) else [])
        for r in defaults:
            assert r["auc"] == pytest.approx(document["attacks"][name]["auc"], abs=1e-12)


def test_best_step_is_marked_as_chosen_on_the_evaluated_data(scan_run):
    out, document, printed = scan_run
    page = (out / "mia.html").read_text()
    for name, attack in document["attacks"].items():
        table = attack["timesteps"]
        best = [r for r in table["rows"] if r["best"]]
        assert len(best) == 1 and best[0]["auc"] == max(r["auc"] for r in table["rows"])
        assert table["best"]["t"] == best[0]["t"] and table["best"]["chosen_on_evaluated_data"] is True
        assert "optimistic" in table["best"]["note"]
        assert printed["attacks"][name]["timesteps"]["best"] == table["best"]
        assert attack["timestep"]["source"]
        assert f'id="steps-{name}"' in page
    assert page.count("chosen on the evaluated data (optimistic)") >= 2 * len(document["attacks"])


def test_json_carries_the_support_flags_of_mia_json(scan_run):
    _, document, printed = scan_run
    for name, attack in document["attacks"].items():
        for t in attack["tpr_at_fpr"]:
            flag = printed["attacks"][name][f"tpr_at_fpr_{t['fpr']:g}"]
            assert flag == {"tpr": t["tpr"], "supported": t["supported"], "nonmembers": t["nonmembers"]}
            assert flag["supported"] is False  # 6 non-members measure neither 1% nor 0.1%
        for row, shown in zip(attack["timesteps"]["rows"], printed["attacks"][name]["timesteps"]["rows"]):
            assert shown["tpr_at_fpr_0.01"]["supported"] == row["tpr_at_fpr"][0]["supported"]
    assert printed["options"] == {"timesteps": [10, 100], "loss_noise": "shared"}


def test_per_image_loss_noise(tmp_path, predictor):
    """per-image: one noise per image (recorded), seeded by the image itself: a score does not depend on the batch."""
    from memaudit.membership import ATTACKS
    from memaudit.membership.loss import image_keys

    images = load_image_set("digits:100").images[:5]
    x0, keys = predictor.encode(images), image_keys(images)
    settings = {"timestep": 100, "noises": 1, "noise": "per-image", "seed": 0}
    together = ATTACKS["loss"].score(predictor, x0, Conditions(keys=keys), settings)
    alone = [ATTACKS["loss"].score(predictor, x0[i:i + 1], Conditions(keys=keys[i:i + 1]), settings)[0] for i in (4, 0, 2)]
    np.testing.assert_allclose(together[[4, 0, 2]], alone, rtol=1e-4)
    shared = ATTACKS["loss"].score(predictor, x0, Conditions(keys=keys), {**settings, "noise": "shared"})
    assert not np.allclose(together, shared)
    result = _cli("mia", ALL_DIGITS, "--members", "digits:100", "--nonmembers", "digits:100:rest", "--limit", 4,
                  "--attack", "loss", "--loss-noise", "per-image", "--out", tmp_path, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "mia.json").read_text())
    assert document["attacks"]["loss"]["settings"]["noise"] == "per-image"
    assert document["attacks"]["loss"]["settings"]["noises"] == 1 and document["options"]["loss_noise"] == "per-image"


def _nns(out, seed):
    result = _cli("mia", DIGITS100, "--members", "digits:100", "--nonmembers", "digits:100:rest", "--limit", 10,
                  "--attack", "secmi-nns", "--setting", "secmi-nns.epochs=2", "--setting", f"secmi-nns.seed={seed}",
                  "--setting", "secmi-nns.t_sec=20", "--out", out, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "mia.json").read_text())
    rows = [r for r in csv.DictReader((out / "scores.csv").open())]
    return document["attacks"]["secmi-nns"], rows


def test_secmi_nns_split_is_recorded_and_reproducible(tmp_path):
    from memaudit.membership.secmi_nns import split as draw

    first, rows = _nns(tmp_path / "a", 3)
    again, rows_again = _nns(tmp_path / "b", 3)
    split = first["split"]
    assert len(split["train"]["member"]) == len(split["train"]["nonmember"]) == 2  # int(0.2 * 10) of each
    assert split["evaluated"] == {"member": 8, "nonmember": 8} and first["n_members"] == 8
    assert split["seed"] == 3 and split["train_fraction"] == 0.2
    assert again["split"] == split
    members = load_image_set("digits:100").ids[:10]
    assert split["train"]["member"] == [members[i] for i in draw(10, 10, 0.2, 3)["member"]]  # the seed's draw
    scored = {(r["set"], r["image"]) for r in rows}
    assert len(scored) == 16 and not scored & {("member", i) for i in split["train"]["member"]} \
        and not scored & {("nonmember", i) for i in split["train"]["nonmember"]}
    np.testing.assert_allclose([float(r["score"]) for r in rows], [float(r["score"]) for r in rows_again], rtol=1e-4, atol=1e-6)
    assert again["auc"] == pytest.approx(first["auc"], abs=0.02)


def test_split_is_drawn_by_the_seed():
    from memaudit.membership.secmi_nns import split

    a, b = split(50, 70, 0.2, 1), split(50, 70, 0.2, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a) and len(a["member"]) == 10 and len(a["nonmember"]) == 14
    assert not np.array_equal(a["member"], split(50, 70, 0.2, 2)["member"])
    rng = np.random.default_rng(1)
    assert np.array_equal(a["member"], np.sort(rng.permutation(50)[:10]))


@pytest.mark.parametrize("args, message", [
    (["--timesteps", "300:10:10"], "STOP >= START"),
    (["--timesteps", "10,x"], "expected a list of steps"),
    (["--timesteps", "10,1000"], "step 1000 is outside the model's schedule; valid steps: 0..999"),
    (["--attack", "secmi", "--timesteps", "15,20"], "step 15 is not a positive multiple of 10"),
    (["--attack", "pia", "--loss-noise", "per-image"], "applies to the loss attack only"),
    (["--attack", "loss", "--loss-noise", "fresh"], "expected one of shared, per-image"),
    (["--attack", "loss", "--setting", "loss.noise=1"], "chosen by --loss-noise"),
    (["--attack", "secmi-nns", "--setting", "secmi-nns.train_fraction=1.5"], "between 0 and 1"),
])
def test_bad_step_and_noise_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = _cli("mia", DIGITS100, "--members", "digits:100", "--nonmembers", "digits:100:rest", "--limit", 4,
                  "--out", tmp_path, "--device", "cpu", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_learned_attack_and_steps_need_ground_truth(tmp_path):
    result = _cli("mia", DIGITS100, "--query", "digits:5", "--nonmembers", "digits:100:rest", "--attack", "secmi-nns",
                  "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 2 and "without --query" in result.output
    result = _cli("mia", DIGITS100, "--query", "digits:5", "--nonmembers", "digits:100:rest", "--timesteps", "10",
                  "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 2 and "needs --members and --nonmembers" in result.output


def test_an_attack_without_timesteps_refuses_them():
    from memaudit.errors import InputError
    from memaudit.membership.base import Attack
    from memaudit.membership.timesteps import check_timesteps

    fixed = Attack("fixed", "none", lambda *a: None, {}, timestep_key=None)
    with pytest.raises(InputError, match="the fixed attack has no timestep"):
        check_timesteps(fixed, {}, [10], 1000)


# --- the authors' own PIA code, run beside (skips without the fetched tree) ---------------------

PIA_TREE = Path(os.environ.get("MEMAUDIT_PIA_REPO", "/work/.mirror/kong13661+PIA/repo"))


@pytest.mark.skipif(not PIA_TREE.exists(), reason="kong13661/PIA not fetched (set MEMAUDIT_PIA_REPO to its git directory)")
def test_pia_scan_equals_the_authors_components(tmp_path, predictor):
    """kong13661/PIA DDPM/components.py's PIA and SecMIAttacker (read out of the fetched git tree into a temporary
    folder and imported, never copied into memaudit) beside memaudit's scans at t = 10, 20, 30."""
    import torch

    source = subprocess.run(["git", f"--git-dir={PIA_TREE}", "show", "HEAD:DDPM/components.py"], capture_output=True,
                            text=True, check=True).stdout
    (tmp_path / "components.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        import components
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("components", None)
    from memaudit.membership import ATTACKS

    class Eps(components.EpsGetter):
        def __call__(self, xt, condition=None, noise_level=None, t=None):
            return self.model(xt, torch.ones([xt.shape[0]]).long() * t).sample

    images = load_image_set("digits:100").images[:6]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    betas = torch.from_numpy(np.linspace(1e-4, 0.02, 1000))
    with torch.no_grad():
        theirs_pia = components.PIA(betas, 10, 3, Eps(predictor.unet), lambda v: v * 2 - 1)(x).double().numpy()
        theirs_secmi = components.SecMIAttacker(betas, 10, 3, Eps(predictor.unet), lambda v: v * 2 - 1)(x).double().numpy()
    x0 = predictor.encode(images)
    ours_pia = -ATTACKS["pia"].scan(predictor, x0, Conditions(), {"p": 4}, [10, 20, 30])
    ours_secmi = -ATTACKS["secmi"].scan(predictor, x0, Conditions(), {"k": 10}, [10, 20, 30])
    np.testing.assert_allclose(ours_pia, theirs_pia, rtol=1e-3)
    np.testing.assert_allclose(ours_secmi, theirs_secmi, rtol=1e-3)
