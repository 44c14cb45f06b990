"""``diffusion.moved_context``: the UNet is conditioned on the context frames moved to each
generated frame's ego pose (the expert's path in training, the plan in sampling), not on one still
latent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmgendrive.checkpoint import build_untrained
from lmgendrive.config import ModelConfig, preset_config
from lmgendrive.ego_warp import poses_from_waypoints
from lmgendrive.sampling import sample_frames
from lmgendrive.train.losses import diffusion_loss
from scenes.procedural.drive import DriveSpec, ProceduralScene
from schemas.errors import ConfigError
from schemas.sampler import SamplerConfig
from schemas.scene import FPS


def _model(moved: bool):
    data = preset_config("tiny").model_dump(mode="json")
    data["diffusion"]["moved_context"] = moved
    return build_untrained(ModelConfig.from_dict(data)).eval()


@pytest.fixture(scope="module")
def drive():
    """A rendered moving drive at the tiny preset's size: context frames (1, V, 3, H, W) in
    [-1, 1], the 8 real future frames (1, V, 8, 3, H, W) and the expert's poses (1, 8, 3)."""
    scene = ProceduralScene(DriveSpec(3, 0, "clear_noon", 60, (32, 32)))
    t = 30

    def pixels(i):
        return (
            torch.tensor(np.stack([scene.images(i)[v] for v in scene.views]))
            .permute(0, 3, 1, 2)
            .float()
            / 127.5
            - 1.0
        )

    last = pixels(t)[None]
    future = torch.stack([pixels(t + k) for k in range(1, 9)], dim=1)[None]
    poses = poses_from_waypoints(torch.tensor(scene.measurements(t).waypoints)[None], 8, FPS)
    assert float(poses[0, -1, 0]) > 2.0  # the ego moves metres in this step
    return last, future, poses


def test_each_frame_is_conditioned_on_the_context_moved_to_its_pose(drive):
    last, _, poses = drive
    generator = _model(True).generator
    with torch.no_grad():
        moved = generator.context_latents(last, poses)
        standing = generator.context_latents(last, torch.zeros_like(poses))
        still = generator.context_latents(last)  # no poses: the still latent
        plain = _model(False).generator.context_latents(last, poses)
    v, c = last.shape[1], generator.config.vae.latent_channels
    assert moved.shape[:3] == (v, c, 8) and still.shape == (v, c, *moved.shape[3:])
    assert plain.dim() == 4  # without the switch the poses are ignored
    # standing still the moved frames are the context frame; driving on they drift away from it
    assert (standing - still[:, :, None]).abs().max() < 0.1 * still.abs().mean()
    drift = (moved - still[:, :, None]).abs().mean(dim=(0, 1, 3, 4))
    assert (drift.diff() > 0).all() and drift[-1] > 1.5 * drift[0], drift


def test_the_sampler_hands_the_unet_the_moved_context_at_every_denoising_step(drive):
    last, _, poses = drive
    model = _model(True)
    generator = model.generator
    seen = []
    hook = generator.unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    cond = torch.zeros(1, last.shape[1], 4, generator.config.unet.cross_attention_dim)
    sampler = SamplerConfig(steps=4, strength=0.5, warp_start=True, context_detail=True)
    try:
        with torch.no_grad():
            frames = sample_frames(
                generator,
                cond,
                cond[0, 0],
                last,
                [torch.Generator().manual_seed(0)],
                sampler,
                ego_poses=poses,
            )
            expected = generator.context_latents(last, poses)
    finally:
        hook.remove()
    c = generator.config.vae.latent_channels
    assert len(seen) == 2 and frames.shape == (1, last.shape[1], 8, *last.shape[2:])
    for unet_input in seen:
        torch.testing.assert_close(unet_input[:, c:], expected)


def test_training_moves_the_context_along_the_expert_path(drive):
    """The same noise and timestep: the loss differs when the poses do, so the expert's path reaches
    the UNet (a plain model's loss does not depend on them)."""
    last, future, poses = drive

    def loss(model, p):
        torch.manual_seed(0)
        cond = torch.zeros(1, last.shape[1], 4, model.config.unet.cross_attention_dim)
        with torch.no_grad():
            return float(diffusion_loss(model.generator, future, cond, last, cond[0, 0], 0.0, p))

    moved, plain = _model(True), _model(False)
    assert loss(moved, poses) != loss(moved, torch.zeros_like(poses))
    assert loss(plain, poses) == loss(plain, torch.zeros_like(poses))


def test_moved_context_needs_the_concatenated_context():
    data = preset_config("tiny").model_dump(mode="json")
    data["diffusion"].update(concat_last_latent=False, moved_context=True)
    with pytest.raises(ConfigError, match="diffusion.moved_context needs"):
        ModelConfig.from_dict(data)
