"""Vision encoder (paper section 3.2) with its stage-1 perception heads (their targets, batches and
loss are training code: :mod:`lmgendrive.train.perception`).

Per view, a torchvision ResNet trunk and a 1x1 convolution give image tokens; view and 2D position
embeddings are added and a transformer encoder fuses all views. A transformer decoder whose
queries are the sinusoidal encodings of the BEV cell centres (no LiDAR), plus learnable waypoint
queries and one traffic-light query, produces the visual tokens handed to the Q-Former.

BEV grid: ``bev_size`` x ``bev_size`` cells over ``bev_range = (x_min, x_max, y_min, y_max)`` in the
ego frame (x forward, y left, metres). Row 0 is the farthest forward, column 0 the farthest left
(a top-down image with the ego heading up).

Traffic light: four classes, :data:`LIGHT_CLASSES` = none / red / yellow / green (the state of the
light that affects the ego; LMDrive's 2-way "red or not" loses the yellow phase the procedural
world has).

Readers (:class:`PixelReader`, optional): small networks of their own beside the shared encoder
that read what a controller needs from pixels, and whose tokens the Q-Former never sees, so adding
them to a trained model changes nothing the planner reads: the lane reader (where the car stands in
its lane) and the light reader (the colour of the light just ahead, from the centre view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lmgendrive.config import BACKBONES, VisionConfig

LIGHT_CLASSES = ("none", "red", "yellow", "green")
LANE_OUTPUTS = ("offset", "heading", "in_lane")
READER_GRID = 8  # a reader's feature map per view, pooled to this many cells a side
DET_CHANNELS = ("prob", "dx", "dy", "ori_x", "ori_y", "box_x", "box_y", "speed")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sincos_2d(y: torch.Tensor, x: torch.Tensor, dim: int, scale: float = 1.0) -> torch.Tensor:
    """Sinusoidal embedding (N, dim) of 2D coordinates ``(y, x)`` (each (N,)), dim divisible by
    4."""
    quarter = dim // 4
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(quarter, device=x.device, dtype=torch.float32) / quarter
    )
    ay = (y.float()[:, None] * scale) * freq
    ax = (x.float()[:, None] * scale) * freq
    emb = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


def bev_cell_centres(config: VisionConfig) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame (x, y) of every BEV cell centre, each (bev_size, bev_size), row-major."""
    x_min, x_max, y_min, y_max = config.bev_range
    n = config.bev_size
    cx, cy = (x_max - x_min) / n, (y_max - y_min) / n
    xs = x_max - (np.arange(n) + 0.5) * cx
    ys = y_max - (np.arange(n) + 0.5) * cy
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    return gx, gy


@dataclass
class VisualTokens:
    """Decoder outputs for N frames: BEV (N, S*S, d), waypoint (N, K, d) and light (N, 1, d)
    tokens, and the lane and light readers' (N, 1, d) where the encoder has them
    (:class:`PixelReader`; not handed to the Q-Former)."""

    bev: torch.Tensor
    waypoints: torch.Tensor
    light: torch.Tensor
    lane: torch.Tensor | None = None
    near_light: torch.Tensor | None = None

    def for_qformer(self, pool: int) -> torch.Tensor:
        """LMDrive's Q-Former input: BEV pooled to pool x pool, then waypoint and light tokens."""
        n, cells, d = self.bev.shape
        side = math.isqrt(cells)
        grid = self.bev.transpose(1, 2).reshape(n, d, side, side)
        pooled = F.adaptive_avg_pool2d(grid, pool).flatten(2).transpose(1, 2)
        return torch.cat([pooled, self.waypoints, self.light], dim=1)


@dataclass
class PerceptionOutput:
    """Stage-1 head outputs: detection (N, S, S, 8) with a logit in channel 0, waypoints (N, K, 2),
    light logits (N, 4), and where the encoder has them the lane reader's (N, 3;
    :data:`LANE_OUTPUTS`) and the light reader's logits (N, 4; :data:`LIGHT_CLASSES`)."""

    detection: torch.Tensor
    waypoints: torch.Tensor
    light_logits: torch.Tensor
    lane: torch.Tensor | None = None
    near_light: torch.Tensor | None = None


