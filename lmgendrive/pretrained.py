"""Pretrained components of the ``paper`` preset, loaded from local Hugging Face-format directories.

Nothing is downloaded: each directory named in :class:`~lmgendrive.config.PretrainedPaths` must
already hold the files, in safetensors format (pickled ``.bin`` weights are refused). A missing
directory or file raises :class:`~schemas.errors.CheckpointError` naming the file, where to put
it and where it is published.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from torch import nn
from transformers import CLIPVisionModel, LlamaModel, PreTrainedTokenizerBase

from lmgendrive.config import PRETRAINED_ENV, PUBLISHED, ModelConfig
from lmgendrive.model import PretrainedComponents
from lmgendrive.tokenizer import load_tokenizer
from schemas.errors import CheckpointError

log = logging.getLogger(__name__)

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _require(config: ModelConfig, name: str, files: list[tuple[str, ...]]) -> Path:
    """The component directory, after checking that one file of each alternative group exists."""
    path = config.pretrained.resolve(name)
    where = f"config pretrained.{name}; relative paths are under ${PRETRAINED_ENV}"
    if path is None:
        raise CheckpointError(f"no local directory configured for the {name} component ({where})")
    for group in files:
        if not any((path / f).is_file() for f in group):
            raise CheckpointError(
                f"missing {path / group[0]}: put the {name} component there "
                "(safetensors, Hugging Face layout; "
                f"published at {PUBLISHED[name]}), or point {where}"
            )
    return path


def _check(what: str, got: object, expected: object) -> None:
    if got != expected:
        raise CheckpointError(
            f"pretrained {what} is {got!r} but the model config expects {expected!r}"
        )


def _expand_conv_in(unet: UNetMotionModel, in_channels: int) -> None:
    """Widen the UNet input to ``in_channels`` (extra channels start at zero: the pretrained output
    is unchanged)."""
    old = unet.conv_in
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        padding=old.padding,
        dtype=old.weight.dtype,
        device=old.weight.device,
    )
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


def load_components(
    config: ModelConfig, dtype: torch.dtype
) -> tuple[PretrainedComponents, PreTrainedTokenizerBase]:
    """Load the Llama backbone and tokenizer, SD-1.5 UNet + AnimateDiff adapter, VAE and CLIP vision
    tower."""
    llm_dir = _require(
        config,
        "llm",
        [
            ("config.json",),
            ("model.safetensors", "model.safetensors.index.json"),
            ("tokenizer.json", "tokenizer.model"),
        ],
    )
    sd_dir = _require(
        config,
        "stable_diffusion",
        [
            ("unet/config.json",),
            (f"unet/{DIFFUSERS_WEIGHTS}",),
            ("vae/config.json",),
            (f"vae/{DIFFUSERS_WEIGHTS}",),
        ],
    )
    adapter_dir = _require(config, "motion_adapter", [("config.json",), (DIFFUSERS_WEIGHTS,)])
    clip_dir = _require(config, "clip", [("config.json",), ("model.safetensors",)])
    hub = dict(local_files_only=True, use_safetensors=True)
    try:
        log.info("loading Llama from %s", llm_dir)
        llm = LlamaModel.from_pretrained(str(llm_dir), dtype=dtype, **hub)
        tokenizer = load_tokenizer(llm_dir)
        log.info("loading SD-1.5 UNet and VAE from %s, motion adapter from %s", sd_dir, adapter_dir)
        unet2d = UNet2DConditionModel.from_pretrained(
            str(sd_dir), subfolder="unet", torch_dtype=dtype, **hub
        )
        adapter = MotionAdapter.from_pretrained(str(adapter_dir), torch_dtype=dtype, **hub)
        unet = UNetMotionModel.from_unet2d(
            unet2d, adapter
        )  # float32; load_checkpoint casts the model
        vae = AutoencoderKL.from_pretrained(str(sd_dir), subfolder="vae", torch_dtype=dtype, **hub)
        log.info("loading CLIP vision tower from %s", clip_dir)
        clip = CLIPVisionModel.from_pretrained(str(clip_dir), dtype=dtype, **hub)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a pretrained component: {exc}") from exc
    _check("Llama hidden_size", llm.config.hidden_size, config.llm.hidden)
    _check("Llama vocab_size", llm.config.vocab_size, config.llm.vocab_size)
    _check(
        "UNet cross_attention_dim", unet.config.cross_attention_dim, config.unet.cross_attention_dim
    )
    _check("VAE latent_channels", vae.config.latent_channels, config.vae.latent_channels)
    _check("CLIP hidden_size", clip.config.hidden_size, config.clip.hidden)
    _check(
        "CLIP image_size / patch_size",
        (clip.config.image_size, clip.config.patch_size),
        (config.clip.image_size, config.clip.patch_size),
    )
    if config.diffusion.concat_last_latent:
        _expand_conv_in(unet, 2 * config.vae.latent_channels)
    return PretrainedComponents(llm=llm, unet=unet, vae=vae, clip=clip), tokenizer
