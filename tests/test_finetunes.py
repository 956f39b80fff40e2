"""Fine-tunes on a tiny Stable Diffusion (real diffusers/transformers classes, random weights saved with
save_pretrained): LoRA files made with peft (diffusers/PEFT layout, and kohya's naming converted by hand),
a textual-inversion embedding, a fine-tuned UNet folder on its base; fingerprints; bad inputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from memaudit.adapters import SamplerOptions, load_model
from memaudit.cli import app
from memaudit.data import ImageSet
from memaudit.errors import ModelError

STEPS = 3
PROMPT = "a photo of sks dog"


def _train(captions=None) -> ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    return ImageSet(images=images, ids=[f"t{i}" for i in range(4)], spec="train", captions=captions or [PROMPT] * 4)


def make_lora(pipeline_dir: Path, out: Path, seed: int, rank: int = 4) -> Path:
    """A LoRA of the UNet's attention projections with random A and B (peft), saved as diffusers'
    training scripts save it (``save_lora_weights``: PEFT keys under ``unet.``)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(pipeline_dir / "unet")
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn_like(parameter) * 0.3)
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet),
                                              safe_serialization=True)
    return out / "pytorch_lora_weights.safetensors"


def to_kohya(peft_file: Path, out: Path, rank: int = 4) -> Path:
    """The same LoRA under kohya's names: ``lora_unet_<module path, dots as underscores>.lora_down/.lora_up``
    and an ``.alpha`` per module (alpha = rank: scale 1, as in the PEFT file)."""
    import torch
    from safetensors.torch import load_file, save_file

    converted = {}
    for key, value in load_file(peft_file).items():
        match = re.fullmatch(r"unet\.(.+)\.lora_([AB])\.weight", key)
        assert match, key
        module = "lora_unet_" + match.group(1).replace(".", "_")
        converted[f"{module}.{'lora_down' if match.group(2) == 'A' else 'lora_up'}.weight"] = value
        converted[f"{module}.alpha"] = torch.tensor(float(rank))
    save_file(converted, out)
    return out


@pytest.fixture(scope="module")
def files(tiny_sd_pipeline_dir, tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("finetune-files")
    first = make_lora(tiny_sd_pipeline_dir, folder / "first", seed=1)
    second = make_lora(tiny_sd_pipeline_dir, folder / "second", seed=2)
    kohya = to_kohya(first, folder / "kohya.safetensors")
    torch.manual_seed(3)
    embedding = folder / "sks.safetensors"
    save_file({"<sks>": torch.randn(32) * 5}, embedding)
    prompts = folder / "prompts.txt"
    prompts.write_text(f"{PROMPT}\n<sks> dog\n")
    return {"first": first, "second": second, "kohya": kohya, "embedding": embedding, "prompts": prompts}


_LOADED: dict = {}  # adapters (and their samples) shared by the tests that only read them


def _adapter(pipeline_dir, files, fresh: bool = False, **options):
    options.setdefault("prompts", str(files["prompts"]))
    options.setdefault("steps", STEPS)
    key = (str(pipeline_dir), tuple(sorted((k, str(v)) for k, v in options.items())))
    if fresh or key not in _LOADED:
        adapter = load_model(str(pipeline_dir), _train(), SamplerOptions(**options))
        if fresh:
            return adapter
        _LOADED[key] = adapter
    return _LOADED[key]


def _sample(adapter, seeds=(0, 1)):
    cached = getattr(adapter, "_test_samples", {})
    if tuple(seeds) not in cached:
        cached[tuple(seeds)] = adapter.sample(list(seeds), batch_size=2).astype(np.int16)
        adapter._test_samples = cached
    return cached[tuple(seeds)]


def test_lora_scale_zero_is_the_base_and_scale_changes_samples(tiny_sd_pipeline_dir, files):
    base = _adapter(tiny_sd_pipeline_dir, files)
    zero = _adapter(tiny_sd_pipeline_dir, files, loras=(f"{files['first']}:0",))
    one = _adapter(tiny_sd_pipeline_dir, files, loras=(str(files["first"]),))
    half = _adapter(tiny_sd_pipeline_dir, files, loras=(f"{files['first']}:0.5",))
    base_images = _sample(base)
    assert np.abs(_sample(zero) - base_images).max() <= 1  # LoRA at scale 0 adds nothing (float rounding only)
    assert np.abs(_sample(one) - base_images).max() > 10
    assert np.abs(_sample(half) - _sample(one)).max() > 5
    lora = one.settings()["finetune"]["loras"][0]
    assert lora["scale"] == 1.0 and lora["layout"] == "peft" and lora["sha256"].startswith("sha256:")
    prints = {base.fingerprint(), zero.fingerprint(), one.fingerprint(), half.fingerprint()}
    assert len(prints) == 4  # base, and each scale, never share cached samples


def test_two_loras_and_their_fingerprints(tiny_sd_pipeline_dir, files):
    first = _adapter(tiny_sd_pipeline_dir, files, loras=(str(files["first"]),))
    second = _adapter(tiny_sd_pipeline_dir, files, loras=(str(files["second"]),))
    both = _adapter(tiny_sd_pipeline_dir, files, loras=(str(files["first"]), f"{files['second']}:0.7"))
    only_first = _adapter(tiny_sd_pipeline_dir, files, loras=(str(files["first"]), f"{files['second']}:0"))
    assert [lora["adapter_name"] for lora in both.settings()["finetune"]["loras"]] == ["lora0", "lora1"]
    assert both.pipeline.get_active_adapters() == ["lora0", "lora1"]
    assert np.abs(_sample(only_first) - _sample(first)).max() <= 1  # the second at scale 0 adds nothing
    assert np.abs(_sample(both) - _sample(first)).max() > 5
    assert len({first.fingerprint(), second.fingerprint(), both.fingerprint(), only_first.fingerprint()}) == 4


def test_kohya_layout_loads_to_the_same_weights(tiny_sd_pipeline_dir, files):
    peft = _adapter(tiny_sd_pipeline_dir, files, fresh=True, loras=(str(files["first"]),))  # fused below
    kohya = _adapter(tiny_sd_pipeline_dir, files, fresh=True, loras=(str(files["kohya"]),))
    assert kohya.settings()["finetune"]["loras"][0]["layout"] == "kohya"
    assert np.abs(_sample(kohya) - _sample(peft)).max() <= 1
    for pipeline in (peft.pipeline, kohya.pipeline):  # the LoRA folded into the UNet's weights
        pipeline.fuse_lora()
    a, b = peft.pipeline.unet.state_dict(), kohya.pipeline.unet.state_dict()
    fused = {k: v for k, v in a.items() if "to_q" in k and "lora" not in k}
    assert fused and all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-6) for k in fused)


