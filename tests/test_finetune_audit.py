"""memaudit audit FINETUNE --base BASE on a tiny Stable Diffusion with a real LoRA (made with peft), and the
prompts of a fine-tuning set: captions beside the images or in metadata.jsonl, instance prompts, long prompt
files read lazily; the paired interval of the difference of two shares."""

from __future__ import annotations

import csv
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.adapters.conditioning import PromptChooser, PromptFile, _pick
from memaudit.baseline import paired_difference
from memaudit.cli import app
from memaudit.criteria import wilson_interval
from memaudit.data import ImageSet
from memaudit.errors import ModelError
from memaudit.data import load_image_set

from conftest import write_png
from test_finetunes import make_lora


def _captioned_folder(folder: Path, n: int = 6, sidecars: bool = True) -> list[str]:
    rng = np.random.default_rng(0)
    captions = [f"a photo of sks dog {i}" for i in range(n)]
    rows = []
    for i, caption in enumerate(captions):
        write_png(folder / f"img{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
        if sidecars:
            (folder / f"img{i}.txt").write_text(caption + "\n", encoding="utf-8")
        else:
            rows.append(json.dumps({"file_name": f"img{i}.png", "text": caption}))
    if not sidecars:
        (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return captions


@pytest.mark.parametrize("layout", ["sidecar", "metadata"])
def test_training_captions_are_drawn_per_seed(layout, tmp_path):
    captions = _captioned_folder(tmp_path / "set", sidecars=layout == "sidecar")
    train = load_image_set(str(tmp_path / "set"))
    assert train.captions == captions
    chooser = PromptChooser("train", train, "model")
    seeds = list(range(40))
    expected = [captions[_pick(s, len(captions))] for s in seeds]  # the seed's own stream, nothing else
    assert chooser(seeds) == expected
    assert chooser(seeds[:7]) + chooser(seeds[7:]) == expected  # whatever the batching
    assert [captions[i] for i in chooser.indices(seeds)] == expected
    assert len(set(expected)) > 1


def test_instance_prompt_and_its_errors():
    train = ImageSet(images=np.zeros((2, 4, 4, 3), np.uint8), ids=["a", "b"], spec="set")
    chooser = PromptChooser("instance:a photo of sks dog", train, "model")
    assert chooser([5, 9]) == ["a photo of sks dog"] * 2 and chooser.indices([5]) == [0]
    with pytest.raises(ModelError, match="no prompt after instance"):
        PromptChooser("instance:  ", train, "model")
    with pytest.raises(ModelError, match="NAME.txt"):
        PromptChooser("train", train, "model")


def test_prompt_file_is_read_lazily(tmp_path, monkeypatch):
    """A prompt file is indexed in one streaming pass (a sparse offset index, no text kept) and each
    seed's prompt (seed mod count) read from disk: equal to the file read whole, whatever the batch."""
    path = tmp_path / "prompts.txt"
    lines = [f"prompt number {i} " + "x" * 80 if i % 7 else "" for i in range(200_000)]  # ~18 MB, blank lines
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reference = [line.strip() for line in lines if line.strip()]
    tracemalloc.start()
    prompts = PromptFile(path, str(path))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(prompts) == len(reference)
    assert peak < 2_000_000  # far below the file's 18 MB: nothing but the index is kept
    assert prompts.offsets.nbytes <= 8 * math.ceil(len(reference) / PromptFile.STRIDE)
    train = ImageSet(images=np.zeros((2, 4, 4, 3), np.uint8), ids=["a", "b"], spec="set")
    chooser = PromptChooser(str(path), train, "model")
    seeds = [0, 1, 1023, 1024, 5000, 171_427, 171_428, 2**62 + 17, 12_345_678]
    expected = [reference[s % len(reference)] for s in seeds]
    assert chooser(seeds) == expected
    assert chooser(seeds[::-1]) == expected[::-1]
    assert sum((chooser([s]) for s in seeds), []) == expected
    monkeypatch.setattr(PromptFile, "STRIDE", 3)  # another index density reads the same prompts
    assert PromptChooser(str(path), train, "model")(seeds) == expected


def test_paired_difference_interval():
    """Newcombe's method 10: the published figures of an example (Fagerland, Lydersen & Laake, "Statistical
    Analysis of Contingency Tables", ch. 8: Cavo et al. 2012, table 59 6 / 16 80: -0.0621, 95% CI -0.1186 to
    -0.0046), the Wilson limits recovered when one share is 0 everywhere, and ~95% coverage in simulation."""
    cavo = paired_difference(np.array([1] * 59 + [1] * 6 + [0] * 16 + [0] * 80, bool),
                             np.array([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, bool))
    assert [round(cavo["value"], 4), *(round(v, 4) for v in cavo["ci95"])] == [-0.0621, -0.1186, -0.0046]
    first = np.array([1] * 12 + [1] * 36 + [0] * 2, bool)
    second = np.array([0] * 12 + [1] * 36 + [1] * 2, bool)
    result = paired_difference(first, second)
    assert result["value"] == pytest.approx(0.2)
    low, high = result["ci95"]
    assert low < 0.2 < high and result["pairs"] == {"both": 36, "finetune_only": 12, "base_only": 2, "neither": 0}
    only = np.array([1] * 5 + [0] * 15, bool)  # second share 0: phi = 0, the interval is Wilson's of the first
    zero = paired_difference(only, np.zeros(20, bool))
    l1, u1 = wilson_interval(5, 20)
    _, u2 = wilson_interval(0, 20)
    assert zero["ci95"][1] == pytest.approx(0.25 + (u1 - 0.25))
    assert zero["ci95"][0] == pytest.approx(0.25 - math.hypot(0.25 - l1, u2))
    rng = np.random.default_rng(1)
    covered, trials = 0, 2000
    for _ in range(trials):  # correlated pairs, true difference 0.3 - 0.2 = 0.1
        u = rng.random(60)
        a, b = u < 0.3, (u < 0.15) | ((u > 0.85) & (u < 0.9))
        lo, hi = paired_difference(a, b)["ci95"]
        covered += lo <= 0.1 <= hi
    assert 0.92 <= covered / trials <= 0.99


def _neighbors(run: Path) -> list[dict]:
    with open(run / "neighbors.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["space"] == "pixel"]


def test_base_versus_fine_tune_audit(tiny_sd_pipeline_dir, tmp_path):
    """A real LoRA (peft, random weights) on the tiny SD, audited with --base: both runs on the same seeds
    and prompts, both shares recorded with their intervals and difference, the pairs of flagged seeds."""
    lora = make_lora(tiny_sd_pipeline_dir, tmp_path / "lora", seed=1)
    _captioned_folder(tmp_path / "set")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "audit", str(tiny_sd_pipeline_dir), "--lora", f"{lora}:0.9", "--base", str(tiny_sd_pipeline_dir),
        "--train", str(tmp_path / "set"), "--prompts", "train", "--n", "5", "--steps", "3",
        "--threshold", "0.999", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "added" in result.output
    from memaudit.outputs import read_audit

    audit, base_audit = read_audit(out), read_audit(out / "base")  # both valid against the schema
    section = audit["base_comparison"]
    assert section["base"]["fingerprint"] == base_audit["model"]["fingerprint"] != audit["model"]["fingerprint"]
    assert audit["model"]["settings"]["finetune"]["loras"][0]["scale"] == 0.9
    assert "finetune" not in base_audit["model"]["settings"]
    ft_samples, base_samples = np.load(out / "samples.npz"), np.load(out / "base" / "samples.npz")
    assert list(ft_samples["prompts"]) == list(base_samples["prompts"])
    assert list(ft_samples["prompt_index"]) == list(base_samples["prompt_index"])
    assert np.abs(ft_samples["images"].astype(int) - base_samples["images"]).max() > 5  # the LoRA changed them
    ft_rows, base_rows = _neighbors(out), _neighbors(out / "base")
    ft_flags = np.array([r["memorized"] == "true" for r in ft_rows])
    base_flags = np.array([r["memorized"] == "true" for r in base_rows])
    ratios = section["nn_ratio"]
    assert ratios["finetune"]["fraction"] == audit["memorization_ratio"] == ft_flags.mean()
    assert ratios["base"]["fraction"] == base_audit["memorization_ratio"] == base_flags.mean()
    assert ratios["difference"]["value"] == pytest.approx(ft_flags.mean() - base_flags.mean())
    assert ratios["base"]["ci95"] == list(wilson_interval(int(base_flags.sum()), 5))
    assert section["verdict"]["finetune"]["fraction"] >= ratios["finetune"]["fraction"]
    flagged = ft_flags | base_flags
    assert flagged.any()
    pairs = section["pairs"]
    assert sorted(p["sample"] for p in pairs) == list(np.nonzero(flagged)[0])
    for pair in pairs:
        i = pair["sample"]
        assert pair["finetune"]["d1"] == pytest.approx(float(ft_rows[i]["d1"]))
        assert pair["base"]["ratio"] == pytest.approx(float(base_rows[i]["ratio"]))
        assert pair["prompt"] == str(ft_samples["prompts"][i])
        assert set(pair["images"]) == {"finetune", "base", "nn1"}
    page = (out / "report.html").read_text()
    assert 'id="base-pairs"' in page and "Base versus fine-tune" in page
    from memaudit.reports import write_report

    write_report(out, redact="omit")  # the pairs' images follow --redact like every other image
    page = (out / "report.html").read_text()
    pairs_html = page[page.index('id="base-pairs"'):]
    assert "data:image" not in pairs_html.split("</div>\n</div>")[0] and "omitted" in pairs_html


def test_per_sample_table_names_each_seeds_prompt(tmp_path, tiny_sd_pipeline_dir):
    """The report's full table of a text-to-image audit: each sample's prompt and the training row whose
    caption its seed drew, as samples.npz holds them."""
    _captioned_folder(tmp_path / "set")
    import memaudit

    result = memaudit.audit(str(tiny_sd_pipeline_dir), train=str(tmp_path / "set"), prompts="train", n=3, steps=2,
                            out=tmp_path / "run")
    table = result.audit["spaces"]["pixel"]["per_sample"]
    samples = np.load(tmp_path / "run" / "samples.npz")
    column = {name: [row[table["columns"].index(name)] for row in table["rows"]] for name in ("prompt", "prompt_index")}
    assert column["prompt"] == [str(p) for p in samples["prompts"]]
    assert column["prompt_index"] == [int(i) for i in samples["prompt_index"]]
