"""Multi-view world model networks (paper section 3.4): conditioning, UNetMotionModel, VAE.

Conditioning (:class:`WorldConditioner`): CLIP vision tokens of each view's last frame are fused
with the LLM's world-query outputs by transformer layers of self-attention across all views
(multi-view fusion; ``fusion.multiview=False`` restricts it to each view, the paper's ablation) and
cross-attention to the world features, giving one embedding set per view.

Generation (:class:`WorldGenerator`): a diffusers ``UNetMotionModel`` (UNet2DConditionModel +
AnimateDiff motion modules) predicts the noise of ``AutoencoderKL`` latents of ``frames_per_step``
future frames of every view in one batched call: views are folded into the batch and each view
gets its own cross-attention rows, ``encoder_hidden_states`` (B*V*F, S, dim) in order
``(b*V + v)*F + f``. With ``diffusion.concat_last_latent`` (not in the paper) the latent of each
view's last context frame is concatenated to the UNet input channels of every frame; with
``diffusion.moved_context`` it is the context frame moved to each frame's ego pose instead. The
denoising loop is :func:`lmgendrive.sampling.sample_frames`; the DDPM epsilon-prediction loss is
:func:`lmgendrive.train.losses.diffusion_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNetMotionModel
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from lmgendrive.config import ModelConfig
from lmgendrive.ego_warp import warp_views

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_clip(config: ModelConfig) -> CLIPVisionModel:
    c = config.clip
    return CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=c.hidden,
            intermediate_size=c.intermediate,
            num_hidden_layers=c.layers,
            num_attention_heads=c.heads,
            image_size=c.image_size,
            patch_size=c.patch_size,
        )
    )


def build_unet(config: ModelConfig) -> UNetMotionModel:
    u = config.unet
    channels = config.vae.latent_channels
    return UNetMotionModel(
        sample_size=config.latent_size[0],
        in_channels=channels * (2 if config.diffusion.concat_last_latent else 1),
        out_channels=channels,
        down_block_types=u.down_block_types,
        up_block_types=u.up_block_types,
        block_out_channels=u.block_out_channels,
        layers_per_block=u.layers_per_block,
        norm_num_groups=u.norm_groups,
        cross_attention_dim=u.cross_attention_dim,
        num_attention_heads=u.attention_heads,
        motion_num_attention_heads=u.motion_heads,
        motion_max_seq_length=u.motion_max_seq_length,
        use_motion_mid_block=u.motion_mid_block,
    )


def build_vae(config: ModelConfig) -> AutoencoderKL:
    v = config.vae
    n = len(v.block_out_channels)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=v.block_out_channels,
        layers_per_block=v.layers_per_block,
        latent_channels=v.latent_channels,
        norm_num_groups=v.norm_groups,
        sample_size=config.image_size[0],
        scaling_factor=v.scaling_factor,
    )


class FusionLayer(nn.Module):
    """Pre-norm self-attention over view tokens, cross-attention to world features, MLP."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, world: torch.Tensor, multiview: bool) -> torch.Tensor:
        b, v, s, d = x.shape
        h = self.norm1(x).reshape(b, v * s, d) if multiview else self.norm1(x).reshape(b * v, s, d)
        x = x + self.self_attn(h, h, h, need_weights=False)[0].reshape(b, v, s, d)
        h = self.norm2(x).reshape(b, v * s, d)
        x = x + self.cross_attn(h, world, world, need_weights=False)[0].reshape(b, v, s, d)
        return x + self.mlp(self.norm3(x))


