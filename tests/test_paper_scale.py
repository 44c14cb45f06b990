"""The paper-scale path on tiny stand-ins: training starts from the pretrained components and keeps
what each stage freezes bit for bit; bf16 compute still updates float32 weights; a large checkpoint
loads without a second copy and round-trips through shards; bad component directories exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from pretrained_dirs import PATHS, write_big_checkpoint, write_components

from lmgendrive.checkpoint import build_untrained, load_checkpoint, save_checkpoint
from lmgendrive.config import preset_config
from lmgendrive.pretrained import load_components
from lmgendrive.train.config import PrecisionConfig, StageConfig, parse_config
from lmgendrive.train.loop import StageTrainer
from lmgendrive.train.runner import final_dir
from lmgendrive.weight_files import INDEX_FILE
from pipeline.cli import main
from scenes.procedural.drive import DriveSpec, ProceduralScene
from schemas.sampler import SamplerOverride


def _recipe(tmp_path: Path, root: Path, stages: dict, **model) -> dict:
    paths = {k: str(root / v) for k, v in PATHS.model_dump().items()}
    iters = {"iterations": 2, "batch_size": 1, "lr": 1e-3, "checkpoint_every": 2}
    return {
        "preset": "tiny",
        "model": {"pretrained": paths, **model},
        "workdir": str(tmp_path / "work"),
        "output": str(tmp_path / "model"),
        "data": {
            "towns": [3],
            "frames": 40,
            "size": 32,
            "cache": str(tmp_path / "scenes"),
            "context_frames": 2,
            "workers": 0,
        },
        "stages": {s: {**iters, **extra} for s, extra in stages.items()},
    }


def _write(tmp_path: Path, recipe: dict) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.fixture(scope="module")
def components(tmp_path_factory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """The component directories and, per part, the tensors they hold as the model names them."""
    root = tmp_path_factory.mktemp("pretrained")
    config = preset_config("tiny").model_copy(
        update={"pretrained": PATHS.model_copy(update={"resnet": None})}
    )
    write_components(root, config)
    import os

    os.environ["LMGD_PRETRAINED_DIR"] = str(root)  # relative PATHS resolve under it
    try:
        parts, _ = load_components(config, torch.float32)
    finally:
        del os.environ["LMGD_PRETRAINED_DIR"]
    resnet = torch.load(root / "resnet.pth", weights_only=True)
    trunk_names = {"conv1": 0, "bn1": 1, "layer1": 4, "layer2": 5}  # tiny keeps 2 ResNet stages
    trunk = {
        f"{trunk_names[k.split('.')[0]]}.{k.split('.', 1)[1]}": v
        for k, v in resnet.items()
        if k.split(".")[0] in trunk_names
    }
    return root, {
        "llm": parts.llm.state_dict(),
        "unet": parts.unet.state_dict(),
        "vae": parts.vae.state_dict(),
        "clip": parts.clip.state_dict(),
        "trunk": trunk,
    }


def _parts(model) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "llm": model.llm.model.state_dict(),
        "unet": model.generator.unet.state_dict(),
        "vae": model.generator.vae.state_dict(),
        "clip": model.conditioner.clip.state_dict(),
        "trunk": model.vision.trunk.state_dict(),
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_starts_from_the_components_and_keeps_each_stages_frozen_parts(
    components, tmp_path
):
    root, source = components
    stage3 = {"sequence_steps": [2], "sampler": {"steps": 1}}
    recipe = _recipe(tmp_path, root, {"1": {}, "2": {}, "3": stage3})
    config = _write(tmp_path, recipe)
    assert main(["train", "--stage", "1", "--config", config]) == 0
    after1 = _parts(load_checkpoint(final_dir_of(recipe, 1), "cpu")[0])
    for part in ("llm", "unet", "vae", "clip"):  # stage 1 trains the vision encoder alone
        assert _same(after1[part], source[part]), part
    assert not _same(after1["trunk"], source["trunk"])  # it started from the ImageNet file...
    readme = (final_dir_of(recipe, 1) / "README.md").read_text()
    assert "| llm | " in readme and "| resnet | " in readme  # ...which the README records
    assert main(["train", "--stage", "all", "--config", config]) == 0
    after2 = _parts(load_checkpoint(final_dir_of(recipe, 2), "cpu")[0])
    after3 = _parts(load_checkpoint(tmp_path / "model", "cpu")[0])
    for part in ("vae", "clip"):  # pretrained and frozen throughout
        assert _same(after2[part], source[part]) and _same(after3[part], source[part]), part
    assert _same(after2["trunk"], after1["trunk"])  # the encoder is frozen from stage 2 on
    assert not _same(after2["llm"], source["llm"]) and not _same(after2["unet"], source["unet"])
    assert _same(after3["unet"], after2["unet"])  # stage 3 freezes the generator
    assert not _same(after3["llm"], after2["llm"])


def final_dir_of(recipe: dict, stage: int) -> Path:
    return final_dir(parse_config(recipe), stage)


def test_the_first_stage_starts_from_the_component_tensors_bit_for_bit(components, tmp_path):
    from lmgendrive.checkpoint import build_model

    root, source = components
    config = parse_config(_recipe(tmp_path, root, {"1": {}})).network_config()
    built = _parts(build_model(config, seed=0))
    assert all(_same(built[part], source[part]) for part in source)


def test_bf16_compute_updates_the_float32_weights(tmp_path):
    """At lr 1e-5 under bf16 autocast, AdamW on float32 parameters moves nearly every weight in
    10 steps (with bf16 parameters most updates round away)."""
    scene = ProceduralScene(DriveSpec(town_seed=2, route_seed=1, frames=40, size=(32, 32)))
    from lmgendrive.train.data import DriveDataset

    model = build_untrained(preset_config("tiny").model_copy(update={"dtype": "bfloat16"}))
    stage = StageConfig(iterations=10, batch_size=1, lr=1e-5, weight_decay=0.01)
    trainer = StageTrainer(
        model,
        2,
        stage,
        DriveDataset([scene], model.config, context=2, steps=1),
        tmp_path,
        seed=0,
        precision=PrecisionConfig(compute="bfloat16"),
    )
    assert {p.dtype for p in trainer.params} == {torch.float32}
    frozen = [p for m in ("vision", "generator.vae") for p in model.get_submodule(m).parameters()]
    assert {p.dtype for p in frozen} == {torch.bfloat16}  # the frozen components
    before = [p.detach().clone() for p in trainer.params]
    trainer.run()
    changed = sum(int((p != b).sum()) for p, b in zip(trainer.params, before, strict=True))
    total = sum(p.numel() for p in trainer.params)
    assert changed / total >= 0.99


def test_a_sharded_checkpoint_round_trips_exactly(tmp_path):
    model = build_untrained("tiny", seed=5)
    save_checkpoint(model, tmp_path / "ckpt", max_shard_bytes=200_000)
    index = json.loads((tmp_path / "ckpt" / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "ckpt" / "model.safetensors").exists()
    loaded, identity = load_checkpoint(tmp_path / "ckpt", "cpu")
    assert _same(loaded.state_dict(), model.state_dict())
    assert identity == load_checkpoint(tmp_path / "ckpt", "cpu")[1]
    (tmp_path / "ckpt" / shards[1]).write_bytes((tmp_path / "ckpt" / shards[0]).read_bytes())
    from schemas.errors import CheckpointError

    with pytest.raises(CheckpointError, match=f"{shards[1]} is corrupt or was replaced"):
        load_checkpoint(tmp_path / "ckpt", "cpu")


PEAK = """
import re, sys, torch
from lmgendrive.checkpoint import load_checkpoint
def kib(key):
    return int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
