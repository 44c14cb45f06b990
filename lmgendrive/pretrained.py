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
            pickled = sorted(p.name for p in (path / group[0]).parent.glob("*.bin"))
            refused = (
                f" ({', '.join(pickled)} there is pickled and refused: convert it to safetensors)"
                if pickled and group[0].endswith(".safetensors")
                else ""
            )
            raise CheckpointError(
                f"missing {path / group[0]}{refused}: put the {name} component there "
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


def component_dirs(config: ModelConfig) -> dict[str, Path]:
    """The four component directories (none when the config names none of them), each checked to
    hold its files (nothing is read); a missing one raises :class:`CheckpointError` naming the
    file. The ResNet file, when named, is checked too."""
    resnet = config.pretrained.resolve("resnet")
    if resnet is not None and not resnet.is_file():
        raise CheckpointError(_missing_resnet(resnet, config))
    if not set(config.pretrained.named()) - {"resnet"}:
        return {}
    return {
        "llm": _require(
            config,
            "llm",
            [
                ("config.json",),
                ("model.safetensors", "model.safetensors.index.json"),
                ("tokenizer.json", "tokenizer.model"),
            ],
        ),
        "stable_diffusion": _require(
            config,
            "stable_diffusion",
            [
                ("unet/config.json",),
                (f"unet/{DIFFUSERS_WEIGHTS}",),
                ("vae/config.json",),
                (f"vae/{DIFFUSERS_WEIGHTS}",),
            ],
        ),
        "motion_adapter": _require(
            config, "motion_adapter", [("config.json",), (DIFFUSERS_WEIGHTS,)]
        ),
        "clip": _require(config, "clip", [("config.json",), ("model.safetensors",)]),
    }


def _missing_resnet(path: Path, config: ModelConfig) -> str:
    return (
        f"missing {path}: put the torchvision {config.vision.backbone} ImageNet weights there "
        f"(published at {PUBLISHED['resnet']}), or point config pretrained.resnet"
    )


def load_components(
    config: ModelConfig, dtype: torch.dtype
) -> tuple[PretrainedComponents, PreTrainedTokenizerBase]:
    """Load the Llama backbone and tokenizer, SD-1.5 UNet + AnimateDiff adapter, VAE and CLIP vision
    tower."""
    dirs = component_dirs(config)
    llm_dir, sd_dir = dirs["llm"], dirs["stable_diffusion"]
    adapter_dir, clip_dir = dirs["motion_adapter"], dirs["clip"]
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
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)  # float32; the caller casts
        vae = AutoencoderKL.from_pretrained(str(sd_dir), subfolder="vae", torch_dtype=dtype, **hub)
        log.info("loading CLIP vision tower from %s", clip_dir)
        clip = CLIPVisionModel.from_pretrained(str(clip_dir), dtype=dtype, **hub)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load a pretrained component: {exc}") from exc
    if len(tokenizer) > llm.config.vocab_size:
        raise CheckpointError(
            f"the tokenizer in {llm_dir} has {len(tokenizer)} tokens but the Llama weights there "
            f"have vocab_size {llm.config.vocab_size}: they are not the same model's"
        )
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


# torchvision ResNet names -> the vision encoder's trunk (nn.Sequential: conv1, bn1, relu,
# maxpool, layer1..layer4)
TRUNK_INDEX = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5, "layer3": 6, "layer4": 7}


def load_resnet_trunk(vision: nn.Module, config: ModelConfig) -> None:
    """Copy the torchvision ImageNet weights named by ``config.pretrained.resnet`` into the
    vision encoder's trunk (the stages it keeps; the classifier is dropped). Read with
    ``torch.load(weights_only=True)``: tensors only, nothing unpickled."""
    path = config.pretrained.resolve("resnet")
    if path is None:
        return
    if not path.is_file():
        raise CheckpointError(_missing_resnet(path, config))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path} is not a torchvision weights file: {exc}") from exc
    trunk = {}
    for name, tensor in state.items():
        head, _, rest = name.partition(".")
        if head in TRUNK_INDEX and TRUNK_INDEX[head] < len(vision.trunk):
            trunk[f"{TRUNK_INDEX[head]}.{rest}"] = tensor
    try:
        vision.trunk.load_state_dict(trunk, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path} does not fit the {config.vision.backbone} trunk of the model config: {exc}"
        ) from exc
    log.info("vision trunk from %s", path)


def component_files(config: ModelConfig) -> list[tuple[str, Path, str]]:
    """(component, file, sha256) of every weight and tokenizer file of the named components, for
    a checkpoint's README."""
    from lmgendrive.weight_files import file_sha256

    rows = []
    for name in config.pretrained.named():
        path = config.pretrained.resolve(name)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        rows += [(name, f, file_sha256(f)) for f in files if not f.name.startswith(".")]
    return rows
