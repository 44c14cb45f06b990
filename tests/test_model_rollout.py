"""LMGenDrive modes on the tiny preset: plan() without the generator, autoregressive rollout,
seeding."""

from __future__ import annotations

import copy
import math

import cv2
import numpy as np
import pytest
import torch

from schemas.errors import BadInputError
from schemas.sampler import SamplerConfig

INSTRUCTIONS = ["After 30 meters, execute a left turn.", "Follow the current route."]


def _frames(b: int, t: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (b, 3, t, *size, 3), dtype=np.uint8)


def test_plan_never_runs_the_world_generator(model):
    def forbidden(module, args):
        raise AssertionError(f"{type(module).__name__} ran during plan()")

    state = model.start(_frames(2, 4), INSTRUCTIONS, speed=[2.0, 6.0])
    hooks = [
        m.register_forward_pre_hook(forbidden)
        for m in (
            model.conditioner,
            model.conditioner.clip,
            model.generator.unet,
            model.generator.vae,
        )
    ]
    try:
        plan = model.plan(state, frames=_frames(2, 1)[:, :, 0], speed=[3.0, 5.0])
        again = model.plan(state)
    finally:
        for h in hooks:
            h.remove()
    assert plan.waypoints.shape == (2, 4, 2) and plan.waypoints.dtype == np.float32
    assert plan.completion.shape == (2,) and ((plan.completion > 0) & (plan.completion < 1)).all()
    assert plan.controls.shape == (2, 3)
    assert again.waypoints.shape == (2, 4, 2)
    assert state.history.shape[1] == 5  # 4 seed frames + 1 observed
    np.testing.assert_allclose(state.speed.numpy(), [3.0, 5.0])


def test_inference_switches_modes_only_for_a_model_in_training(model, monkeypatch):
    """plan() on a model in eval mode must not walk its modules (the world generator's too) to
    set eval and back: that walk was a third of a closed-loop frame. A model in training plans in
    eval mode (no dropout: the same plan as in eval) and is handed back in training mode."""
    real_train, walks = torch.nn.Module.train, []

    def counting_train(self, mode=True):
        walks.append(mode)
        return real_train(self, mode)

    monkeypatch.setattr(torch.nn.Module, "train", counting_train)
    in_eval = model.plan(model.start(_frames(1, 2), INSTRUCTIONS[:1]))
    assert walks == [] and not any(m.training for m in model.modules())
    trainee = copy.deepcopy(model).train()
    walks.clear()
    in_training = trainee.plan(trainee.start(_frames(1, 2), INSTRUCTIONS[:1]))
    np.testing.assert_array_equal(in_training.waypoints, in_eval.waypoints)
    assert walks and all(m.training for m in trainee.modules())


def test_the_path_driven_is_the_previous_action_training_uses(model):
    """start()/plan() told the path driven over the last step plan exactly as the training losses
    do with that path as ``prev_waypoints``; without it the model's own last plan stands in."""
    from lmgendrive.train.losses import DriveBatch, planner_loss

    seed, speed = _frames(2, 4), [5.0, 1.0]
    driven = np.array(
        [
            [[1.0, 0.0], [2.0, 0.1], [3.0, 0.3], [4.0, 0.6]],
            [[0.3, 0.0], [0.5, 0.0], [0.6, 0.0], [0.6, 0.0]],
        ],
        np.float32,
    )
    planned = model.plan(model.start(seed, INSTRUCTIONS, speed=speed, driven=driven))
    unknown = model.plan(model.start(seed, INSTRUCTIONS, speed=speed))
    assert np.abs(planned.waypoints - unknown.waypoints).max() > 1e-3
    batch = DriveBatch(
        frames=torch.as_tensor(seed),
        instructions=INSTRUCTIONS,
        speed=torch.tensor(speed),
        prev_waypoints=torch.as_tensor(driven),
        waypoints=torch.as_tensor(planned.waypoints)[:, None],
        completed=torch.zeros(2, 1),
        future_frames=None,
    )
    with torch.no_grad():
        assert planner_loss(model, batch).terms["plan_waypoints"] < 1e-5

    state = model.start(seed, INSTRUCTIONS, speed=speed)
    first = model.plan(state)
    model.observe(state, _frames(2, 8, seed=1), speed=[4.0, 2.0])
    np.testing.assert_array_equal(
        state.waypoints.numpy(), first.waypoints
    )  # its own plan stands in
    told = model.start(seed, INSTRUCTIONS, speed=speed)
    model.plan(told)
    a = model.plan(told, _frames(2, 8, seed=1), speed=[4.0, 2.0], driven=driven)
    model.observe(state, driven=driven)
    np.testing.assert_allclose(model.plan(state).waypoints, a.waypoints, atol=1e-6)
    with pytest.raises(BadInputError, match=r"driven must have shape \(2, 4, 2\).*got \(2, 3, 2\)"):
        model.plan(state, driven=driven[:, :3])
    with pytest.raises(BadInputError, match="non-finite"):
        model.start(seed, INSTRUCTIONS, driven=np.full((2, 4, 2), np.nan, np.float32))