before = kib("VmRSS")
model, _ = load_checkpoint(sys.argv[1], "cpu")
total = sum(float(p.float().sum()) for p in model.parameters())  # every tensor read
print((kib("VmHWM") - before) * 1024)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc")
def test_loading_a_1gb_checkpoint_peaks_at_its_size_not_twice(tmp_path):
    size = write_big_checkpoint(tmp_path / "big")
    assert size > 2**30
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(tmp_path / "big")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout.strip().splitlines()[-1]) / size <= 1.3


@pytest.mark.parametrize(
    "damage, named",
    [
        ("missing", "clip/config.json"),
        ("malformed", "clip/config.json"),
        ("bin_only", "adapter/diffusion_pytorch_model.safetensors"),
        ("vocabulary", "llm"),
    ],
)
def test_a_bad_component_directory_exits_2_naming_the_file(
    components, tmp_path, capsys, damage, named
):
    import shutil

    root = tmp_path / "pretrained"
    shutil.copytree(components[0], root)
    if damage == "missing":
        shutil.rmtree(root / "clip")
    elif damage == "malformed":
        (root / "clip" / "config.json").write_text("{not json")
    elif damage == "bin_only":
        weights = root / "adapter" / "diffusion_pytorch_model.safetensors"
        weights.rename(weights.with_name("diffusion_pytorch_model.bin"))
    else:  # a tokenizer of another model: more tokens than the Llama vocabulary
        from lmgendrive.tokenizer import DEFAULT_CORPUS, build_tokenizer

        words = [f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(400)]
        build_tokenizer([*DEFAULT_CORPUS, *words], 1024).save_pretrained(str(root / "llm"))
    config = _write(tmp_path, _recipe(tmp_path, root, {"2": {}}))
    assert main(["train", "--stage", "all", "--config", config]) == 2
    err = capsys.readouterr().err
    assert str(root / named) in err, err
    if damage == "bin_only":
        assert "pickled and refused" in err
    if damage == "vocabulary":
        assert "tokens but the Llama weights" in err
    assert not (tmp_path / "work" / "stage2" / "final").exists()


