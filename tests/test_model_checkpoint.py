"""Checkpoints (save, load, clear errors), the paper preset on the meta device, pretrained-dir
errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pretrained_dirs import write_components
from safetensors.torch import load_file, save_file

from lmgendrive.checkpoint import (
    ModelIdentity,
    build_untrained,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)
from lmgendrive.checkpoint_meta import source_config
from lmgendrive.config import PretrainedPaths, preset_config
from lmgendrive.model import LMGenDrive
from lmgendrive.pretrained import load_components
from lmgendrive.train.stages import set_stage
from schemas.errors import CheckpointError

INSTRUCTION = ["Change to the left lane."]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[LMGenDrive, Path, ModelIdentity]:
    model = build_untrained("tiny", seed=3).eval()
    directory = tmp_path_factory.mktemp("ckpt") / "tiny"
    identity = save_checkpoint(model, directory, readme="# test checkpoint\n")
    return model, directory, identity


def _copy(directory: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    target.mkdir()
    for f in directory.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    return target


def _seed_frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, 3, 2, 32, 32, 3), dtype=np.uint8)


def test_save_writes_the_documented_files(saved):
    model, directory, identity = saved
    names = {p.name for p in directory.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= names
    assert not directory.with_name("tiny.partial").exists()
    meta = json.loads((directory / "config.json").read_text())
    assert meta["weights_sha256"] == file_sha256(directory / "model.safetensors")
    assert identity == ModelIdentity(meta["model_id"], meta["weights_sha256"])
    assert meta["model_id"].startswith("lmgendrive-tiny-")
    assert source_config(directory) == model.config  # read without the weights


def test_save_load_gives_identical_outputs(saved):
    model, directory, identity = saved
    loaded, loaded_identity = load_checkpoint(directory, device="cpu")
    assert loaded_identity == identity
    a = model.rollout(_seed_frames(), INSTRUCTION, horizon=8, seeds=[4])
    b = loaded.rollout(_seed_frames(), INSTRUCTION, horizon=8, seeds=[4])
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.waypoints, b.waypoints)
    np.testing.assert_array_equal(a.controls, b.controls)


def test_saving_again_replaces_the_directory(saved, tmp_path):
    model = saved[0]
    save_checkpoint(model, tmp_path / "c")
    first = file_sha256(tmp_path / "c" / "model.safetensors")
    save_checkpoint(model, tmp_path / "c", model_id="renamed")
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model_id"] == "renamed"
    assert file_sha256(tmp_path / "c" / "model.safetensors") == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_corrupt_weights_are_reported(saved, tmp_path):
    directory = _copy(saved[1], tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupt or was replaced"):
        load_checkpoint(directory, device="cpu")
    meta = json.loads((directory / "config.json").read_text())
    del meta["weights_sha256"]
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(directory, device="cpu")


def _rewrite_weights(directory: Path, edit) -> None:
    weights = directory / "model.safetensors"
    state = load_file(weights)
    edit(state)
    save_file(state, weights)
    meta = json.loads((directory / "config.json").read_text())
    meta["weights_sha256"] = file_sha256(weights)
    (directory / "config.json").write_text(json.dumps(meta))


def test_missing_unexpected_and_misshaped_tensors_are_listed(saved, tmp_path):
    directory = _copy(saved[1], tmp_path)

    def edit(state):
        del state["llm.world_queries"]
        state["extra.weight"] = torch.zeros(2)
        state["llm.action_queries"] = torch.zeros(5, 7)

    _rewrite_weights(directory, edit)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(directory, device="cpu")
    message = str(err.value)
    assert "missing tensors (1): llm.world_queries" in message
    assert "unexpected tensors (1): extra.weight" in message
    assert "wrong shape (1): llm.action_queries (5, 7) (config wants (4, 64))" in message


def test_config_mismatch_is_reported(saved, tmp_path):
    directory = _copy(saved[1], tmp_path)
    meta = json.loads((directory / "config.json").read_text())
    meta["config"]["qformer"]["hidden"] = 48
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError,
        match=r"does not match the model described by .*config.json[\s\S]*wrong shape",
    ):
        load_checkpoint(directory, device="cpu")
    meta["config"]["qformer"]["widht"] = 1
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"config.json: .*unknown key 'widht' in config.qformer"
    ):
        load_checkpoint(directory, device="cpu")
    del meta["config"]["qformer"]["widht"]
    meta["config"]["sampler"]["name"] = meta["config"]["sampler"].pop("scheduler")
    (directory / "config.json").write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"config.json: .*sampler.name is now config.sampler.scheduler"
    ):
        source_config(directory)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(directory, device="cpu")
    (directory / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(directory, device="cpu")


def test_sources_other_than_directories(tmp_path):
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a preset"):
        load_checkpoint(tmp_path / "nowhere", device="cpu")
    tiny, identity = load_checkpoint("tiny", device="cpu")
    assert tiny.config.preset == "tiny" and not tiny.training
    assert identity == load_checkpoint("tiny", device="cpu")[1]
    assert identity.model_id == f"lmgendrive-tiny-{identity.sha256[:12]}"


def test_paper_preset_without_local_weights_names_file_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("LMGD_PRETRAINED_DIR", str(tmp_path))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("paper", device="cpu")
    message = str(err.value)
    assert str(tmp_path / "vicuna-7b-v1.5" / "config.json") in message
    assert "https://huggingface.co/lmsys/vicuna-7b-v1.5" in message


def test_paper_preset_parameter_counts_on_meta_device():
    with torch.device("meta"):
        model = LMGenDrive(preset_config("paper"))
    counts = model.parameter_counts()
    logging.getLogger(__name__).info(
        "paper parameter counts: %s", {k: f"{v / 1e6:.1f}M" for k, v in counts.items()}
    )
    assert 6.5e9 < counts["llm"] < 6.8e9  # Vicuna-7B decoder + embeddings (no LM head)
    assert 0.85e9 < counts["unet"] - counts["motion_modules"] < 0.87e9  # SD-1.5 UNet
    assert 0.44e9 < counts["motion_modules"] < 0.46e9  # AnimateDiff v1.5-2 motion modules
    assert 0.30e9 < counts["clip"] < 0.31e9  # CLIP ViT-L/14 vision tower
    assert 0.08e9 < counts["vae"] < 0.09e9  # SD-1.5 VAE
    assert counts["vision"] > 23e6  # ResNet-50 trunk + transformer
    assert next(model.parameters()).device.type == "meta"


def test_pretrained_components_load_from_local_directories(tmp_path, monkeypatch):
    """The paper preset's loading path, on tiny stand-ins (the UNet input is widened for
    concat_last_latent)."""
    monkeypatch.setenv("LMGD_PRETRAINED_DIR", str(tmp_path))
    config = preset_config("tiny").model_copy(
        update={
            "pretrained": PretrainedPaths(
                llm="llm", stable_diffusion="sd", motion_adapter="adapter", clip="clip"
            )
        }
    )
    write_components(tmp_path, config)
    components, tokenizer = load_components(config, torch.float32)
    assert components.unet.conv_in.in_channels == 2 * config.vae.latent_channels
    model = LMGenDrive(config, tokenizer, components).eval()
    result = model.rollout(_seed_frames(), INSTRUCTION, horizon=8, seeds=[0])
    assert result.frames.shape == (1, 3, 8, 32, 32, 3)
    assert "conditioner.clip" not in {
        ".".join(n.split(".")[:2])
        for n, p in model.named_parameters()
        if id(p) in {id(q) for q in set_stage(model, 2)}
    }
    (tmp_path / "adapter" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(
        CheckpointError, match=r"adapter/diffusion_pytorch_model.safetensors.*guoyww"
    ):
        load_components(config, torch.float32)


def test_demo_preset_is_the_embedded_trained_checkpoint(monkeypatch, tmp_path):
    import lmgendrive.checkpoint as ckpt
    import lmgendrive.checkpoint_meta as meta_module

    model, identity = ckpt.load_checkpoint("demo", device="cpu")
    meta = json.loads((meta_module.EMBEDDED_DIR / "demo" / "config.json").read_text())
    assert model.config.preset == "demo" and identity.sha256 == meta["weights_sha256"]
    assert model.config == source_config("demo") == preset_config("demo")
    assert identity.sha256 != ckpt.weights_sha256(ckpt.build_untrained("demo"))
    assert (meta_module.EMBEDDED_DIR / "demo" / "model.safetensors").stat().st_size < 60 * 2**20
    monkeypatch.setattr(
        meta_module, "EMBEDDED_DIR", tmp_path
    )  # a checkout without it: a clear error
    with pytest.raises(CheckpointError, match=r"demo/config.json is missing.*lmgd train"):
        ckpt.load_checkpoint("demo", device="cpu")
