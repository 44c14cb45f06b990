"""Model configuration: frozen pydantic models, the ``tiny`` / ``demo`` / ``paper`` presets, JSON
round trip.

Every component is built from these numbers; nothing is fetched from a hub. The ``paper`` preset
additionally names local Hugging Face-format directories (:class:`PretrainedPaths`) from which the
pretrained components (Vicuna-7B, SD-1.5 UNet and VAE, AnimateDiff motion adapter, CLIP ViT-L/14)
are loaded with ``local_files_only=True``. The sampler settings are
:class:`schemas.sampler.SamplerConfig`, shared with job specs and training recipes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from schemas.errors import ConfigError
from schemas.sampler import SamplerConfig
from schemas.scene import CENTER_VIEW

VIEWS = ("left", "front", "right")
BACKBONES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
DTYPES = ("float32", "float16", "bfloat16")
PRETRAINED_ENV = "LMGD_PRETRAINED_DIR"
RENAMED = {"sampler.name": "sampler.scheduler", "sampler.guidance_scale": "sampler.guidance"}


class _Frozen(BaseModel):
    """Unknown keys and values of the wrong type are errors (no coercion: "3" is not an int)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class VisionConfig(_Frozen):
    """Vision encoder: per-view ResNet trunk, view-fusion encoder, BEV-query decoder
    (LMDrive numbers)."""

    backbone: str = "resnet50"
    backbone_stages: int = 4  # ResNet stages kept (1-4): output stride 4 * 2**(stages - 1)
    dim: int = 256
    heads: int = 8
    ffn_dim: int = 2048
    encoder_layers: int = 1
    decoder_layers: int = 3
    dropout: float = 0.1
    bev_size: int = 50  # BEV grid is bev_size x bev_size cells
    bev_range: tuple[float, float, float, float] = (
        -10.0,
        40.0,
        -25.0,
        25.0,
    )  # x_min x_max y_min y_max
    bev_pool: int = 10  # BEV tokens are pooled to bev_pool x bev_pool for the Q-Former
    num_waypoints: int = 4
    # Also see the centre view (schemas.scene.CENTER_VIEW, LMDrive's rgb_center): the front
    # camera's centre quarter at full size, where traffic lights are more than a pixel or two.
    # Where a frame has no centre view (generated frames) it is cut from the front view.
    center_view: bool = False
    # A lane reader (lmgendrive.vision.PixelReader): a small network of its own beside the shared
    # encoder that reads where the car stands in its lane (offset, heading error, in a lane at
    # all) from the views, so adding it to a trained model changes no token the planner reads.
    lane_reader: bool = False
    # A light reader (the same kind of network) on the centre view alone: the colour of the light
    # just ahead, for a red-light rule. The renderer then draws the centre view; the shared
    # encoder sees it only with center_view.
    light_reader: bool = False

    @property
    def sees_center(self) -> bool:
        """Whether the encoder is fed the centre view (the shared encoder or the light reader)."""
        return self.center_view or self.light_reader


class QFormerConfig(_Frozen):
    """``Blip2QFormerModel`` size and the number of learnable queries per frame."""

    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    cross_attention_frequency: int = 2
    num_queries: int = 8


class LLMConfig(_Frozen):
    """``LlamaModel`` size and the LLM input layout."""

    hidden: int = 4096
    layers: int = 32
    heads: int = 32
    kv_heads: int = 32
    intermediate: int = 11008
    vocab_size: int = 32000
    max_positions: int = 4096
    rms_norm_eps: float = 1e-5
    history_frames: int = 40  # Tmax: history frames the LLM sees (10 Hz)
    max_instruction_tokens: int = 64
    num_action_queries: int = 4  # one waypoint per action query
    num_world_queries: int = 64
    # not in the paper: waypoints regressed as offsets from constant-velocity extrapolation
    # (lmgendrive.llm); "none" regresses them directly, as LMDrive and the paper do
    waypoint_prior: Literal["constant_velocity", "none"] = "constant_velocity"
    # not in the paper: the action head also reads the vision encoder's readers at the newest
    # frame (lane pose, near-light probabilities) and the speed, through a branch of its own added
    # to its output (lmgendrive.llm.ReaderBranch); the LLM, and so the world queries, never see them
    action_reads_readers: bool = False