def test_the_paper_recipe_validates_where_its_components_and_data_are(
    tmp_path, capsys, monkeypatch
):
    """`lmgd job validate jobs/train_paper.yaml`: ok with the component files and an LMDrive root
    in place (nothing is loaded: empty files do), exit 2 naming the first missing file."""
    recipe = yaml.safe_load(Path("jobs/train_paper.yaml").read_text())
    root = tmp_path / "lmdrive"
    render = ["scenes", "render", "--town-seed", "2", "--route-seed", "0", "--frames", "6"]
    assert main([*render, "--out", str(root)]) == 0
    recipe["data"]["lmdrive_root"] = str(root)
    path = _write(tmp_path, recipe)
    pretrained = tmp_path / "pretrained"
    monkeypatch.setenv("LMGD_PRETRAINED_DIR", str(pretrained))
    capsys.readouterr()
    assert main(["job", "validate", path]) == 2
    assert str(pretrained / "resnet50-11ad3fa6.pth") in capsys.readouterr().err
    for name in [
        "resnet50-11ad3fa6.pth",
        "vicuna-7b-v1.5/config.json",
        "vicuna-7b-v1.5/model.safetensors.index.json",
        "vicuna-7b-v1.5/tokenizer.model",
        "stable-diffusion-v1-5/unet/config.json",
        "stable-diffusion-v1-5/unet/diffusion_pytorch_model.safetensors",
        "stable-diffusion-v1-5/vae/config.json",
        "stable-diffusion-v1-5/vae/diffusion_pytorch_model.safetensors",
        "animatediff-motion-adapter-v1-5-2/config.json",
        "animatediff-motion-adapter-v1-5-2/diffusion_pytorch_model.safetensors",
    ]:
        (pretrained / name).parent.mkdir(parents=True, exist_ok=True)
        (pretrained / name).touch()
    assert main(["job", "validate", path]) == 2  # CLIP is still missing
    assert str(pretrained / "clip-vit-large-patch14" / "config.json") in capsys.readouterr().err
    (pretrained / "clip-vit-large-patch14").mkdir()
    (pretrained / "clip-vit-large-patch14" / "config.json").touch()
    (pretrained / "clip-vit-large-patch14" / "model.safetensors").touch()
    assert main(["job", "validate", path]) == 0
    out = capsys.readouterr().out
    assert "training recipe: preset paper" in out and "1 LMDrive route(s)" in out
    config = parse_config(recipe).network_config()
    assert config.image_size == (224, 224) and config.frames_per_step == 8
    assert {s.lr for s in parse_config(recipe).stages.values()} == {1e-5}