class PixelReader(nn.Module):
    """A reading taken from pixels: a small convolutional network shared by ``num_views`` views
    (three stride-2 convolutions, pooled to :data:`READER_GRID` x :data:`READER_GRID`), the views'
    features joined into one token of the encoder's width, and a linear head to ``outputs``.

    Two are built on it. The lane reader (``vision.lane_reader``, every view) reads
    :data:`LANE_OUTPUTS`: the lateral offset in metres and heading error in radians, both left of
    the lane centre positive, and the logit of being in a lane at all (a junction box has none).
    The light reader (``vision.light_reader``, the centre view alone) reads :data:`LIGHT_CLASSES`
    logits of the light just ahead, what a red-light rule stops on (:mod:`driving.light_rule`).

    Not in LMDrive: its encoder tells the planner where the car is only through BEV and waypoint
    tokens, and ours keeps too little of the lane pose for a planner to steer back to the centre
    (``bench/lane_probe.py``). A reader on the shared encoder's fused tokens (a query of its own
    through a decoder layer, tried first) reads them no better than a linear probe (R² 0.71 for
    the offset, 0.41 for the heading, against 0.91 / 0.86 for a small CNN on the front view's
    pixels): at 64 px a view is 4 x 4 tokens, too coarse for a lane line's place and slant. So
    readers read pixels, as lane detectors do, and sit beside the shared encoder: adding one to a
    trained model changes no token the planner reads."""

    def __init__(self, config: VisionConfig, num_views: int, outputs: int):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, kernel in ((3, 16, 5), (16, 32, 3), (32, 64, 3)):
            layers += [nn.Conv2d(c_in, c_out, kernel, 2, kernel // 2), nn.ReLU()]
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(READER_GRID), nn.Flatten())
        self.join = nn.Sequential(nn.Linear(num_views * 64 * READER_GRID**2, config.dim), nn.ReLU())
        self.head = nn.Linear(config.dim, outputs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The reader's token (N, 1, d) of normalised views ``images`` (N, V, 3, H, W)."""
        n = images.shape[0]
        return self.join(self.convs(images.flatten(0, 1)).view(n, -1))[:, None]


def _resnet_trunk(name: str, stages: int) -> tuple[nn.Sequential, int]:
    net = getattr(torchvision.models, name)(weights=None)
    layers = [
        net.conv1,
        net.bn1,
        net.relu,
        net.maxpool,
        net.layer1,
        net.layer2,
        net.layer3,
        net.layer4,
    ]
    return nn.Sequential(*layers[: 4 + stages]), BACKBONES[name] // 2 ** (4 - stages)


def center_from_front(front: torch.Tensor) -> torch.Tensor:
    """The centre view cut from front views (N, 3, H, W): their centre quarter of the width and
    height, resized to H x W (for frames that have no centre view drawn, as generated ones)."""
    h, w = front.shape[-2:]
    crop = front[..., 3 * h // 8 : h - 3 * h // 8, 3 * w // 8 : w - 3 * w // 8]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)


class VisionEncoder(nn.Module):
    """Multi-view frames -> :class:`VisualTokens`; stage-1 heads in :meth:`perceive`.

    ``num_views`` camera views, and the centre view after them where the config sees it
    (``vision.center_view``: the shared encoder too; ``vision.light_reader``: the light reader
    alone), cut from view ``front_index`` where a frame lacks it (:func:`center_from_front`)."""

    def __init__(self, config: VisionConfig, num_views: int, front_index: int | None = None):
        super().__init__()
        if config.sees_center and front_index is None:
            raise ValueError("a vision encoder with the centre view needs the front view's index")
        self.config = config
        self.num_views, self.front_index = num_views, front_index
        d = config.dim
        self.trunk, width = _resnet_trunk(config.backbone, config.backbone_stages)
        self.proj = nn.Conv2d(width, d, kernel_size=1)
        self.view_embed = nn.Parameter(torch.randn(num_views + config.center_view, d) * 0.02)
        layer = dict(
            d_model=d,
            nhead=config.heads,
            dim_feedforward=config.ffn_dim,
            dropout=config.dropout,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**layer), config.encoder_layers, enable_nested_tensor=False
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(**layer), config.decoder_layers
        )
        self.bev_query_proj = nn.Linear(d, d)
        self.waypoint_queries = nn.Parameter(torch.randn(config.num_waypoints, d) * 0.02)
        self.light_query = nn.Parameter(torch.randn(1, d) * 0.02)
        gx, gy = bev_cell_centres(config)
        span = max(
            config.bev_range[1] - config.bev_range[0], config.bev_range[3] - config.bev_range[2]
        )
        bev_pos = sincos_2d(
            torch.from_numpy(gx).flatten(), torch.from_numpy(gy).flatten(), d, 100.0 / span
        )
        self.register_buffer("bev_pos", bev_pos, persistent=False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.detection_head = nn.Sequential(
            nn.Linear(d, d), nn.GELU(), nn.Linear(d, len(DET_CHANNELS))
        )
        self.waypoint_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, 2))
        self.light_head = nn.Linear(d, len(LIGHT_CLASSES))
        self.lane_reader = (
            PixelReader(config, num_views + config.center_view, len(LANE_OUTPUTS))
            if config.lane_reader
            else None
        )
        self.light_reader = (
            PixelReader(config, 1, len(LIGHT_CLASSES)) if config.light_reader else None
        )
        self.frozen = False

    @property
    def tokens_per_frame(self) -> int:
        return self.config.bev_pool**2 + self.config.num_waypoints + 1

    def freeze(self) -> None:
        """Freeze after stage 1: no gradients to the weights, BatchNorm/dropout in eval mode for
        good."""
        self.frozen = True
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VisionEncoder:
        return super().train(mode and not self.frozen)

    def forward(self, pixels: torch.Tensor) -> VisualTokens:
        """``pixels`` float (N, V, 3, H, W) in [-1, 1] -> visual tokens of the N frames (V: the
        camera views, and the centre view if the encoder sees one; cut from the front view when
        left out)."""
        n, drawn = pixels.shape[0], pixels.shape[1] > self.num_views
        center = None
        if self.config.sees_center:
            center = (
                pixels[:, self.num_views :]
                if drawn
                else center_from_front(pixels[:, self.front_index])[:, None]
            )
        shared = pixels if drawn or not self.config.center_view else torch.cat([pixels, center], 1)
        shared = shared[:, : self.num_views + self.config.center_view]  # what the encoder fuses
        v = shared.shape[1]
        x = self._normalise(shared.flatten(0, 1))
        lane = None if self.lane_reader is None else self.lane_reader(x.unflatten(0, (n, v)))
        near_light = None
        if self.light_reader is not None:
            near_light = self.light_reader(self._normalise(center.flatten(0, 1))[:, None])
        feat = self.proj(self.trunk(x))  # (N*V, d, h, w)
        d, h, w = feat.shape[1:]
        ys, xs = torch.meshgrid(
            torch.arange(h, device=feat.device), torch.arange(w, device=feat.device), indexing="ij"
        )
        pos = sincos_2d(ys.flatten(), xs.flatten(), d).to(feat.dtype)
        tokens = feat.flatten(2).transpose(1, 2) + pos  # (N*V, h*w, d)
        tokens = tokens.view(n, v, h * w, d) + self.view_embed[None, :v, None, :]
        memory = self.encoder(tokens.reshape(n, v * h * w, d))
        queries = torch.cat(
            [
                self.bev_query_proj(self.bev_pos.to(memory.dtype)),
                self.waypoint_queries,
                self.light_query,
            ]
        )
        out = self.decoder(queries.expand(n, -1, -1), memory)
        cells, k = self.bev_pos.shape[0], self.config.num_waypoints
        return VisualTokens(
            bev=out[:, :cells],
            waypoints=out[:, cells : cells + k],
            light=out[:, cells + k :],
            lane=lane,
            near_light=near_light,
        )

    def _normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> ImageNet-normalised, as the ResNet trunk expects."""
        return ((pixels + 1.0) / 2.0 - self.mean) / self.std

    def perceive(self, tokens: VisualTokens) -> PerceptionOutput:
        """Stage-1 heads on the visual tokens."""
        s = self.config.bev_size
        det = self.detection_head(tokens.bev).view(-1, s, s, len(DET_CHANNELS))
        return PerceptionOutput(
            detection=det,
            waypoints=self.waypoint_head(tokens.waypoints),
            light_logits=self.light_head(tokens.light[:, 0]),
            lane=self.lane_pose(tokens),
            near_light=self.near_light_logits(tokens),
        )

    def lane_pose(self, tokens: VisualTokens) -> torch.Tensor | None:
        """The lane reader's (N, 3) outputs (:data:`LANE_OUTPUTS`), None without one."""
        if self.lane_reader is None or tokens.lane is None:
            return None
        return self.lane_reader.head(tokens.lane[:, 0])

    def near_light_logits(self, tokens: VisualTokens) -> torch.Tensor | None:
        """The light reader's (N, 4) logits (:data:`LIGHT_CLASSES`), None without one."""
        if self.light_reader is None or tokens.near_light is None:
            return None
        return self.light_reader.head(tokens.near_light[:, 0])
