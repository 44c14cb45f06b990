"""The paper-scale path on tiny stand-ins, each figure beside what it replaced, in one run:

* ``pretrained_init_exact``: the model a recipe naming pretrained component directories starts
  from holds their tensors bit for bit (Llama, UNet + motion adapter, VAE, CLIP, ResNet trunk);
* ``bf16_updated_fraction``: share of trainable weights that change in 10 stage-2 iterations at lr
  1e-5 under bf16 compute (float32 weights and AdamW state, autocast); beside it
  ``bf16_parameters_updated_fraction``, the same with the parameters themselves in bf16 (before);
* ``load_peak_rss_over_file``: peak resident memory of loading a >1 GiB checkpoint (every tensor
  read), over the size of its files, in a fresh process; beside it
  ``random_init_then_copy_peak_rss_over_file``, building the model with random weights first and
  copying the file's tensors into it (before);
* ``gpu``: ``bench/gpu.py``'s figures where CUDA exists, else why they were skipped.

    python bench/paper_scale.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# the tiny Hugging Face-format component directories the tests write (tests/pretrained_dirs.py)
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from pretrained_dirs import PATHS, write_big_checkpoint, write_components  # noqa: E402

from lmgendrive.checkpoint import build_model, build_untrained  # noqa: E402
from lmgendrive.config import preset_config  # noqa: E402
from lmgendrive.pretrained import TRUNK_INDEX, load_components  # noqa: E402
from lmgendrive.train.config import PrecisionConfig, StageConfig  # noqa: E402
from lmgendrive.train.data import DriveDataset  # noqa: E402
from lmgendrive.train.loop import StageTrainer  # noqa: E402
from scenes.procedural.drive import DriveSpec, ProceduralScene  # noqa: E402

LOAD = """
import re, sys, torch
from lmgendrive.checkpoint import load_checkpoint
def kib(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
before = kib("VmRSS")
if sys.argv[2] == "meta":
    model, _ = load_checkpoint(sys.argv[1], "cpu")
else:  # before: random weights first, then the file's tensors copied into them
    from safetensors.torch import load_file
    from lmgendrive.checkpoint import _skeleton
    from lmgendrive.checkpoint_meta import read_meta
    from pathlib import Path
    directory = Path(sys.argv[1])
    model = _skeleton(directory, read_meta(directory)[1])
    state = {}
    for f in sorted(directory.glob("*.safetensors")):
        state.update(load_file(f))
    model.load_state_dict(state)
sum(float(p.float().sum()) for p in model.parameters())
print((kib("VmHWM") - before) * 1024)
"""


def pretrained_init_exact(root: Path) -> bool:
    config = preset_config("tiny").model_copy(
        update={"pretrained": PATHS.model_copy(update={k: str(root / v) for k, v in PATHS})}
    )
    write_components(root, config)
    model = build_model(config, seed=0)
    parts, _ = load_components(config, torch.float32)
    resnet = torch.load(root / PATHS.resnet, weights_only=True)
    trunk = model.vision.trunk.state_dict()
    pairs = [
        (model.llm.model, parts.llm),
        (model.generator.unet, parts.unet),
        (model.generator.vae, parts.vae),
        (model.conditioner.clip, parts.clip),
    ]
    same = all(
        torch.equal(a, b)
        for mine, theirs in pairs
        for a, b in zip(mine.state_dict().values(), theirs.state_dict().values(), strict=True)
    )
    for name, tensor in resnet.items():
        head, _, rest = name.partition(".")
        if head in TRUNK_INDEX and TRUNK_INDEX[head] < len(model.vision.trunk):
            same = same and torch.equal(trunk[f"{TRUNK_INDEX[head]}.{rest}"], tensor)
    return same


def updated_fraction(workdir: Path, bf16_parameters: bool) -> float:
    """Share of the stage-2 trainable weights changed by 10 iterations at lr 1e-5, bf16 compute."""
    scene = ProceduralScene(DriveSpec(town_seed=2, route_seed=1, frames=40, size=(32, 32)))
    model = build_untrained(preset_config("tiny").model_copy(update={"dtype": "bfloat16"}))
    trainer = StageTrainer(
        model,
        2,
        StageConfig(iterations=10, batch_size=1, lr=1e-5, weight_decay=0.01),
        DriveDataset([scene], model.config, context=2, steps=1),
        workdir,
        seed=0,
        precision=PrecisionConfig(compute="bfloat16"),
    )
    if bf16_parameters:  # before: the whole model, trainable weights included, in bf16
        model.to(torch.bfloat16)
        trainer.compute_dtype = torch.float32  # no autocast: the weights already are bf16
    before = [p.detach().clone() for p in trainer.params]
    trainer.run()
    changed = sum(int((p != b).sum()) for p, b in zip(trainer.params, before, strict=True))
    return changed / sum(p.numel() for p in trainer.params)


def load_peaks(workdir: Path) -> tuple[float, float, int]:
    """Peak RSS over file size when loading a >1 GiB checkpoint: now, and before."""
    size = write_big_checkpoint(workdir / "big")
    peaks = []
    for way in ("meta", "random_init"):
        out = subprocess.run(
            [sys.executable, "-c", LOAD, str(workdir / "big"), way],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(int(out.stdout.strip().splitlines()[-1]) / size)
    return peaks[0], peaks[1], size


def gpu_figures() -> dict:
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    import gpu

    return gpu.measure("paper", repeats=3, max_memory_gib=80.0)


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exact = pretrained_init_exact(tmp / "pretrained")
        fp32_masters = updated_fraction(tmp / "a", bf16_parameters=False)
        bf16_params = updated_fraction(tmp / "b", bf16_parameters=True)
        meta_peak, copy_peak, size = load_peaks(tmp)
    result = {
        "pretrained_init_exact": exact,
        "bf16_updated_fraction": round(fp32_masters, 4),
        "bf16_parameters_updated_fraction": round(bf16_params, 4),
        "load_peak_rss_over_file": round(meta_peak, 3),
        "random_init_then_copy_peak_rss_over_file": round(copy_peak, 3),
        "checkpoint_bytes": size,
        "gpu": gpu_figures(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