def test_rollout_of_horizon_32(model):
    seen = []
    result = model.rollout(
        _frames(2, 3, size=(48, 40)),
        INSTRUCTIONS,
        horizon=32,
        seeds=[1, 2],
        on_step=lambda i, r: seen.append((i, r.frames.shape)),
    )
    assert result.frames.shape == (2, 3, 32, 32, 32, 3) and result.frames.dtype == np.uint8
    assert result.waypoints.shape == (2, 4, 4, 2) and result.waypoints.dtype == np.float32
    assert result.completion.shape == (2, 4) and result.completion.dtype == np.float32
    assert result.controls.shape == (2, 4, 3) and result.controls.dtype == np.float32
    assert seen == [(i, (2, 3, 8, 32, 32, 3)) for i in range(4)]
    assert np.isfinite(result.waypoints).all() and np.isfinite(result.controls).all()


def test_every_generated_frame_enters_the_history_and_history_is_capped(model):
    state = model.start(_frames(1, 2), INSTRUCTIONS[:1], seeds=[0])
    history = state.history.clone()
    model.step(state)
    assert state.history.shape[1] == 2 + 8  # 10 Hz: all eight generated frames, not only the last
    torch.testing.assert_close(state.history[:, :2], history)
    model.step(state)
    assert state.history.shape[1] == model.config.llm.history_frames == 16
    assert state.steps == 2


def test_step_feeds_back_frames_and_action(model):
    state = model.start(_frames(1, 2), INSTRUCTIONS[:1], seeds=[0], speed=[4.0])
    result = model.step(state)
    np.testing.assert_array_equal(state.waypoints.numpy(), result.waypoints)
    last = (
        ((state.last_pixels + 1) * 127.5)
        .round()
        .clamp(0, 255)
        .to(torch.uint8)
        .permute(0, 1, 3, 4, 2)
        .numpy()
    )
    np.testing.assert_array_equal(last, result.frames[:, :, -1])
    gap = np.linalg.norm(result.waypoints[0, -1] - result.waypoints[0, -2]) / 0.2
    assert float(state.speed[0]) == pytest.approx(gap, rel=1e-5)


@pytest.mark.parametrize(
    "sampler",
    [
        SamplerConfig(scheduler="ddim", steps=3),
        SamplerConfig(scheduler="dpmsolver++", steps=3, guidance=2.0),
    ],
)
def test_same_seed_same_rollout_different_seed_different_frames(model, sampler):
    seed = _frames(1, 2)
    a = model.rollout(seed, INSTRUCTIONS[:1], horizon=16, seeds=[7], sampler=sampler)
    b = model.rollout(seed, INSTRUCTIONS[:1], horizon=16, seeds=[7], sampler=sampler)
    c = model.rollout(seed, INSTRUCTIONS[:1], horizon=16, seeds=[8], sampler=sampler)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.waypoints, b.waypoints)
    assert not np.array_equal(a.frames, c.frames)


def test_sample_noise_does_not_depend_on_batch_mates(model):
    gen = model.generator
    alone = gen.initial_noise([torch.Generator().manual_seed(5)], views=3)
    paired = gen.initial_noise(
        [torch.Generator().manual_seed(9), torch.Generator().manual_seed(5)], views=3
    )
    torch.testing.assert_close(alone, paired[3:], rtol=0, atol=0)
    seed = _frames(2, 2)
    solo = model.rollout(seed[1:], INSTRUCTIONS[1:], horizon=8, seeds=[5])
    batch = model.rollout(seed, INSTRUCTIONS, horizon=8, seeds=[9, 5])
    diff = np.abs(solo.frames[0].astype(int) - batch.frames[1].astype(int))
    assert diff.max() <= 2  # identical up to batched-kernel rounding


