"""QA extractors against the reference packages on shared seeded random weights; weight lookup and
errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from qa_weights import (
    random_state_dict,
    write_evaluator,
    write_i3d_weights,
    write_inception_weights,
)
from safetensors.torch import save_file

from qa.config import resolve_evaluator
from qa.drive import load_drive, load_evaluator
from qa.i3d import I3D
from qa.inception import inception_skeleton, load_inception
from qa.video import clip_starts, clips_of, load_i3d, preprocess
from qa.weights import INCEPTION, find_weights
from schemas.errors import CheckpointError

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME whose hub cache holds random Inception weights, as a pytorch-fid download
    would."""
    home = tmp_path_factory.mktemp("torch_home")
    write_inception_weights(home / "hub" / "checkpoints", seed=1)
    return home


@pytest.fixture
def offline(monkeypatch, tmp_path, torch_home):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.delenv("LMGD_WEIGHTS_DIR", raising=False)


def assert_same_features(got: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to float32 round-off (batch size changes the convolution kernels' summation
    order)."""
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def _images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_inception_equals_pytorch_fid(offline, tmp_path):
    from pytorch_fid.fid_score import get_activations
    from pytorch_fid.inception import InceptionV3

    ours = load_inception(None, CPU)  # found in $TORCH_HOME/hub/checkpoints
    reference = InceptionV3([3]).eval()  # pytorch-fid loads the same cached file, offline
    images = _images(5, 37, 53)
    with torch.no_grad():
        expected = (
            reference(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)[0]
            .flatten(1)
            .numpy()
        )
    assert_same_features(ours(images), expected)

    files = []  # pytorch-fid's own loop from image files (PIL, ToTensor, DataLoader)
    for i, img in enumerate(images):
        files.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(files[-1], cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    loop = get_activations(files, reference, batch_size=2, dims=2048, device="cpu", num_workers=0)
    assert_same_features(ours(images), loop)


@pytest.mark.parametrize("dims", [64, 768])
def test_inception_smaller_dims_equal_pytorch_fid(offline, dims):
    from pytorch_fid.inception import InceptionV3

    ours = load_inception(None, CPU, dims)
    reference = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).eval()
    images = _images(3, 40, 40, seed=2)
    with torch.no_grad():
        out = reference(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)[0]
        expected = torch.nn.functional.adaptive_avg_pool2d(out, 1).flatten(1).numpy()
    assert_same_features(ours(images), expected)
    assert "not the FID protocol" in ours.description


def test_inception_network_equals_torch_fidelity(offline, torch_home):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    path = torch_home / "hub" / "checkpoints" / INCEPTION.name
    reference = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    )
    ours = load_inception(None, CPU)
    images = torch.from_numpy(_images(3, 299, 299, seed=3)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        expected = reference(images)[0].numpy()
        # torch-fidelity scales by (x - 128) / 128 and resizes TF1-style (identity at 299); same
        # network
        got = ours.net((images.float() - 128) / 128).numpy()
    assert_same_features(got, expected)


def test_i3d_equals_cd_fvd(tmp_path):
    from cdfvd.third_party.i3d.pytorch_i3d import InceptionI3d
    from cdfvd.third_party.i3d.utils import preprocess_i3d

    state = random_state_dict(I3D(), seed=4)
    reference = InceptionI3d(400, in_channels=3).eval()
    reference.load_state_dict(state)
    ours = I3D(bn_eps=1e-5).eval()  # cd-fvd's BatchNorm eps
    ours.load_state_dict(state)
    videos = np.random.default_rng(5).integers(0, 256, (2, 16, 40, 56, 3), dtype=np.uint8)
    x = preprocess(torch.from_numpy(videos))
    assert torch.equal(x, preprocess_i3d(videos))
    with torch.no_grad():
        assert_same_features(ours(x).numpy(), reference(x).numpy())


def test_i3d_state_dict_file_loads_with_tf_eps(tmp_path):
    write_i3d_weights(tmp_path, seed=6)
    extractor = load_i3d(tmp_path, CPU)
    net = I3D().eval()
    net.load_state_dict(torch.load(tmp_path / "i3d_pretrained_400.pt", weights_only=True))
    clips = np.random.default_rng(7).integers(0, 256, (1, 16, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = net(preprocess(torch.from_numpy(clips))).numpy()
    assert_same_features(extractor(clips), expected)
    assert "i3d_pretrained_400.pt" in extractor.description and "eps 1e-3" in extractor.description


class _StyleGanVDetector(torch.nn.Module):
    """A stand-in with the StyleGAN-V detector's call signature."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 400)

    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = True,
        resize: bool = True,
        return_features: bool = False,
    ) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("QA must pass rescale=False, resize=False, return_features=True")
        return self.proj(x.mean(dim=(2, 3, 4)))


