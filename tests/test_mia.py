"""Membership inference: metrics against brute force, attacks against the authors' formulations,
and whole runs on the shipped digits-100 checkpoint (members digits:100, non-members the rest)."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.data import load_image_set
from memaudit import roc as metrics
from memaudit.membership import ATTACKS, DEFAULT_ATTACKS

ASSET = Path(__file__).resolve().parents[1] / "memaudit" / "assets" / "digits100-ddim"
runner = CliRunner()


def _cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# --- metrics -----------------------------------------------------------------------------------

def _tied_scores(seed):
    rng = np.random.default_rng(seed)
    members = rng.integers(0, 12, 23).astype(float) + 1.5  # many ties, shifted upwards
    nonmembers = rng.integers(0, 12, 31).astype(float)
    return members, nonmembers


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_is_the_pairwise_probability_with_half_ties(seed):
    members, nonmembers = _tied_scores(seed)
    pairs = [(1.0 if m > n else 0.5 if m == n else 0.0) for m, n in itertools.product(members, nonmembers)]
    assert metrics.auc(members, nonmembers) == pytest.approx(np.mean(pairs), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(members, nonmembers)
    assert np.trapezoid(tpr, fpr) == pytest.approx(np.mean(pairs), abs=1e-12)  # the ROC's area is the same number


def test_delong_interval_matches_the_pairwise_definition():
    members, nonmembers = _tied_scores(4)
    psi = (members[:, None] > nonmembers[None]).astype(float) + 0.5 * (members[:, None] == nonmembers[None])
    value = psi.mean()
    variance = psi.mean(1).var(ddof=1) / len(members) + psi.mean(0).var(ddof=1) / len(nonmembers)
    low, high = metrics.auc_interval(members, nonmembers)
    assert low == pytest.approx(value - 1.959964 * math.sqrt(variance), abs=1e-9)
    assert high == pytest.approx(min(1.0, value + 1.959964 * math.sqrt(variance)), abs=1e-9)


def test_tpr_at_fpr_is_the_best_threshold_within_the_budget():
    rng = np.random.default_rng(5)
    members, nonmembers = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 500)
    for target in (0.01, 0.001, 0.1):
        best = 0.0
        for threshold in np.concatenate([members, nonmembers, [np.inf]]):
            if np.mean(nonmembers >= threshold) <= target:
                best = max(best, np.mean(members >= threshold))
        row = metrics.tpr_at_fpr(members, nonmembers, target)
        assert row["tpr"] == pytest.approx(best)
        assert row["false_positives_allowed"] == math.floor(target * 500 + 1e-9)
        assert row["supported"] == (target * 500 >= 1)


def test_an_unreachable_fpr_has_no_threshold_and_stays_json():
    row = metrics.tpr_at_fpr(np.array([0.0, 1.0]), np.array([5.0, 6.0]), 0.01)  # every non-member above every member
    assert row["tpr"] == 0.0 and row["threshold"] is None
    json.dumps(metrics.summary(np.array([0.0, 1.0]), np.array([5.0, 6.0])), allow_nan=False)


def test_p_values_count_nonmembers_at_least_as_high():
    nonmembers = np.array([0.1, 0.5, 0.5, 0.9])
    assert metrics.p_values(np.array([1.0, 0.5, 0.0]), nonmembers).tolist() == [1 / 5, 4 / 5, 5 / 5]


# --- attacks against the authors' formulations ----------------------------------------------

@pytest.fixture(scope="module")
def predictor():
    from memaudit.adapters import SamplerOptions, load_model
    from memaudit.membership.predictor import noise_predictor

    train = load_image_set("digits:100")
    return noise_predictor(load_model(str(ASSET), train, SamplerOptions(device="cpu")), str(ASSET))


def _x0(predictor, n=6):
    return predictor.encode(load_image_set("digits:100").images[:n])


def test_secmi_equals_the_y_p_form_of_ddim_inversion(predictor):
    """The authors' code writes DDIM as y = x / sqrt(abar), p = sqrt(1 / abar - 1), y' = y + eps (p' - p)."""
    from memaudit.membership.predictor import Conditions

    ab = predictor.alphas_cumprod
    x0, cond = _x0(predictor), Conditions()

    def move(x, t_from, t_to):
        eps = predictor.eps(x, t_from, cond)
        y = x / ab[t_from].sqrt().float() + eps * float((1 / ab[t_to] - 1).sqrt() - (1 / ab[t_from] - 1).sqrt())
        return y * ab[t_to].sqrt().float()

    x = x0
    for step in range(0, 90, 10):
        x = move(x, step, step + 10)
    back = move(move(x, 90, 100), 100, 90)
    expected = (x - back).double().pow(2).flatten(1).sum(1).numpy()
    got = -ATTACKS["secmi"].score(predictor, x0, cond, {"t_sec": 100, "k": 10})
    np.testing.assert_allclose(got, expected, rtol=2e-4)


def test_pia_and_score_norm_follow_their_definitions(predictor):
    from memaudit.membership.predictor import Conditions

    x0, cond = _x0(predictor), Conditions()
    ab = float(predictor.alphas_cumprod[200])
    eps0 = predictor.eps(x0, 0, cond)
    expected = (eps0 - predictor.eps(ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps0, 200, cond)).double().abs().pow(4)
    np.testing.assert_allclose(-ATTACKS["pia"].score(predictor, x0, cond, {"timestep": 200, "p": 4}),
                               expected.flatten(1).sum(1).numpy(), rtol=1e-6)
    norm = predictor.eps(x0, 100, cond).double().abs().pow(4).flatten(1).sum(1).numpy()
    np.testing.assert_allclose(-ATTACKS["score-norm"].score(predictor, x0, cond, {"timestep": 100, "p": 4}), norm, rtol=1e-6)


def test_loss_scores_do_not_depend_on_the_batch(predictor):
    """The seeded noises are the same for every image: an image scores the same alone or in a batch."""
    from memaudit.membership.predictor import Conditions

    x0, cond, settings = _x0(predictor), Conditions(), {"timestep": 100, "noises": 3}
    together = ATTACKS["loss"].score(predictor, x0, cond, settings)
    alone = np.concatenate([ATTACKS["loss"].score(predictor, x0[i:i + 1], cond, settings) for i in range(len(x0))])
    np.testing.assert_allclose(together, alone, rtol=1e-4)
    np.testing.assert_array_equal(together, ATTACKS["loss"].score(predictor, x0, cond, settings))  # repeats exactly


# --- whole runs ---------------------------------------------------------------------------------

def test_digits_subset_and_its_rest_partition_the_digits():
    members, rest = load_image_set("digits:100"), load_image_set("digits:100:rest")
    assert len(members) == 100 and len(rest) == 1697
    assert not set(members.ids) & set(rest.ids)
    assert sorted(members.ids + rest.ids, key=lambda s: int(s.split("/")[1])) == [f"digits/{i}" for i in range(1797)]


def test_mia_cli_on_the_shipped_checkpoint(tmp_path):
    """Members of the digits-100 model score above its non-members; scores.csv gives mia.json's AUC."""
    out = tmp_path / "mia"
    result = _cli("mia", ASSET, "--members", "digits:100", "--nonmembers", "digits:100:rest", "--limit", 60,
                  "--attack", "pia", "--attack", "score-norm", "--out", out, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "mia.json").read_text())
    assert set(document["attacks"]) == {"pia", "score-norm"}
    assert max(a["auc"] for a in document["attacks"].values()) >= 0.9
    rows = list(csv.DictReader((out / "scores.csv").open()))
    for name, attack in document["attacks"].items():
        members = [float(r["score"]) for r in rows if r["attack"] == name and r["set"] == "member"]
        nonmembers = [float(r["score"]) for r in rows if r["attack"] == name and r["set"] == "nonmember"]
        assert len(members) == len(nonmembers) == 60
        assert metrics.auc(members, nonmembers) == attack["auc"]
        assert attack["tpr_at_fpr"][1]["supported"] is False  # 60 non-members cannot measure FPR 0.1%
    page = (out / "mia.html").read_text()
    assert "Content-Security-Policy" in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png") >= 2 * len(document["exposed"])
    # a rerun reuses the cached scores and writes the same numbers
    again = _cli("mia", ASSET, "--members", "digits:100", "--nonmembers", "digits:100:rest", "--limit", 60,
                 "--attack", "pia", "--attack", "score-norm", "--out", out, "--device", "cpu", "--quiet", "--json")
    assert json.loads(again.stdout)["attacks"]["pia"]["auc"] == document["attacks"]["pia"]["auc"]