def test_context_noise_changes_what_the_unet_reads_not_whose_noise_it_is(model):
    """``context_noise`` noises the UNet's context latent with the sample's own noise: the frames
    change, a sample's result does not depend on its batch mates, and the level sets how far the
    context moves (near 0: the context; near 1: noise)."""
    seed = _frames(2, 2)
    plain = SamplerConfig(scheduler="ddim", steps=3)
    noisy = plain.model_copy(update={"context_noise": 0.5})
    before = model.rollout(seed, INSTRUCTIONS, horizon=8, seeds=[9, 5], sampler=plain)
    batch = model.rollout(seed, INSTRUCTIONS, horizon=8, seeds=[9, 5], sampler=noisy)
    solo = model.rollout(seed[1:], INSTRUCTIONS[1:], horizon=8, seeds=[5], sampler=noisy)
    assert not np.array_equal(before.frames, batch.frames)
    assert np.abs(solo.frames[0].astype(int) - batch.frames[1].astype(int)).max() <= 2
    context, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    levels = torch.tensor([0.0, 0.3, 0.7, 0.999])
    moved = model.generator.noised_context(context, levels, noise)
    toward_noise = [
        float(torch.corrcoef(torch.stack([m.flatten(), noise[i].flatten()]))[0, 1])
        for i, m in enumerate(moved)
    ]
    assert (moved[0] - context[0]).abs().mean() < 0.05
    assert toward_noise == sorted(toward_noise) and toward_noise[-1] > 0.99


def test_rollout_rejects_bad_input(model):
    seed = _frames(1, 2)
    with pytest.raises(BadInputError, match="multiple of 8"):
        model.rollout(seed, INSTRUCTIONS[:1], horizon=12, seeds=[0])
    with pytest.raises(BadInputError, match="2 seeds for 1 samples"):
        model.rollout(seed, INSTRUCTIONS[:1], horizon=8, seeds=[0, 1])
    with pytest.raises(BadInputError, match="2 instructions"):
        model.rollout(seed, INSTRUCTIONS, horizon=8, seeds=[0])
    with pytest.raises(BadInputError, match="views"):
        model.rollout(seed[:, :2], INSTRUCTIONS[:1], horizon=8, seeds=[0])
    with pytest.raises(BadInputError, match="uint8"):
        model.rollout(seed.astype(np.float32), INSTRUCTIONS[:1], horizon=8, seeds=[0])
    with pytest.raises(BadInputError, match="speed"):
        model.rollout(seed, INSTRUCTIONS[:1], horizon=8, seeds=[0], speed=[1.0, 2.0])


@pytest.fixture(scope="module")
def demo_model():
    from lmgendrive.checkpoint import load_checkpoint

    model, _ = load_checkpoint("demo", "cpu")
    return model


