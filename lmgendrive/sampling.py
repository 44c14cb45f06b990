"""The world generator's denoising loop and its options, kept out of the networks as diffusers keeps
loops in pipelines, not in models.

:func:`sample_frames` runs diffusers' DDIM or DPM-Solver++ over the training noise schedule, with
optional classifier-free guidance against the learned null conditioning. Three options of
:class:`~schemas.sampler.SamplerConfig` are not in the paper:

* ``strength`` < 1 starts from the last context frame's latent noised part-way (SDEdit-style) and
  runs only that share of the steps;
* ``warp_start`` starts instead from the context frames moved by the step's planned ego motion
  (:func:`lmgendrive.ego_warp.warp_views`);
* ``context_detail`` adds to every generated frame the context-frame detail the VAE loses, moved
  with the plan under ``warp_start``;
* ``context_noise`` noises the context latent the UNet is conditioned on (the sample's own noise).

With ``diffusion.moved_context`` the conditioning latent of each frame is the context moved to that
frame's pose by ``ego_poses``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from lmgendrive.ego_warp import warp_views
from lmgendrive.world import WorldGenerator
from schemas.sampler import SamplerConfig


def make_scheduler(
    train_scheduler: DDPMScheduler, sampler: SamplerConfig, device: torch.device
) -> SchedulerMixin:
    """A fresh DDIM or DPM-Solver++ scheduler sharing the training noise schedule."""
    base = dict(train_scheduler.config)
    if sampler.scheduler == "ddim":
        scheduler = DDIMScheduler.from_config(
            base, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing"
        )
    else:
        scheduler = DPMSolverMultistepScheduler.from_config(
            base, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    scheduler.set_timesteps(sampler.steps, device=device)
    return scheduler


def sample_frames(
    generator: WorldGenerator,
    cond: torch.Tensor,
    null_cond: torch.Tensor,
    last_pixels: torch.Tensor,
    generators: Sequence[torch.Generator],
    sampler: SamplerConfig,
    grad_steps: int = 0,
    ego_poses: torch.Tensor | None = None,
) -> torch.Tensor:
    """Future frames (B, V, F, 3, H, W) in [-1, 1] from ``cond`` (B, V, S, dim) and the context
    frames ``last_pixels`` (B, V, 3, H, W); sample i's noise comes only from ``generators[i]``.

    ``ego_poses`` (B, F, 3): the planned ego pose at each future frame
    (:func:`lmgendrive.ego_warp.poses_from_waypoints`), used by ``sampler.warp_start``.

    One UNet call per denoising step covers all samples, views and frames (and the unconditional
    branch when ``guidance > 1``). Only the last ``grad_steps`` steps keep their autograd graph
    (when gradients are enabled): truncated backpropagation for multi-step training.
    """
    b, v = cond.shape[:2]
    scheduler = make_scheduler(generator.train_scheduler, sampler, cond.device)
    context = generator.context_latents(last_pixels, ego_poses)
    noise = generator.initial_noise(generators, v).to(cond.device)
    clean_context = context
    if context is not None and sampler.context_noise > 0:
        context = generator.noised_context(
            context,
            torch.full((context.shape[0],), sampler.context_noise, device=context.device),
            _context_noise(generators, v, context.shape[1:]).to(context.device),
        )
    timesteps = scheduler.timesteps
    if sampler.strength < 1.0:  # start from the last frame's latent, noised to the first kept step
        skip = len(timesteps) - round(len(timesteps) * sampler.strength)
        timesteps = timesteps[skip:]
        if hasattr(scheduler, "set_begin_index"):  # multistep solvers index their own steps
            scheduler.set_begin_index(skip)
        start = _start(generator, last_pixels, clean_context, sampler, ego_poses, noise)
        latents = scheduler.add_noise(start, noise, timesteps[:1])
    else:
        latents = noise * scheduler.init_noise_sigma
    guided = sampler.guidance > 1.0
    if guided:
        cond = torch.cat([cond, null_cond.to(cond.dtype).expand_as(cond)])
        context = None if context is None else torch.cat([context, context])
    grad = torch.is_grad_enabled()
    for i, t in enumerate(timesteps):
        with torch.set_grad_enabled(grad and i >= len(timesteps) - grad_steps):
            x = scheduler.scale_model_input(latents, t)
            eps = generator.predict_noise(torch.cat([x, x]) if guided else x, t, cond, context)
            eps = eps.float()
            if guided:
                eps_c, eps_u = eps.chunk(2)
                eps = eps_u + sampler.guidance * (eps_c - eps_u)
            latents = scheduler.step(eps, t, latents).prev_sample
    f = latents.shape[2]
    frames = generator.decode(latents.transpose(1, 2).flatten(0, 1)).unflatten(0, (b, v, f)).float()
    if sampler.context_detail:
        still = clean_context is not None and clean_context.dim() == 4
        last = clean_context if still else generator.encode(last_pixels.flatten(0, 1))
        lost = last_pixels - generator.decode(last[: b * v]).unflatten(0, (b, v)).float()
        moved = _moved(generator, lost, sampler, ego_poses)
        frames = (frames + (moved if moved is not None else lost[:, :, None])).clamp(-1.0, 1.0)
    return frames


def _context_noise(
    generators: Sequence[torch.Generator], views: int, shape: Sequence[int]
) -> torch.Tensor:
    """Noise (B*V, c, h, w) for the context latents, sample i's from ``generators[i]`` (drawn after
    its initial noise)."""
    return torch.stack(
        [torch.randn((views, *shape), generator=g, device=g.device) for g in generators]
    ).flatten(0, 1)


def _moved(
    generator: WorldGenerator,
    pixels: torch.Tensor,
    sampler: SamplerConfig,
    ego_poses: torch.Tensor | None,
) -> torch.Tensor | None:
    """``pixels`` (B, V, C, H, W) moved to every future frame's pose (B, V, F, C, H, W) when
    ``sampler.warp_start`` asks for it and the poses are known, else None."""
    if not sampler.warp_start or ego_poses is None:
        return None
    return warp_views(pixels, ego_poses, generator.config.views)


def _start(
    generator: WorldGenerator,
    last_pixels: torch.Tensor,
    context: torch.Tensor | None,
    sampler: SamplerConfig,
    ego_poses: torch.Tensor | None,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Clean start latents (B*V, c, F, h, w): the context frames moved by the plan, or the last
    frame's latent held still."""
    if context is not None and context.dim() == 5 and sampler.warp_start:
        return context  # the moved context (``diffusion.moved_context``) is that start already
    moved = _moved(generator, last_pixels, sampler, ego_poses)
    if moved is None:
        still = context is not None and context.dim() == 4
        last = context if still else generator.encode(last_pixels.flatten(0, 1))
        return last[:, :, None].expand_as(noise)
    # (B*V*F, c, h, w); clamped because bicubic overshoots
    latents = generator.encode(moved.flatten(0, 2).clamp(-1.0, 1.0))
    return latents.unflatten(0, (noise.shape[0], noise.shape[2])).transpose(1, 2)
