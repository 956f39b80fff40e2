"""The verdict (memaudit.verdict): what a reviewer reads first must be right in both directions.

An exact copy of a training image held twice (the paper's nn-ratio is 0/0 there) reads "copies",
red, first in the gallery, and fails the gate; real digits no model saw read "no evidence", with
criteria whose thresholds were set for other images shown as informational only.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit import verdict
from memaudit.cli import app
from memaudit.criteria import CRITERIA
from memaudit.data import load_image_set

runner = CliRunner()


def wilson_low(k: int, n: int, z: float = 1.959963984540054) -> float:
    """The Wilson score interval's lower end, written out from Wilson (1927)."""
    p = k / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


@pytest.fixture
def duplicated(tmp_path):
    """The issue's case: 60 random 16x16x3 training images, image 1 equal to image 0; samples are
    train[0] and 9 random images."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8)
    train[1] = train[0]
    samples = np.concatenate([train[:1], rng.integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)])
    np.savez(tmp_path / "train.npz", images=train)
    np.savez(tmp_path / "samples.npz", images=samples)
    return tmp_path


def test_an_exact_copy_of_a_duplicated_training_image_reads_copies_and_fails_the_gate(duplicated):
    run = duplicated / "run"
    result = runner.invoke(app, ["audit", "--samples", str(duplicated / "samples.npz"), "--train",
                                 str(duplicated / "train.npz"), "--out", str(run), "--fail-above", "0", "--quiet"])
    assert result.exit_code == 3, result.output  # the gate's exit code, though the paper's ratio is 0
    assert "verdict: copies" in result.output
    assert "exact copy: sample 0 = training train.npz[0], train.npz[1]" in result.output
    assert "release gate failed: 1 exact copy" in result.output
    audit = json.loads((run / "audit.json").read_text())
    assert audit["memorization_ratio"] == 0.0  # the paper's criterion, as defined: 0/0 is not memorized
    headline = audit["headline"]
    assert headline["verdict"] == "copies"
    assert headline["exact_copies"] == [{"sample": 0, "seed": None, "exact": True,
                                         "train_ids": ["train.npz[0]", "train.npz[1]"]}]
    assert headline["duplicate_aware"]["memorized"] == 1 and headline["training_duplicate_groups"] == 1
    assert audit["gate"] == {"fail_above": 0.0, "fraction": 0.1, "exact_copies": 1, "passed": False,
                             "not_computed": ["pixel/carlini-relative", "pixel/tiled-l2"]}  # 8x8: they could not speak
    assert any("1 group of byte-identical images" in w and "train.npz[1]" in w for w in audit["warnings"])
    first = audit["findings"][0]  # the copy leads the gallery, though its nn ratio is the largest possible
    assert first["sample"] == 0 and first["copy"]["exact"] and first["ratio"] == 1.0
    page = (run / "report.html").read_text()
    assert 'class="big bad" id="verdict-word">Copies found' in page
    assert "exact copy" in page and "train.npz[1]" in page


def test_json_output_carries_the_headline_and_the_warnings(duplicated):
    result = runner.invoke(app, ["audit", "--samples", str(duplicated / "samples.npz"), "--train",
                                 str(duplicated / "train.npz"), "--out", str(duplicated / "run"), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["headline"]["verdict"] == "copies" and summary["headline"]["exact_copies"][0]["sample"] == 0
    assert summary["warnings"] and summary["gate"]["exact_copies"] == 1


def test_a_near_exact_copy_is_a_copy_and_a_farther_one_is_not(tmp_path):
    import memaudit

    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    near = train[5].astype(np.int16)
    near.flat[:100] += np.where(near.flat[:100] < 255, 1, -1)  # 100 of 192 values one grey level off: RMS 0.72
    far = train[7].astype(np.int16)
    far.flat[:] += np.where(far.flat[:] < 254, 2, -2)  # every value two levels off: RMS 2
    samples = np.stack([near, far]).astype(np.uint8)
    result = memaudit.audit(train=train, samples=samples, progress=False)
    assert result.exact_copies == [{"sample": 0, "seed": None, "exact": False, "train_ids": ["train[5]"]}]
    assert result.verdict == "copies"


def test_find_copies_matches_a_brute_force_search():
    rng = np.random.default_rng(2)
    train = rng.integers(0, 4, (50, 4, 4, 1), dtype=np.uint8) * 60
    train[[3, 9, 20]] = train[0]  # a group of four
    samples = np.concatenate([train[[0, 9, 11]], rng.integers(0, 256, (5, 4, 4, 1), dtype=np.uint8)])
    samples[2, 0, 0, 0] ^= 1  # one value one grey level off: a near-exact copy of train[11] (and its duplicates)
    d = np.sqrt(((samples[:, None].astype(np.float64) - train[None].astype(np.float64)) ** 2).sum(axis=(2, 3, 4)))
    order = np.argsort(d, axis=1, kind="stable")[:, :16]
    groups = verdict.digest_groups(verdict.image_digest_array(train))
    radius = verdict.copy_radius(train.shape[1:])
    found = verdict.find_copies(np.take_along_axis(d, order, 1), order, verdict.image_digest_array(samples), groups,
                                radius)
    expected = [(i, bool(d[i].min() == 0), sorted(np.flatnonzero(d[i] <= radius).tolist()))
                for i in range(len(samples)) if d[i].min() <= radius]
    assert found == expected
    assert found[0] == (0, True, [0, 3, 9, 20]) and found[1][2] == [0, 3, 9, 20]
    assert verdict.training_duplicates(groups)[0] == [0, 3, 9, 20]


def test_real_digits_no_model_saw_read_no_evidence(tmp_path):
    """The issue's other case: 797 unseen digits against digits:1000 (carlini-l2 flags about half of
    them at Stable Diffusion's 0.15): the verdict is 'no-evidence' and carlini-l2 is informational."""
    np.savez(tmp_path / "held.npz", images=load_image_set("digits:1000:rest").images)
    run = tmp_path / "run"
    result = runner.invoke(app, ["audit", "--samples", str(tmp_path / "held.npz"), "--train", "digits:1000",
                                 "--out", str(run), "--fail-above", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    audit = json.loads((run / "audit.json").read_text())
    headline = audit["headline"]
    assert headline["verdict"] == "no-evidence" and headline["exact_copies"] == []
    assert headline["others_flagging"] == []
    informational = {o["criterion"]: o for o in headline["informational"]}
    assert informational["carlini-l2"]["memorized"] > 300 and "512x512" in informational["carlini-l2"]["why"]
    standing = audit["spaces"]["pixel"]["criteria"]["carlini-l2"]["standing"]
    assert standing["speaks"] is False and standing["evidence"] is False
    page = (run / "report.html").read_text()
    assert 'class="big good" id="verdict-word">No evidence of memorization' in page
    assert "Informational (not part of the verdict)" in page and "carlini-l2 (pixel, uncalibrated)" in page
    assert "informational, uncalibrated: carlini-l2" in result.output


def test_a_holdout_lets_a_criterion_speak_only_at_or_below_the_target_fpr():
    summary = {"memorized": 30, "n": 1000, "fpr": 0.02}
    assert not verdict.standing("pixel", "tiled-l2", summary, (8, 8, 1), 0.01)["speaks"]
    stand = verdict.standing("pixel", "tiled-l2", summary, (8, 8, 1), 0.05)
    assert stand["speaks"] and stand["null_fpr"] == 0.02
    # 30 of 1000 flagged against a measured 2%: the Wilson lower bound (2.1%) is above it
    assert wilson_low(30, 1000) > 0.02 and stand["evidence"]
    # 25 of 1000: the lower bound (1.7%) is within what a 2% false-positive rate explains
    within = verdict.standing("pixel", "tiled-l2", {**summary, "memorized": 25}, (8, 8, 1), 0.05)
    assert wilson_low(25, 1000) < 0.02 and within["speaks"] and not within["evidence"]


def test_uncalibrated_criteria_speak_only_inside_their_regime():
    flags = {"memorized": 3, "n": 100, "fpr": None}
    assert verdict.standing("pixel", "nn-ratio", flags, (8, 8, 1), 0.01)["evidence"]  # the paper's, any images
    assert not verdict.standing("pixel", "carlini-l2", flags, (32, 32, 3), 0.01)["speaks"]
    assert verdict.standing("pixel", "carlini-l2", flags, (512, 512, 3), 0.01)["evidence"]
    assert verdict.standing("sscd:model.pt", "cosine", flags, (64, 64, 3), 0.01)["speaks"]
    assert not verdict.standing("clip:ViT-B-32@w.pt", "cosine", flags, (64, 64, 3), 0.01)["speaks"]
    for name in ("nn-ratio-dedup", "carlini-relative"):  # no regime keeps unseen images unflagged
        assert not verdict.standing("pixel", name, flags, (512, 512, 3), 0.01)["speaks"]
    assert all(c.regime.set_for for c in CRITERIA.values())


def test_the_gate_fails_on_any_copy_and_on_the_memorized_share():
    base = {"exact_copies": [], "memorized_any_fraction": 0.05}
    assert verdict.gate(0.1, base)["passed"] and not verdict.gate(0.01, base)["passed"]
    copy = {**base, "exact_copies": [{"sample": 0}], "memorized_any_fraction": 0.001}
    assert not verdict.gate(1.0, copy)["passed"]
    assert verdict.gate(None, copy)["passed"] is None


def test_a_memorizing_model_still_reads_memorizes(tmp_path):
    """The optimal denoiser of 20 photo tiles reproduces them: copies (or at least memorizes)."""
    run = tmp_path / "run"
    result = runner.invoke(app, ["audit", "optimal", "--train", "photos:20", "--n", "16", "--out", str(run), "--quiet"])
    assert result.exit_code == 0, result.output
    headline = json.loads((run / "audit.json").read_text())["headline"]
    assert headline["verdict"] in ("copies", "memorizes") and headline["memorized"] > 0


def test_the_membership_verdict_sentence_follows_the_auc_interval():
    from memaudit.membership.audit import membership_verdict, unsupported_tpr

    unsupported = {"fpr": 0.001, "tpr": 1.0, "supported": False, "nonmembers": 200}
    attacks = {"loss": {"auc": 0.62, "auc_ci95": [0.55, 0.69],
                        "tpr_at_fpr": [{"fpr": 0.01, "tpr": 0.08, "supported": True, "nonmembers": 200}, unsupported]},
               "pia": {"auc": 0.52, "auc_ci95": [0.45, 0.59], "tpr_at_fpr": []}}
    leaks = membership_verdict(attacks, "loss")
    assert leaks["leaks"] and "0.550 to 0.690, above 0.5" in leaks["sentence"] and "TPR 8.0% at 1.0% FPR" in leaks["sentence"]
    assert membership_verdict(attacks, "pia")["leaks"] is False
    assert membership_verdict({}, None)["leaks"] is None
    # the terminal and the page say the same of a TPR the non-members cannot measure
    assert unsupported_tpr(unsupported) == "n/a (needs 1000 non-members, 200 given)"


def test_pages_show_local_paths_and_redaction_removes_folders(monkeypatch, tmp_path):
    from memaudit.reports import local_paths

    monkeypatch.chdir(tmp_path)
    command = f"memaudit audit {tmp_path}/m/x.npz --train npz:/elsewhere/set/t.npz --out r digits:100:rest hf:org/name"
    assert local_paths(command) == "memaudit audit m/x.npz --train npz:t.npz --out r digits:100:rest hf:org/name"
    assert local_paths(command, "blur") == "memaudit audit x.npz --train npz:t.npz --out r digits:100:rest hf:org/name"