def _noon_seed(model, scene) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Seed frames (1, V, 2, H, W, 3) of ``scene`` at the model's size, then the last seed frame
    (V, 3, H, W) in 0..255 and as the model's VAE reconstructs it."""
    size = tuple(model.config.image_size)
    seed = np.stack(
        [
            np.stack(
                [
                    cv2.resize(scene.images(i)[v], size[::-1], interpolation=cv2.INTER_AREA)
                    for i in (10, 11)
                ]
            )
            for v in scene.views
        ]
    )[None]
    last = torch.as_tensor(seed[0, :, -1]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        decoded = (model.generator.decode(model.generator.encode(last / 127.5 - 1)) + 1) * 127.5
    return seed, last, decoded


@pytest.mark.parametrize("scheduler", ["ddim", "dpmsolver++"])
def test_strength_below_one_starts_from_the_last_frame(demo_model, noon_scene, scheduler):
    """With the trained demo checkpoint: a small strength keeps the generated frames near the last
    seed frame as the VAE decodes it; strength 1 starts from pure noise and lands farther away."""
    model = demo_model
    seed, _, decoded = _noon_seed(model, noon_scene)

    def distance(strength: float) -> float:
        sampler = SamplerConfig(scheduler=scheduler, steps=10, strength=strength)
        frames = model.rollout(
            seed, INSTRUCTIONS[:1], horizon=8, seeds=[0], sampler=sampler
        ).frames[0]
        return float(
            (torch.as_tensor(frames).float().permute(1, 0, 4, 2, 3) - decoded).abs().mean()
        )

    near, far = distance(0.1), distance(1.0)
    assert near < 8.0 and far > 2 * near


def test_context_detail_adds_back_what_the_vae_loses(demo_model, noon_scene):
    """The same sample with ``context_detail``: every frame gains the last seed frame's VAE loss
    (up to clipping and rounding) and so lands nearer the real frame the VAE blurs."""
    model = demo_model
    seed, last, decoded = _noon_seed(model, noon_scene)
    lost = last - decoded

    def frames(detail: bool) -> torch.Tensor:  # (F, V, 3, H, W) float 0..255
        out = model.rollout(
            seed,
            INSTRUCTIONS[:1],
            horizon=8,
            seeds=[0],
            sampler=SamplerConfig(steps=10, strength=0.3, context_detail=detail),
        ).frames[0]
        return torch.as_tensor(out).float().permute(1, 0, 4, 2, 3)

    plain, detailed = frames(False), frames(True)
    inside = (detailed > 0) & (detailed < 255)  # not clipped
    assert ((detailed - plain) - lost)[inside].abs().median() <= 1.0
    assert (detailed - last).abs().mean() < 0.8 * (plain - last).abs().mean()


def test_warp_start_moves_the_generated_video_as_the_step_plans(
    demo_model, noon_scene, monkeypatch
):
    """``warp_start`` hands the generator the poses of the step's own plan; started from the context
    frames moved by a plan that turns 15 degrees left, the front view of the generated video turns
    as much as the moved frames themselves do (both measured on the video by
    ``qa.motion.video_yaw``, which reads this wide lens's pure rotation about 1.35 times too large),
    held still it does not turn, and with no motion the moved start is the still one."""
    import lmgendrive.model
    from lmgendrive.ego_warp import poses_from_waypoints, warp_views
    from qa.motion import video_yaw

    model = demo_model
    seed, last, _ = _noon_seed(model, noon_scene)
    handed = []
    sample = lmgendrive.model.sample_frames

    def spy(*args, ego_poses=None, **kwargs):
        handed.append(ego_poses)
        return sample(*args, ego_poses=ego_poses, **kwargs)

    monkeypatch.setattr(lmgendrive.model, "sample_frames", spy)
    warp = SamplerConfig(steps=10, strength=0.3, context_detail=True, warp_start=True)
    result = model.rollout(seed, INSTRUCTIONS[:1], horizon=8, seeds=[0], speed=[5.0], sampler=warp)
    torch.testing.assert_close(
        handed[0], poses_from_waypoints(torch.as_tensor(result.waypoints[:, 0]), 8, 10.0)
    )

    t = torch.arange(1, 9) / 10.0
    turning = torch.stack([2.0 * t, torch.zeros_like(t), math.radians(15.0) * t / 0.8], dim=-1)[
        None
    ]
    front = model.config.views.index("front")

    def yaw_of(
        frames: np.ndarray,
    ) -> float:  # degrees, front frames (8, H, W, 3) after the seed's last
        return math.degrees(video_yaw(np.concatenate([seed[0, front, -1:], frames]), 8)[0])

    def video(sampler: SamplerConfig, poses: torch.Tensor) -> np.ndarray:
        monkeypatch.setattr(model, "planned_poses", lambda waypoints: poses)
        return model.rollout(
            seed, INSTRUCTIONS[:1], horizon=8, seeds=[0], speed=[5.0], sampler=sampler
        ).frames[0, front]

    moved = warp_views(last[None], turning, model.config.views)[0, front].permute(0, 2, 3, 1)
    expected = yaw_of(moved.clamp(0, 255).round().numpy().astype(np.uint8))
    still = warp.model_copy(update={"warp_start": False})
    assert 15.0 < expected < 25.0
    assert yaw_of(video(warp, turning)) == pytest.approx(expected, rel=0.15)
    assert abs(yaw_of(video(still, turning))) < 2.0
    unmoved = video(warp, torch.zeros_like(turning)).astype(float)
    assert np.abs(unmoved - video(still, turning)).max() <= 2.0