def test_textual_inversion_token_is_used(tiny_sd_pipeline_dir, files):
    import torch
    from safetensors.torch import load_file

    plain = _adapter(tiny_sd_pipeline_dir, files, prompts=f"instance:<sks> dog")
    adapter = _adapter(tiny_sd_pipeline_dir, files, prompts=f"instance:<sks> dog", embeddings=(str(files["embedding"]),))
    assert adapter.settings()["finetune"]["embeddings"][0]["tokens"] == ["<sks>"]
    tokenizer, encoder = adapter.pipeline.tokenizer, adapter.pipeline.text_encoder
    token = tokenizer.convert_tokens_to_ids("<sks>")
    assert tokenizer("<sks> dog").input_ids[1] == token  # one token, not its characters
    row = encoder.get_input_embeddings().weight[token].detach()
    assert torch.allclose(row, load_file(files["embedding"])["<sks>"])
    assert np.abs(_sample(adapter) - _sample(plain)).max() > 5
    assert adapter.fingerprint() != plain.fingerprint()


def test_component_folder_on_base_equals_the_full_pipeline(tiny_sd_pipeline_dir, files, tmp_path):
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_pipeline_dir / "unet")
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.mul_(1.1)
    unet.save_pretrained(tmp_path / "unet-ft")  # the fine-tune as a training script leaves it
    full = StableDiffusionPipeline.from_pretrained(tiny_sd_pipeline_dir, unet=unet)
    full.save_pretrained(tmp_path / "full-ft")
    options = SamplerOptions(prompts=str(files["prompts"]), steps=STEPS)
    component = load_model(str(tmp_path / "unet-ft"), _train(), SamplerOptions(prompts=str(files["prompts"]),
                                                                                 steps=STEPS, base=str(tiny_sd_pipeline_dir)))
    pipeline = load_model(str(tmp_path / "full-ft"), _train(), options)
    base = load_model(str(tiny_sd_pipeline_dir), _train(), options)
    assert np.abs(_sample(component) - _sample(pipeline)).max() <= 1
    assert np.abs(_sample(component) - _sample(base)).max() > 5
    settings = component.settings()["finetune"]["component"]
    assert settings["name"] == "unet" and settings["class"] == "UNet2DConditionModel"
    assert component.fingerprint() != base.fingerprint()
    with pytest.raises(ModelError, match="give --base"):
        load_model(str(tmp_path / "unet-ft"), _train(), options)


def _cli(args):
    result = CliRunner().invoke(app, ["audit", *args])
    return result.exit_code, result.output


@pytest.mark.parametrize("case", ["missing", "scale", "nan", "pickle", "optimal", "embedding-on-optimal",
                                  "base-not-pipeline", "base-with-samples", "base-is-model", "component-without-base"])
def test_bad_fine_tune_inputs_are_one_line_exit_2(case, tiny_sd_pipeline_dir, files, tmp_path):
    pickle = tmp_path / "lora.bin"
    pickle.write_bytes(b"not really")
    model = [str(tiny_sd_pipeline_dir), "--prompts", str(files["prompts"])]
    args, expected = {
        "missing": (model + ["--lora", str(tmp_path / "none.safetensors")], "no such file"),
        "scale": (model + ["--lora", f"{files['first']}:strong"], "is not a number"),
        "nan": (model + ["--lora", f"{files['first']}:nan"], "not finite"),
        "pickle": (model + ["--lora", str(pickle)], "--trust-checkpoint"),
        "optimal": (["optimal", "--lora", str(files["first"])], "--lora"),
        "embedding-on-optimal": (["optimal", "--embedding", str(files["embedding"])], "--embedding"),
        "base-not-pipeline": (model + ["--base", str(tmp_path)], "not a diffusers pipeline folder"),
        "base-with-samples": (["--samples", str(tmp_path), "--base", str(tiny_sd_pipeline_dir)], "give MODEL"),
        "base-is-model": (model + ["--base", str(tiny_sd_pipeline_dir)], "nothing to compare"),
        "component-without-base": ([str(tiny_sd_pipeline_dir / "unet"), "--prompts", str(files["prompts"])], "give --base"),
    }[case]
    code, output = _cli([*args, "--train", "digits:20", "--n", "2", "--out", str(tmp_path / "run")])
    assert code == 2, output
    assert expected in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1
