"""Feature spaces loaded through the real paths from weights saved here, their caches, and audits in them."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from memaudit.cli import app
from memaudit.errors import InputError
from memaudit.features import get_space
from memaudit.features.cache import cache_key, cached_features
from memaudit.search import knn

runner = CliRunner()

TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
             "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def photo_tiles() -> np.ndarray:
    """300 real 32x32 RGB tiles cut from the photographs that ship with scikit-learn."""
    import sklearn.datasets

    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    tiles = []
    for name in ("china.jpg", "flower.jpg"):
        photo = np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"))
        for y in range(8, photo.shape[0] - 40, 40):
            for x in range(8, photo.shape[1] - 40, 40):
                tiles.append(photo[y:y + 32, x:x + 32])
    return np.stack(tiles)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """An open_clip model of the user's own config, random weights saved with torch.save."""
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    weights = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), weights)
    return config, weights, model


@pytest.fixture(scope="module")
def spectrum_model(tmp_path_factory):
    """A TorchScript model in SSCD's place whose features ignore circular shifts by construction:
    the magnitude spectrum of the image pooled back to 32x32."""
    import torch

    class Spectrum(torch.nn.Module):
        def forward(self, x):
            x = torch.nn.functional.adaptive_avg_pool2d(x, 32)
            return torch.log1p(torch.fft.rfft2(x).abs()).flatten(1)

    path = tmp_path_factory.mktemp("sscd") / "spectrum.torchscript.pt"
    torch.jit.script(Spectrum()).save(str(path))
    return path


def nearest(space, queries, database):
    similarities, indices = knn(space.extract(queries), space.extract(database), 2, metric="ip")
    return similarities, indices


def test_clip_space_from_a_local_config_and_weights(tiny_clip, photo_tiles):
    config, weights, model = tiny_clip
    space = get_space(f"clip:{config}@{weights}")
    assert space.metric == "cosine" and space.settings["model"] == "tiny-clip"
    rows = np.array([5, 77, 150, 299])
    similarities, indices = nearest(space, photo_tiles[rows], photo_tiles)
    assert indices[:, 0].tolist() == rows.tolist()  # an exact copy is its own nearest neighbour
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-5)

    # the same features as open_clip's own preprocessing and encoder give
    import open_clip
    import torch

    transform = open_clip.image_transform(model.visual.image_size, is_train=False)
    with torch.inference_mode():
        direct = model.eval().encode_image(torch.stack([transform(Image.fromarray(t)) for t in photo_tiles[rows]]))
    direct = torch.nn.functional.normalize(direct, dim=1).numpy()
    agreement = (direct * space.extract(photo_tiles[rows])).sum(1)
    assert agreement.min() > 0.99


def test_dinov2_space_from_timm_weights(tmp_path, photo_tiles):
    from memaudit.torchcompat import prepare_torchvision

    prepare_torchvision()
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224)
    with torch.no_grad():  # DINOv2 initialises its layer scales to 1e-5: every image would look alike
        for name, parameter in model.named_parameters():
            if name.endswith(".gamma"):
                parameter.fill_(1.0)
    weights = tmp_path / "dinov2_vits14.pth"
    torch.save(model.state_dict(), weights)
    space = get_space(f"dinov2:vit_small_patch14_dinov2@{weights}")
    similarities, indices = nearest(space, photo_tiles[[3, 200]], photo_tiles[np.r_[:6, 200]])
    assert indices[:, 0].tolist() == [3, 6]
    np.testing.assert_allclose(similarities[:, 0], 1.0, atol=1e-5)

    # torch.hub's layout (facebookresearch/dinov2): a mask token and position embeddings for 518 px
    hub = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=518).state_dict()
    hub["mask_token"] = torch.zeros(1, hub["cls_token"].shape[-1])
    torch.save(hub, tmp_path / "dinov2_vits14_pretrain.pth")
    hub_space = get_space(f"dinov2:vit_small_patch14_dinov2@{tmp_path / 'dinov2_vits14_pretrain.pth'}")
    assert hub_space.extract(photo_tiles[:2]).shape == (2, 384)


