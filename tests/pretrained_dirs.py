"""Tiny stand-ins for the paper's pretrained components, written in the Hugging Face layout with
``save_pretrained``: Vicuna (``LlamaModel`` + a fast tokenizer), SD-1.5 (``unet/``, ``vae/``), the
AnimateDiff ``MotionAdapter`` and the CLIP vision tower, plus a torchvision ResNet weights file;
and a large random checkpoint for measuring what loading costs."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from accelerate import init_empty_weights
from diffusers import MotionAdapter, UNet2DConditionModel
from transformers import LlamaModel

from lmgendrive.checkpoint import save_checkpoint
from lmgendrive.config import ModelConfig, PretrainedPaths, preset_config
from lmgendrive.llm import llama_config
from lmgendrive.model import LMGenDrive
from lmgendrive.tokenizer import DEFAULT_CORPUS, build_tokenizer
from lmgendrive.world import build_clip, build_vae

PATHS = PretrainedPaths(
    llm="llm", stable_diffusion="sd", motion_adapter="adapter", clip="clip", resnet="resnet.pth"
)


def write_components(root: Path, config: ModelConfig, dtype: torch.dtype = torch.float32) -> None:
    """The components ``config`` (a tiny preset) expects, under ``root`` as :data:`PATHS` names
    them, their weights stored in ``dtype``."""
    torch.manual_seed(1234)
    u = config.unet
    LlamaModel(llama_config(config.llm)).to(dtype).save_pretrained(root / "llm")
    build_tokenizer(DEFAULT_CORPUS, config.llm.vocab_size).save_pretrained(str(root / "llm"))
    UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=u.block_out_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=u.layers_per_block,
        norm_num_groups=u.norm_groups,
        cross_attention_dim=u.cross_attention_dim,
        attention_head_dim=u.attention_heads,
    ).to(dtype).save_pretrained(root / "sd" / "unet")
    build_vae(config).to(dtype).save_pretrained(root / "sd" / "vae")
    MotionAdapter(
        block_out_channels=u.block_out_channels,
        motion_layers_per_block=u.layers_per_block,
        motion_num_attention_heads=u.motion_heads,
        motion_norm_num_groups=u.norm_groups,
        motion_max_seq_length=u.motion_max_seq_length,
        use_motion_mid_block=False,
    ).to(dtype).save_pretrained(root / "adapter")
    build_clip(config).to(dtype).save_pretrained(root / "clip")
    resnet = getattr(torchvision.models, config.vision.backbone)(weights=None)
    torch.save(resnet.to(dtype).state_dict(), root / "resnet.pth")


def write_big_checkpoint(directory: Path) -> int:
    """A ``tiny`` model with a 1024-wide, 22-layer LLM (1.15 GB in float32), random weights drawn
    without a first initialisation, saved in 300 MiB shards; returns the bytes of its weights."""
    tiny = preset_config("tiny")
    llm = tiny.llm.model_copy(update={"hidden": 1024, "layers": 22, "intermediate": 2816})
    config = tiny.model_copy(update={"llm": llm})
    with init_empty_weights():
        model = LMGenDrive(config, build_tokenizer(DEFAULT_CORPUS, llm.vocab_size))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    save_checkpoint(model, directory, max_shard_bytes=300 * 2**20)
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))