class ClipConfig(_Frozen):
    """CLIP vision tower encoding the last frame of each view."""

    hidden: int = 1024
    layers: int = 24
    heads: int = 16
    intermediate: int = 4096
    image_size: int = 224
    patch_size: int = 14


class FusionConfig(_Frozen):
    """Multi-view world fusion: view self-attention + cross-attention to the LLM world features."""

    layers: int = 2
    heads: int = 8
    multiview: bool = True  # False: self-attention within each view only (paper Table 3 ablation)


class UNetConfig(_Frozen):
    """``UNetMotionModel`` (UNet2DConditionModel + AnimateDiff motion modules)."""

    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = (
        "CrossAttnDownBlockMotion",
        "CrossAttnDownBlockMotion",
        "CrossAttnDownBlockMotion",
        "DownBlockMotion",
    )
    up_block_types: tuple[str, ...] = (
        "UpBlockMotion",
        "CrossAttnUpBlockMotion",
        "CrossAttnUpBlockMotion",
        "CrossAttnUpBlockMotion",
    )
    layers_per_block: int = 2
    attention_heads: int = 8
    norm_groups: int = 32
    cross_attention_dim: int = 768
    motion_heads: int = 8
    motion_max_seq_length: int = 32
    motion_mid_block: bool = True


class VAEConfig(_Frozen):
    """``AutoencoderKL``; its spatial downsampling is 2 ** (len(block_out_channels) - 1)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_groups: int = 32
    latent_channels: int = 4
    scaling_factor: float = 0.18215


class DiffusionConfig(_Frozen):
    """DDPM training schedule and the extra conditioning / training switches of the world generator.

    ``concat_last_latent`` is conditioning the paper does not describe: the VAE latent of each
    view's last context frame is concatenated to the UNet input channels of every generated frame
    (the UNet then has ``2 * latent_channels`` input channels). ``cond_dropout`` is the train-time
    probability of replacing the world conditioning by a learned null embedding (classifier-free
    guidance). ``grad_steps`` is how many final denoising steps keep their graph when a generated
    video is fed back during multi-step (stage-3) training. ``moved_context`` (not in the paper;
    needs ``concat_last_latent``) concatenates to each generated frame the latent of the context
    frames moved to that frame's ego pose (the expert's path in training, the plan at inference;
    :func:`lmgendrive.ego_warp.warp_views`) instead of the same still latent to every frame: the
    re-projection becomes a per-frame condition the UNet learns to repair, so the sampler can
    draw from more noise than a re-projected start allows.
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    concat_last_latent: bool = False
    moved_context: bool = False
    cond_dropout: float = 0.1
    grad_steps: int = 1


class PretrainedPaths(_Frozen):
    """Local Hugging Face-format directories of the pretrained components (``paper`` preset), and
    the torchvision ImageNet weights file of the vision encoder's ResNet trunk (``resnet``, e.g.
    ``resnet50-11ad3fa6.pth``; the trunk starts random without it).

    Relative paths are resolved against ``$LMGD_PRETRAINED_DIR`` (default
    ``~/.cache/lmgendrive/pretrained``).
    """

    llm: str | None = None  # Llama/Vicuna directory (weights + tokenizer)
    stable_diffusion: str | None = None  # SD-1.5 directory with unet/ and vae/ subfolders
    motion_adapter: str | None = None  # AnimateDiff MotionAdapter directory
    clip: str | None = None  # CLIP ViT-L/14 directory
    resnet: str | None = None  # torchvision ImageNet weights file of the vision trunk (.pth)

    def named(self) -> list[str]:
        """The components given a local path."""
        return [name for name, value in self if value is not None]

    def resolve(self, name: str) -> Path | None:
        value = getattr(self, name)
        if value is None:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute():
            root = os.environ.get(PRETRAINED_ENV, "~/.cache/lmgendrive/pretrained")
            path = Path(root).expanduser() / path
        return path