def test_sscd_space_finds_shifted_copies_that_pixel_distance_misses(spectrum_model, photo_tiles, tmp_path):
    rng = np.random.default_rng(0)
    sources = rng.choice(len(photo_tiles), 40, replace=False)
    shifted = np.roll(photo_tiles[sources], (8, 8), axis=(1, 2))
    np.savez(tmp_path / "train.npz", images=photo_tiles)
    np.savez(tmp_path / "samples.npz", images=shifted)
    out = tmp_path / "run"
    result = runner.invoke(app, ["audit", "--samples", str(tmp_path / "samples.npz"), "--train", str(tmp_path / "train.npz"),
                                 "--space", f"sscd:{spectrum_model}", "--criterion-threshold", "cosine=0.985",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit.json").read_text())
    pixel, sscd = audit["spaces"]["pixel"], audit["spaces"][f"sscd:{spectrum_model}"]
    assert pixel["criteria"]["nn-ratio"]["memorized"] == 0  # pixel L2 misses every shifted copy
    assert sscd["criteria"]["cosine"]["memorized"] == 40 and sscd["criteria"]["cosine"]["threshold"] == 0.985
    assert sscd["metric"] == "cosine" and not sscd["criteria"]["cosine"]["calibrated"]
    for finding in audit["findings"]:
        assert finding["other_spaces"][f"sscd:{spectrum_model}"]["index"] == sources[finding["sample"]]
    html = (out / "report.html").read_text()
    assert "sscd:" in html and "uncalibrated" in html and "NN1 in sscd:" in html

    from memaudit.reports import render_report

    assert "data:image" not in render_report(audit, redact="omit")  # other spaces' neighbours are redacted too


def test_holdout_gives_each_threshold_a_false_positive_rate(tmp_path):
    """The holdout's rate equals the criterion applied to the holdout by hand."""
    from memaudit.criteria import nn_ratio
    from memaudit.data import load_image_set

    digits = load_image_set("digits").images
    train, holdout = digits[:1000], digits[1000:1400]
    np.savez(tmp_path / "train.npz", images=train)
    np.savez(tmp_path / "holdout.npz", images=holdout)
    np.savez(tmp_path / "samples.npz", images=np.concatenate([train[:30], digits[1400:1470]]))
    out = tmp_path / "run"
    result = runner.invoke(app, ["audit", "--samples", str(tmp_path / "samples.npz"), "--train", str(tmp_path / "train.npz"),
                                 "--holdout", str(tmp_path / "holdout.npz"), "--threshold", "0.6", "--out", str(out),
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    audit = json.loads((out / "audit.json").read_text())
    criterion = audit["spaces"]["pixel"]["criteria"]["nn-ratio"]
    distances, _ = knn(holdout, train, 2)
    expected = nn_ratio(distances, 0.6).memorized.mean()
    assert criterion["calibrated"] and criterion["fpr"] == pytest.approx(expected) and expected > 0
    assert criterion["fpr_ci95"][0] <= expected <= criterion["fpr_ci95"][1]
    assert criterion["memorized"] >= 30  # the exact copies
    histogram = audit["spaces"]["pixel"]["nn_distance_histogram"]
    assert sum(histogram["holdout"]) == 400 and sum(histogram["samples"]) == 100
    assert audit["holdout"]["n"] == 400
    assert "false-positive" in (out / "report.html").read_text()


def test_holdout_of_another_shape_is_refused(tmp_path):
    np.savez(tmp_path / "holdout.npz", images=np.zeros((5, 4, 4, 1), np.uint8))
    result = runner.invoke(app, ["audit", "optimal", "--train", "digits:20", "--holdout", str(tmp_path / "holdout.npz"),
                                 "--out", str(tmp_path / "run"), "--n", "4", "--quiet"])
    assert result.exit_code == 2 and "--holdout" in result.stderr and "\n" not in result.stderr.strip()


def test_pixel_n_space_box_resizes():
    space = get_space("pixel-4")
    image = np.kron(np.arange(16, dtype=np.uint8).reshape(4, 4), np.ones((2, 2), np.uint8)) * 10
    features = space.extract(image[None, :, :, None])
    np.testing.assert_array_equal(features[0], np.arange(16) * 10)


@pytest.mark.parametrize("spec, fragment", [
    ("clip:ViT-B-32@/nonexistent/weights.pt", "weights file /nonexistent/weights.pt not found"),
    ("dinov2:vit_small_patch14_dinov2@/nonexistent.pth", "not found"),
    ("sscd:/nonexistent.pt", "sscd_disc_mixup.torchscript.pt"),
    ("clip:no-such-model@x.pt", "open_clip has no model"),
    ("vgg:model", "valid spaces are pixel, pixel-N"),
    ("pixel-0", "the size must be from 1 to 4096"),
])
def test_bad_spaces_are_clear_errors(spec, fragment):
    with pytest.raises(InputError, match="never downloads" if "not found" in fragment else None) as error:
        get_space(spec)
    assert fragment in str(error.value)


def test_weights_that_do_not_fit_the_model(tiny_clip, tmp_path):
    import torch

    config, _, _ = tiny_clip
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3)}, wrong)
    with pytest.raises(InputError, match="does not fit tiny-clip"):
        get_space(f"clip:{config}@{wrong}")


def test_pickled_objects_are_not_loaded_as_weights(tiny_clip, tmp_path):
    import torch

    config, _, model = tiny_clip
    pickled = tmp_path / "model.pt"
    torch.save(model, pickled)  # a whole pickled module: loading it would run code
    with pytest.raises(InputError, match="not a plain state dict"):
        get_space(f"clip:{config}@{pickled}")


def test_cache_keys_follow_pixels_weights_and_preprocessing(tiny_clip, spectrum_model, photo_tiles, tmp_path):
    import shutil

    from memaudit.storage import fingerprint_array as fingerprint_images
    from memaudit.features.encoders import Preprocess, make_sscd_space

    images = photo_tiles[:20].copy()
    space = make_sscd_space("sscd:x", str(spectrum_model), "cpu")
    fingerprint = fingerprint_images(images)
    first, cached = cached_features(space, images, fingerprint, root=tmp_path)
    assert not cached
    again, cached = cached_features(space, images, fingerprint, root=tmp_path)
    assert cached and np.array_equal(first, again)

    changed = images.copy()
    changed[7, 3, 3, 0] ^= 1  # one pixel
    assert fingerprint_images(changed) != fingerprint
    _, cached = cached_features(space, changed, fingerprint_images(changed), root=tmp_path)
    assert not cached

    other_weights = tmp_path / "other.pt"  # the same model saved again: same bytes, same key
    shutil.copy(spectrum_model, other_weights)
    assert cache_key(fingerprint, make_sscd_space("sscd:x", str(other_weights), "cpu")) == cache_key(fingerprint, space)
    config, weights, model = tiny_clip
    import torch

    torch.manual_seed(1)
    import open_clip

    retrained = tmp_path / "retrained.pt"
    torch.save(open_clip.create_model("tiny-clip", pretrained=None).state_dict(), retrained)
    clip_a = get_space(f"clip:{config}@{weights}")
    clip_b = get_space(f"clip:{config}@{retrained}")
    assert cache_key(fingerprint, clip_a) != cache_key(fingerprint, clip_b)

    import memaudit.features.encoders as encoders

    other_preprocess = Preprocess(resize=256, crop=None, mean=encoders.IMAGENET_MEAN, std=encoders.IMAGENET_STD,
                                  interpolation="bilinear")
    resized = encoders._encoder_space("sscd:x", torch.jit.load(str(spectrum_model)), other_preprocess,
                                      encoders.file_digest(spectrum_model), "cpu", {}, {}, lambda m, x: m(x))
    assert cache_key(fingerprint, resized) != cache_key(fingerprint, space)
    _, cached = cached_features(resized, images, fingerprint, root=tmp_path)
    assert not cached


def test_index_command_fills_the_cache_that_audits_use(spectrum_model, tmp_path):
    spec = f"sscd:{spectrum_model}"
    first = runner.invoke(app, ["index", "digits:200", "--space", spec, "--space", "pixel", "--json", "--quiet"])
    assert first.exit_code == 0, first.output
    rows = json.loads(first.stdout)
    assert [r["space"] for r in rows] == [spec, "pixel"]
    assert rows[0]["cached"] is False and rows[0]["n"] == 200 and os.path.isfile(rows[0]["path"])
    again = json.loads(runner.invoke(app, ["index", "digits:200", "--space", spec, "--json", "--quiet"]).stdout)
    assert again[0]["cached"] is True and again[0]["path"] == rows[0]["path"]


def test_index_command_rejects_a_missing_space_file(tmp_path):
    result = runner.invoke(app, ["index", "digits:20", "--space", f"sscd:{tmp_path}/none.pt"])
    assert result.exit_code == 2 and "not found" in result.stderr


@pytest.mark.parametrize("value", ["cosine", "cosine=high", "l2-tiles=0.1"])
def test_bad_criterion_threshold(value, tmp_path):
    result = runner.invoke(app, ["audit", "optimal", "--train", "digits:20", "--criterion-threshold", value,
                                 "--out", str(tmp_path / "run"), "--n", "4", "--quiet"])
    assert result.exit_code == 2 and "--criterion-threshold" in result.stderr, result.output
    assert "nn-ratio-dedup" in result.stderr  # names the valid criteria


def test_approximate_index_reports_its_recall(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["audit", "optimal", "--train", "digits:400", "--index", "hnsw", "--n", "50",
                                 "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    search = json.loads((out / "audit.json").read_text())["spaces"]["pixel"]["search"]
    assert search["index"] == "hnsw" and 0.9 <= search["recall_at_k"] <= 1.0


def test_a_holdout_holding_training_images_is_refused(tmp_path):
    result = runner.invoke(app, ["audit", "optimal", "--train", "digits:50", "--holdout", "digits",
                                 "--out", str(tmp_path / "run"), "--n", "4", "--quiet"])
    assert result.exit_code == 2
    assert "--holdout digits: 50 of its 1797 images are training images" in result.stderr


def test_squash_preprocessing_resizes_without_cropping():
    from memaudit.features.encoders import Preprocess

    wide = np.zeros((1, 8, 16, 3), np.uint8)
    wide[:, :, :4] = 255  # a white band on the left, which a centre crop would cut away
    squash = Preprocess(resize=8, crop=8, mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear", squash=True)
    crop = Preprocess(resize=8, crop=8, mean=(0, 0, 0), std=(1, 1, 1), interpolation="bilinear")
    assert squash(wide, "cpu")[0, 0, :, 0].min() > 0.9  # the band survives, squeezed into the first columns
    assert crop(wide, "cpu")[0, 0].max() < 0.1  # the centre crop drops it
    assert squash.describe() != crop.describe()  # and the feature cache tells them apart