def test_i3d_torchscript_is_preferred_and_called_like_stylegan_v(tmp_path):
    write_i3d_weights(tmp_path)
    module = _StyleGanVDetector().eval()
    torch.jit.script(module).save(str(tmp_path / "i3d_torchscript.pt"))
    extractor = load_i3d(tmp_path, CPU)
    assert "TorchScript" in extractor.description
    clips = np.random.default_rng(8).integers(0, 256, (3, 16, 24, 24, 3), dtype=np.uint8)
    with torch.no_grad():
        expected = module(preprocess(torch.from_numpy(clips)), False, False, True).numpy()
    assert_same_features(extractor(clips), expected)


def test_clip_rule():
    assert (
        clip_starts(16) == [0] and clip_starts(24) == [0, 8] and clip_starts(64) == [0, 16, 32, 48]
    )
    frames = np.arange(8)[:, None, None, None] * np.ones((8, 2, 2, 3), np.uint8)
    eight = clips_of(frames)  # the 8-frame horizon: each frame twice
    assert eight.shape[:2] == (1, 16) and eight[0, :, 0, 0, 0].tolist() == [
        i // 2 for i in range(16)
    ]
    assert clips_of(np.zeros((24, 2, 2, 3), np.uint8)).shape[:2] == (2, 16)


def test_missing_weights_name_file_place_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("LMGD_WEIGHTS_DIR", str(tmp_path / "env"))
    with pytest.raises(CheckpointError) as e:
        load_inception(tmp_path / "job", CPU)
    msg = str(e.value)
    for text in (
        "pt_inception-2015-12-05-6726825d.pth",
        str(tmp_path / "job"),
        str(tmp_path / "env"),
        str(tmp_path / "torch" / "hub" / "checkpoints"),
        "https://github.com/mseitzer/pytorch-fid/releases",
        "LMGD_WEIGHTS_DIR",
        "nothing is downloaded",
    ):
        assert text in msg
    with pytest.raises(
        CheckpointError, match=r"i3d_torchscript\.pt or i3d_pretrained_400\.pt not found"
    ):
        load_i3d(None, CPU)


def test_weights_search_order(monkeypatch, tmp_path):
    for name in ("job", "env", "torch/hub/checkpoints"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / INCEPTION.name).write_bytes(b"x")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("LMGD_WEIGHTS_DIR", str(tmp_path / "env"))
    assert find_weights((INCEPTION,), tmp_path / "job")[0].parent == tmp_path / "job"
    assert find_weights((INCEPTION,), None)[0].parent == tmp_path / "env"
    monkeypatch.delenv("LMGD_WEIGHTS_DIR")
    assert find_weights((INCEPTION,), None)[0].parent == tmp_path / "torch" / "hub" / "checkpoints"


def test_unreadable_weights_are_checkpoint_errors(tmp_path):
    (tmp_path / INCEPTION.name).write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="not a readable PyTorch state dict"):
        load_inception(tmp_path, CPU)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / INCEPTION.name)
    with pytest.raises(CheckpointError, match="does not fit pytorch-fid's Inception-v3"):
        load_inception(tmp_path, CPU)
    assert len(inception_skeleton().state_dict()) == 566


def test_evaluator_checkpoint_forms(tmp_path):
    bare = write_evaluator(tmp_path / "bare")
    encoder, config, _ = load_evaluator(bare)
    frames = np.random.default_rng(9).integers(0, 256, (5, 3, 32, 32, 3), dtype=np.uint8)
    features = load_drive(bare, CPU)(frames)
    assert features.shape == (5, 3 * config.vision.dim) and np.isfinite(features).all()

    whole = tmp_path / "whole"  # a full LMGenDrive state dict: only vision.* is used
    whole.mkdir()
    state = {f"vision.{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    save_file({**state, "llm.extra": torch.zeros(2)}, whole / "model.safetensors")
    meta = json.loads((bare / "config.json").read_text())
    meta.pop("weights_sha256")
    (whole / "config.json").write_text(json.dumps(meta))
    assert_same_features(load_drive(whole, CPU)(frames), features)


def test_evaluator_problems(tmp_path):
    assert resolve_evaluator(tmp_path / "absent") is None
    d = write_evaluator(tmp_path / "ev")
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "weights_sha256": "0" * 64}))
    with pytest.raises(CheckpointError, match="sha256"):
        load_evaluator(d)
    meta["config"]["vision"]["dim"] = 64
    (d / "config.json").write_text(
        json.dumps({k: v for k, v in meta.items() if k != "weights_sha256"})
    )
    with pytest.raises(CheckpointError, match="does not fit the vision encoder"):
        load_evaluator(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_evaluator(d)