class ModelConfig(_Frozen):
    """The whole LMGenDrive network."""

    preset: str = "custom"
    views: tuple[str, ...] = VIEWS
    image_size: tuple[int, int] = (224, 224)  # (H, W) of every frame the model sees and generates
    fps: int = 10
    frames_per_step: int = 8
    dtype: str = "float32"
    vision: VisionConfig = VisionConfig()
    qformer: QFormerConfig = QFormerConfig()
    llm: LLMConfig = LLMConfig()
    clip: ClipConfig = ClipConfig()
    fusion: FusionConfig = FusionConfig()
    unet: UNetConfig = UNetConfig()
    vae: VAEConfig = VAEConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    sampler: SamplerConfig = SamplerConfig()
    pretrained: PretrainedPaths = PretrainedPaths()

    @property
    def vision_views(self) -> tuple[str, ...]:
        """The views the vision encoder is fed: :attr:`views`, then the centre view if it sees one
        (``vision.center_view`` or ``vision.light_reader``)."""
        return (*self.views, CENTER_VIEW) if self.vision.sees_center else self.views

    @property
    def latent_size(self) -> tuple[int, int]:
        down = 2 ** (len(self.vae.block_out_channels) - 1)
        return self.image_size[0] // down, self.image_size[1] // down

    @classmethod
    def from_dict(cls, data: object) -> ModelConfig:
        """Build from JSON data (a checkpoint's ``config``); an unknown key, a value of the wrong
        type or an inconsistency raises :class:`ConfigError` naming the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"model config: config must be an object, got {type(data).__name__}")
        try:  # validated as JSON, where arrays stand for tuples
            return cls.model_validate_json(json.dumps(data))
        except ValidationError as e:
            problems = "; ".join(_describe(err) for err in e.errors())
            raise ConfigError(f"model config: {problems}") from None

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        """Raise naming the first inconsistent field."""
        _check(
            len(self.views) > 0 and len(set(self.views)) == len(self.views),
            "views",
            "must be non-empty and unique",
        )
        _check(
            not self.vision.sees_center
            or ("front" in self.views and CENTER_VIEW not in self.views),
            "vision.center_view" if self.vision.center_view else "vision.light_reader",
            f"needs a 'front' view to centre on, and {CENTER_VIEW!r} not among views",
        )
        _check(self.dtype in DTYPES, "dtype", f"must be one of {DTYPES}")
        _check(self.frames_per_step >= 1, "frames_per_step", "must be >= 1")
        _check(
            self.frames_per_step <= self.unet.motion_max_seq_length,
            "frames_per_step",
            "must not exceed unet.motion_max_seq_length",
        )
        v = self.vision
        _check(v.backbone in BACKBONES, "vision.backbone", f"must be one of {sorted(BACKBONES)}")
        _check(1 <= v.backbone_stages <= 4, "vision.backbone_stages", "must be 1..4")
        _check(v.dim % v.heads == 0, "vision.dim", "must be divisible by vision.heads")
        _check(1 <= v.bev_pool <= v.bev_size, "vision.bev_pool", "must be in 1..bev_size")
        _check(
            v.bev_range[0] < v.bev_range[1] and v.bev_range[2] < v.bev_range[3],
            "vision.bev_range",
            "must be (x_min < x_max, y_min < y_max)",
        )
        _check(v.num_waypoints >= 2, "vision.num_waypoints", "must be >= 2")
        _check(
            self.qformer.hidden % self.qformer.heads == 0,
            "qformer.hidden",
            "must be divisible by qformer.heads",
        )
        _check(self.qformer.num_queries >= 1, "qformer.num_queries", "must be >= 1")
        m = self.llm
        _check(m.hidden % m.heads == 0, "llm.hidden", "must be divisible by llm.heads")
        _check(m.heads % m.kv_heads == 0, "llm.kv_heads", "must divide llm.heads")
        _check(
            m.num_action_queries == v.num_waypoints,
            "llm.num_action_queries",
            "must equal vision.num_waypoints (one waypoint per action query)",
        )
        _check(
            not m.action_reads_readers or (v.lane_reader and v.light_reader),
            "llm.action_reads_readers",
            "needs both readers: set vision.lane_reader and vision.light_reader",
        )
        _check(
            m.history_frames >= 1 and m.num_world_queries >= 1,
            "llm.history_frames",
            "history_frames and num_world_queries must be >= 1",
        )
        needed = (
            m.max_instruction_tokens
            + m.history_frames * self.qformer.num_queries
            + 1
            + m.num_action_queries
            + m.num_world_queries
        )
        _check(
            needed <= m.max_positions,
            "llm.max_positions",
            f"must be >= {needed} (the LLM input length)",
        )
        _check(
            self.clip.hidden % self.clip.heads == 0,
            "clip.hidden",
            "must be divisible by clip.heads",
        )
        _check(
            self.clip.image_size % self.clip.patch_size == 0,
            "clip.image_size",
            "must be a multiple of patch_size",
        )
        u = self.unet
        n = len(u.block_out_channels)
        _check(
            len(u.down_block_types) == n and len(u.up_block_types) == n,
            "unet.down_block_types",
            "down/up block types must match block_out_channels in length",
        )
        _check(
            u.cross_attention_dim % self.fusion.heads == 0,
            "unet.cross_attention_dim",
            "must be divisible by fusion.heads",
        )
        _check(
            all(c % u.norm_groups == 0 for c in u.block_out_channels),
            "unet.norm_groups",
            "must divide every unet block width",
        )
        _check(
            all(c % self.vae.norm_groups == 0 for c in self.vae.block_out_channels),
            "vae.norm_groups",
            "must divide every vae block width",
        )
        down = 2 ** (len(self.vae.block_out_channels) - 1)
        _check(
            self.image_size[0] % down == 0 and self.image_size[1] % down == 0,
            "image_size",
            f"must be a multiple of {down} (the VAE downsampling)",
        )
        d = self.diffusion
        _check(0.0 <= d.cond_dropout < 1.0, "diffusion.cond_dropout", "must be in [0, 1)")
        _check(d.grad_steps >= 1, "diffusion.grad_steps", "must be >= 1")
        _check(
            d.concat_last_latent or not d.moved_context,
            "diffusion.moved_context",
            "needs diffusion.concat_last_latent: true (the moved frames are concatenated latents)",
        )
        return self


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{key} {message}")


def _describe(err: Any) -> str:
    """One validation error of a config as a sentence naming the key (``config.llm.hidden``)."""
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        if key in RENAMED:
            return f"config.{key} is now config.{RENAMED[key]}"
        section = ".".join(["config", *loc[:-1]])
        return f"unknown key {loc[-1]!r} in {section}; valid keys: {_keys(loc[:-1])}"
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:
        return msg
    got = "" if isinstance(err["input"], dict) else f" (got {err['input']!r})"
    return f"config.{key}: {msg}{got}"


def _keys(path: list[str]) -> list[str]:
    """The valid keys of the config section at ``path``."""
    model: Any = ModelConfig
    for name in path:
        model = model.model_fields[name].annotation
    return sorted(model.model_fields)


def preset_config(name: str) -> ModelConfig:
    """The named preset (``tiny``, ``demo``, ``paper``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; valid presets: {sorted(PRESETS)}")
    return PRESETS[name]()


def _tiny() -> ModelConfig:
    """Unit tests: 32x32 frames, widths 32-64, every call in milliseconds on a CPU."""
    return ModelConfig(
        preset="tiny",
        image_size=(32, 32),
        vision=VisionConfig(
            backbone="resnet18",
            backbone_stages=2,
            dim=32,
            heads=4,
            ffn_dim=64,
            encoder_layers=1,
            decoder_layers=1,
            dropout=0.0,
            bev_size=8,
            bev_range=(-8.0, 24.0, -16.0, 16.0),
            bev_pool=2,
        ),
        qformer=QFormerConfig(hidden=32, layers=2, heads=4, intermediate=64),
        llm=LLMConfig(
            hidden=64,
            layers=2,
            heads=4,
            kv_heads=4,
            intermediate=128,
            vocab_size=256,
            max_positions=512,
            history_frames=16,
            max_instruction_tokens=24,
        ),
        clip=ClipConfig(
            hidden=32, layers=1, heads=4, intermediate=64, image_size=32, patch_size=16
        ),
        fusion=FusionConfig(layers=1, heads=4),
        unet=UNetConfig(
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"),
            layers_per_block=1,
            attention_heads=2,
            norm_groups=16,
            cross_attention_dim=32,
            motion_heads=2,
            motion_max_seq_length=16,
            motion_mid_block=False,
        ),
        vae=VAEConfig(
            block_out_channels=(16, 32), layers_per_block=1, norm_groups=16, scaling_factor=1.0
        ),
        diffusion=DiffusionConfig(concat_last_latent=True),
        sampler=SamplerConfig(scheduler="ddim", steps=2),
    )


def _demo() -> ModelConfig:
    """The embedded checkpoint: 64x64 frames, 16x16 latents; trainable and usable on 2 CPU cores."""
    return ModelConfig(
        preset="demo",
        image_size=(64, 64),
        vision=VisionConfig(
            backbone="resnet18",
            backbone_stages=3,
            dim=64,
            heads=4,
            ffn_dim=128,
            encoder_layers=1,
            decoder_layers=2,
            dropout=0.0,
            bev_size=16,
            bev_range=(-8.0, 24.0, -16.0, 16.0),
            bev_pool=4,
            lane_reader=True,
            light_reader=True,
        ),
        qformer=QFormerConfig(hidden=64, layers=2, heads=4, intermediate=128),
        llm=LLMConfig(
            hidden=128,
            layers=4,
            heads=4,
            kv_heads=4,
            intermediate=256,
            vocab_size=512,
            max_positions=1024,
            history_frames=4,
            max_instruction_tokens=32,
            action_reads_readers=True,
        ),
        clip=ClipConfig(
            hidden=64, layers=2, heads=4, intermediate=128, image_size=64, patch_size=16
        ),
        fusion=FusionConfig(layers=1, heads=4),
        unet=UNetConfig(
            block_out_channels=(32, 64, 64),
            down_block_types=(
                "CrossAttnDownBlockMotion",
                "CrossAttnDownBlockMotion",
                "DownBlockMotion",
            ),
            up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion", "CrossAttnUpBlockMotion"),
            layers_per_block=1,
            attention_heads=4,
            norm_groups=16,
            cross_attention_dim=64,
            motion_heads=4,
            motion_max_seq_length=16,
            motion_mid_block=False,
        ),
        vae=VAEConfig(
            block_out_channels=(32, 64, 64), layers_per_block=1, norm_groups=16, scaling_factor=1.0
        ),
        diffusion=DiffusionConfig(concat_last_latent=True),
        sampler=SamplerConfig(
            scheduler="dpmsolver++", steps=12, strength=0.3, context_detail=True, warp_start=True
        ),
    )


def _paper() -> ModelConfig:
    """The paper: ResNet-50, Vicuna-7B, SD-1.5 UNet + AnimateDiff v1.5-2, CLIP ViT-L/14, 3 views at
    224x224."""
    return ModelConfig(
        preset="paper",
        dtype="bfloat16",
        # the paper's behaviour where this code deviates elsewhere (README: differences from the
        # paper): every BEV token to the Q-Former, waypoints regressed directly, no guidance dropout
        vision=VisionConfig(bev_pool=50),
        llm=LLMConfig(waypoint_prior="none"),
        diffusion=DiffusionConfig(cond_dropout=0.0),
        pretrained=PretrainedPaths(
            llm="vicuna-7b-v1.5",
            stable_diffusion="stable-diffusion-v1-5",
            motion_adapter="animatediff-motion-adapter-v1-5-2",
            clip="clip-vit-large-patch14",
        ),
    )


PRESETS = {"tiny": _tiny, "demo": _demo, "paper": _paper}

PUBLISHED = {
    "llm": "https://huggingface.co/lmsys/vicuna-7b-v1.5",
    "stable_diffusion": "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
    "motion_adapter": "https://huggingface.co/guoyww/animatediff-motion-adapter-v1-5-2",
    "clip": "https://huggingface.co/openai/clip-vit-large-patch14",
    "resnet": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth (torchvision)",
}