class WorldConditioner(nn.Module):
    """Last frame of each view + LLM world features -> per-view conditioning
    (B, V, S, cross_attention_dim)."""

    def __init__(self, config: ModelConfig, llm_hidden: int, clip: CLIPVisionModel | None = None):
        super().__init__()
        self.config = config
        dim = config.unet.cross_attention_dim
        self.clip = clip if clip is not None else build_clip(config)
        self.clip_proj = nn.Linear(self.clip.config.hidden_size, dim)
        self.world_proj = nn.Linear(llm_hidden, dim)
        self.view_embed = nn.Parameter(torch.randn(len(config.views), dim) * 0.02)
        self.layers = nn.ModuleList(
            FusionLayer(dim, config.fusion.heads) for _ in range(config.fusion.layers)
        )
        self.norm = nn.LayerNorm(dim)
        tokens = (config.clip.image_size // config.clip.patch_size) ** 2 + 1
        self.null_cond = nn.Parameter(torch.zeros(tokens, dim))
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    def encode_views(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP tokens (B, V, S, clip_hidden) of ``pixels`` (B, V, 3, H, W) in [-1, 1]."""
        b, v = pixels.shape[:2]
        x = pixels.flatten(0, 1)
        size = self.clip.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x, size=(size, size), mode="bicubic", align_corners=False, antialias=True
            )
        x = ((x + 1.0) / 2.0 - self.mean) / self.std
        tokens = self.clip(pixel_values=x.to(self.clip_proj.weight.dtype)).last_hidden_state
        return tokens.unflatten(0, (b, v))

    def forward(self, pixels: torch.Tensor, world: torch.Tensor) -> torch.Tensor:
        """Fuse the last frames ``pixels`` (B, V, 3, H, W) with ``world`` (B, W, llm_hidden)."""
        x = self.clip_proj(self.encode_views(pixels)) + self.view_embed[None, :, None, :]
        w = self.world_proj(world.to(self.world_proj.weight.dtype))
        for layer in self.layers:
            x = layer(x, w, self.config.fusion.multiview)
        return self.norm(x)


class WorldGenerator(nn.Module):
    """UNetMotionModel + AutoencoderKL and the DDPM noise schedule they were trained with.

    ``latent_scale`` (a saved buffer) maps VAE latents to unit variance; it starts at
    ``vae.scaling_factor`` and :meth:`calibrate_latent_scale` sets it from data for a VAE trained
    here.
    """

    def __init__(
        self,
        config: ModelConfig,
        unet: UNetMotionModel | None = None,
        vae: AutoencoderKL | None = None,
    ):
        super().__init__()
        self.config = config
        self.unet = unet if unet is not None else build_unet(config)
        self.vae = vae if vae is not None else build_vae(config)
        self.register_buffer("latent_scale", torch.tensor(float(self.vae.config.scaling_factor)))
        d = config.diffusion
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=d.num_train_timesteps,
            beta_schedule=d.beta_schedule,
            beta_start=d.beta_start,
            beta_end=d.beta_end,
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.conv_in.weight.dtype

    def encode(self, pixels: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Scaled latents (N, c, h, w) of ``pixels`` (N, 3, H, W) in [-1, 1]: posterior mode or a
        sample."""
        dist = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        return (dist.sample() if sample else dist.mode()) * self.latent_scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels (N, 3, H, W) in [-1, 1] of scaled latents (N, c, h, w)."""
        return self.vae.decode((latents / self.latent_scale).to(self.vae.dtype)).sample.clamp(
            -1.0, 1.0
        )

    @torch.no_grad()
    def calibrate_latent_scale(self, pixels: torch.Tensor) -> float:
        """Set ``latent_scale`` to 1 / std of the latents of ``pixels`` (N, 3, H, W); returns it."""
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode()
        self.latent_scale.fill_(1.0 / latents.float().std().clamp_min(1e-6).item())
        return float(self.latent_scale)

    def _unet_input(self, noisy: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if context is None:
            return noisy
        if context.dim() == 4:  # one still latent for every frame
            context = context[:, :, None].expand(-1, -1, noisy.shape[2], -1, -1)
        return torch.cat([noisy, context], dim=1)

    def context_latents(
        self, last_pixels: torch.Tensor, ego_poses: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The latents the UNet is conditioned on with ``diffusion.concat_last_latent`` (else None):
        of the context frames ``last_pixels`` (B, V, 3, H, W), (B*V, c, h, w); with
        ``diffusion.moved_context`` and the ego poses (B, F, 3) of the frames to generate
        (:func:`lmgendrive.ego_warp.poses_from_waypoints`), of those frames moved to each pose,
        (B*V, c, F, h, w)."""
        if not self.config.diffusion.concat_last_latent:
            return None
        if not self.config.diffusion.moved_context or ego_poses is None:
            return self.encode(last_pixels.flatten(0, 1))
        moved = warp_views(last_pixels, ego_poses, self.config.views)  # (B, V, F, 3, H, W)
        latents = self.encode(moved.flatten(0, 2).clamp(-1.0, 1.0))  # bicubic overshoots
        return latents.unflatten(0, (moved.shape[0] * moved.shape[1], moved.shape[2])).transpose(
            1, 2
        )

    def noised_context(
        self, context: torch.Tensor, level: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """``context`` latents (N, c, ...) noised by the training schedule to ``level`` (N,), a
        share of the schedule in [0, 1), with ``noise`` shaped as ``context``."""
        t = (level * (self.train_scheduler.config.num_train_timesteps - 1)).round().long()
        return self.train_scheduler.add_noise(
            context, noise.to(context.dtype), t.to(context.device)
        )

    def predict_noise(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        context: torch.Tensor | None,
    ) -> torch.Tensor:
        """The UNet's noise prediction for ``latents`` (B*V, c, F, h, w) at timestep(s) ``t`` under
        ``cond`` (B, V, S, dim) and the :meth:`context_latents`."""
        ehs = cond.flatten(0, 1).repeat_interleave(latents.shape[2], dim=0)  # (B*V*F, S, dim)
        return self.unet(
            self._unet_input(latents, context).to(self.dtype), t, ehs.to(self.dtype)
        ).sample

    def initial_noise(self, generators: Sequence[torch.Generator], views: int) -> torch.Tensor:
        """Per-sample starting latents (B*V, c, F, h, w): sample i's noise comes only from
        ``generators[i]``."""
        h, w = self.config.latent_size
        shape = (views, self.config.vae.latent_channels, self.config.frames_per_step, h, w)
        noise = torch.stack([torch.randn(shape, generator=g, device=g.device) for g in generators])
        return noise.flatten(0, 1)