def test_the_paper_preset_defaults_to_the_papers_behaviour():
    paper, demo = preset_config("paper"), preset_config("demo")
    assert paper.vision.bev_pool == paper.vision.bev_size  # every BEV token to the Q-Former
    assert paper.llm.waypoint_prior == "none" and demo.llm.waypoint_prior == "constant_velocity"
    assert paper.diffusion.cond_dropout == 0.0 < demo.diffusion.cond_dropout
    stage3 = StageConfig(iterations=2, batch_size=1, lr=1e-5)
    assert stage3.fed_back(3, paper=True) == SamplerOverride()  # the model's sampler, from noise
    assert stage3.fed_back(3).strength == 0.8  # ours: a few steps from the still last frame


def test_the_waypoint_prior_switch_adds_constant_velocity_or_nothing():
    """The same weights under both settings: the waypoints differ by exactly the constant-velocity
    extrapolation of the measured speed."""
    from lmgendrive.llm import constant_velocity

    tiny = preset_config("tiny")
    out = {}
    for prior in ("constant_velocity", "none"):
        llm_config = tiny.llm.model_copy(update={"waypoint_prior": prior})
        llm = build_untrained(tiny.model_copy(update={"llm": llm_config}), seed=0).llm.eval()
        b, n, hidden = 2, llm_config.num_action_queries, llm_config.hidden
        with torch.no_grad():
            out[prior] = llm(
                torch.zeros(b, 3, hidden),
                torch.ones(b, 3, dtype=torch.long),
                torch.zeros(b, 1, tiny.qformer.num_queries, hidden),
                torch.tensor([0.0, 8.0]),
                torch.zeros(b, n, 2),
                False,
            ).waypoints
    offset = out["constant_velocity"] - out["none"]
    assert torch.allclose(offset, constant_velocity(torch.tensor([0.0, 8.0]), n), atol=1e-5)
    assert offset[1, -1, 0] > 5.0  # 8 m/s for 0.8 s


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path):
    """The recipe switch recomputes the LLM's and the UNet's activations in backward: the same
    loss and the same gradients as without it."""
    from lmgendrive.train.data import DriveDataset

    scene = ProceduralScene(DriveSpec(town_seed=2, route_seed=1, frames=40, size=(32, 32)))
    grads = {}
    for on in (False, True):
        model = build_untrained("tiny")
        trainer = StageTrainer(
            model,
            2,
            StageConfig(iterations=1, batch_size=1, lr=1e-5),
            DriveDataset([scene], model.config, context=2, steps=1),
            tmp_path / str(on),
            seed=0,
            precision=PrecisionConfig(gradient_checkpointing=on),
        )
        assert model.llm.model.gradient_checkpointing is on
        assert model.generator.unet.is_gradient_checkpointing is on
        torch.manual_seed(0)
        batch = next(iter(torch.utils.data.DataLoader(trainer.dataset, batch_size=1)))
        torch.manual_seed(1)
        out = trainer.objective(batch, 1, None)
        out.loss.backward()
        grads[on] = (out.loss.item(), [p.grad.clone() for p in trainer.params])
    assert grads[False][0] == pytest.approx(grads[True][0], rel=1e-6)
    assert all(
        torch.allclose(a, b, atol=1e-6)
        for a, b in zip(grads[False][1], grads[True][1], strict=True)
    )


def test_context_noise_needs_a_context_latent_to_noise(tmp_path):
    """The long-horizon switches reach every preset, but noise on a context latent the model does
    not read is refused, naming the key."""
    from schemas.errors import ConfigError

    recipe = _recipe(tmp_path, tmp_path, {"2": {"context_noise": 0.2}})
    recipe["model"] = {"diffusion": {"concat_last_latent": False}}
    with pytest.raises(ConfigError, match="stages.2|concat_last_latent"):
        parse_config(recipe)
    recipe["model"] = {}
    assert parse_config(recipe).stage(2).context_noise == 0.2