def test_query_images_get_p_values(tmp_path):
    out = tmp_path / "query"
    result = _cli("mia", ASSET, "--query", "digits:10", "--nonmembers", "digits:100:rest", "--limit", 40,
                  "--attack", "score-norm", "--out", out, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    query = json.loads((out / "mia.json").read_text())["attacks"]["score-norm"]["query"]
    assert len(query) == 10 and all(1 / 41 <= q["p_value"] <= 1 for q in query)
    assert np.median([q["p_value"] for q in query]) < 0.1  # digits:10 are members of the digits:100 model


@pytest.mark.parametrize("args, message", [
    (["--attack", "lira"], "unknown attack; valid attacks: loss, pia, secmi, score-norm, secmi-nns"),
    (["--setting", "pia.t=3"], "pia has no such setting"),
    (["--setting", "pia"], "expected ATTACK.KEY=VALUE"),
])
def test_bad_mia_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = _cli("mia", ASSET, "--members", "digits:100", "--nonmembers", "digits:100:rest", "--out", tmp_path,
                  "--device", "cpu", *args)
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_mia_needs_ground_truth_or_query(tmp_path):
    result = _cli("mia", ASSET, "--members", "digits:100", "--out", tmp_path, "--device", "cpu")
    assert result.exit_code == 2 and "--nonmembers" in result.output


def test_audit_attaches_an_mia_section(tmp_path):
    """audit --members/--nonmembers runs memaudit mia into OUT/mia and reports its AUCs in audit.json and report.html."""
    nonmembers = tmp_path / "nonmembers.npy"
    np.save(nonmembers, load_image_set("digits:100:rest").images[:30])
    out = tmp_path / "audit"
    result = _cli("audit", ASSET, "--train", "digits:100", "--n", 8, "--steps", 5, "--out", out, "--device", "cpu",
                  "--members", "digits:20", "--nonmembers", nonmembers, "--quiet")
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit.json").read_text())
    mia = json.loads((out / "mia" / "mia.json").read_text())
    assert set(audit["mia"]["attacks"]) == set(DEFAULT_ATTACKS)
    for name, attack in audit["mia"]["attacks"].items():
        assert attack["auc"] == mia["attacks"][name]["auc"]
    assert "Membership inference" in (out / "report.html").read_text()


def test_audit_mia_needs_both_sets(tmp_path):
    result = _cli("audit", ASSET, "--train", "digits:100", "--out", tmp_path, "--members", "digits:20")
    assert result.exit_code == 2 and "--nonmembers" in result.output


def test_class_conditional_models_score_each_image_under_its_own_label(tmp_path, tiny_class_pipeline_dir):
    """The class path: members are scored with their own labels, so changing a label changes the score."""
    from memaudit.adapters import SamplerOptions, load_model_to_query
    from memaudit.membership.predictor import Conditions, noise_predictor

    predictor = noise_predictor(load_model_to_query(str(tiny_class_pipeline_dir), SamplerOptions(device="cpu")), "m")
    assert predictor.conditioning == "class"
    digits = load_image_set("digits:10")
    x0 = predictor.encode(digits.images)
    own = ATTACKS["score-norm"].score(predictor, x0, Conditions(labels=digits.labels), {"timestep": 100, "p": 4})
    shifted = ATTACKS["score-norm"].score(predictor, x0, Conditions(labels=(digits.labels + 1) % 10), {"timestep": 100, "p": 4})
    assert not np.allclose(own, shifted)
    result = _cli("mia", tiny_class_pipeline_dir, "--members", "digits:10", "--nonmembers", "digits:10:rest", "--limit", 10,
                  "--attack", "pia", "--out", tmp_path, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "mia.json").read_text())["model"]["conditioning"] == "class"
