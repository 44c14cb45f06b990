"""Training (tiny preset, seconds): the stage loop lowers each loss, resumes exactly, freezes the
generator in stage 3 and the planner in stage 4, writes loadable checkpoints and loss curves;
recipes are validated."""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from lmgendrive.checkpoint import build_untrained, load_checkpoint, save_checkpoint
from lmgendrive.config import ModelConfig, preset_config
from lmgendrive.train import tokens as tokens_module
from lmgendrive.train.backend import LocalBackend
from lmgendrive.train.config import StageConfig, parse_config
from lmgendrive.train.curves import plot_log
from lmgendrive.train.data import DriveDataset, FrameDataset, PlannerData
from lmgendrive.train.loop import StageTrainer
from lmgendrive.train.losses import planner_loss
from lmgendrive.train.runner import TOKEN_CACHE_FILE, final_dir, run, starting_model
from lmgendrive.train.stages import (
    drive_batch,
    drop_ego_status,
    objective,
    set_stage,
    straighten_previous_action,
)
from lmgendrive.train.tokens import PlannerWindows, VisionTokenCache
from scenes.procedural.drive import DriveSpec, ProceduralScene
from schemas.errors import ConfigError
from schemas.sampler import SamplerOverride


@pytest.fixture(scope="module")
def small_scene() -> ProceduralScene:
    return ProceduralScene(DriveSpec(town_seed=2, route_seed=1, frames=40, size=(32, 32)))


class OneWindow(torch.utils.data.Dataset):
    """The same training window every time: a fixed batch of identical samples."""

    def __init__(self, dataset: torch.utils.data.Dataset, index: int):
        self.item = dataset[index]

    def __len__(self) -> int:
        return 1

    def __getitem__(self, k: int) -> dict:
        return self.item


def _dataset(scene: ProceduralScene, stage: int, model) -> torch.utils.data.Dataset:
    if stage < 2:
        return FrameDataset([scene], model.config)
    return DriveDataset([scene], model.config, context=2, steps=1 if stage == 2 else 2)


def _moved_context_model():
    """The tiny model with ``diffusion.moved_context``."""
    data = preset_config("tiny").model_dump(mode="json")
    data["diffusion"]["moved_context"] = True
    return build_untrained(ModelConfig.from_dict(data))


def _trainer(
    scene, stage, tmp_path, iterations=8, lr=2e-3, dataset=None, planner=False, moved=False, **kw
) -> StageTrainer:
    """``planner``: False, True (planner batches of pixels) or "tokens"
    (of cached vision tokens); ``moved``: the model conditions on the moved context."""
    model = _moved_context_model() if moved else build_untrained("tiny")
    config = StageConfig(
        iterations=iterations,
        batch_size=2,
        lr=lr,
        warmup=1,
        weight_decay=0.0,
        clip=5.0,
        sequence_steps=[2],
        sampler={"steps": 2},
        planner=(
            {"batch_size": 3, "straight_previous": 0.5, "ego_status_dropout": 0.5}
            if planner
            else None
        ),
        **kw,
    )
    dataset = dataset or _dataset(scene, stage, model)
    plans = None
    if planner:
        windows = _dataset(scene, 2, model)
        cached = (
            PlannerWindows(windows, VisionTokenCache.build(model, windows))
            if planner == "tokens"
            else None
        )
        plans = PlannerData(windows, 0.75, (16, 8), cached)
    return StageTrainer(model, stage, config, dataset, tmp_path, seed=0, planner=plans)


@pytest.mark.parametrize(
    ("stage", "moved"),
    [(0, False), (1, False), (2, False), (3, False), (4, False), (2, True), (4, True)],
)
def test_each_stage_loss_decreases_through_the_loop(stage, moved, small_scene, tmp_path):
    torch.manual_seed(0)
    model = build_untrained("tiny")
    fixed = OneWindow(_dataset(small_scene, stage, model), 5)
    noise = {"context_noise": 0.3} if stage == 4 else {}
    trainer = _trainer(small_scene, stage, tmp_path, dataset=fixed, moved=moved, **noise)
    losses = trainer.run()
    assert len(losses) == 8 and (tmp_path / "log.jsonl").is_file() and (tmp_path / "state").is_dir()
    assert min(losses[-2:]) < 0.9 * losses[0], losses


@pytest.mark.parametrize(
    ("stage", "planner", "moved"),
    [
        (1, False, False),
        (3, False, False),
        (2, True, False),
        (3, "tokens", False),
        (4, False, False),
        (2, False, True),
    ],
)
def test_resume_gives_identical_losses(stage, planner, moved, small_scene, tmp_path):
    kw = {"planner": planner, "iterations": 4, "moved": moved}
    if stage == 4:
        kw["context_noise"] = 0.3
    torch.manual_seed(0)
    straight = _trainer(small_scene, stage, tmp_path / "straight", **kw).run()
    torch.manual_seed(0)
    first = _trainer(small_scene, stage, tmp_path / "split", **kw)
    head = first.run(until=2)
    torch.manual_seed(123)  # a new process: different RNG state until the saved one is restored
    second = _trainer(small_scene, stage, tmp_path / "split", **kw)
    assert second.resume() and second.progress.step == 2 and second.progress.samples == 4
    tail = second.run()
    assert head + tail == straight
    rows = (tmp_path / "split" / "log.jsonl").read_text().splitlines()
    assert len(rows) == 4


def test_stage3_feeds_back_videos_from_its_own_sampler_start_not_the_models():
    """The demo model generates from the moved start at 0.3; stage 3 of its recipe fed back videos
    from the still start at 0.8, and keeps doing so unless its config says otherwise; the keys
    neither sets are the model's."""
    model = build_untrained("demo")
    assert model.config.sampler.warp_start and model.config.sampler.strength == 0.3
    stage = StageConfig(iterations=10, batch_size=1, lr=1e-4, sampler={"steps": 4})
    sampler = objective(model, 3, stage).sampler
    assert (sampler.strength, sampler.warp_start, sampler.steps) == (0.8, False, 4)
    assert (sampler.scheduler, sampler.context_detail) == ("dpmsolver++", True)  # the model's
    override = SamplerOverride(strength=0.5, warp_start=True)
    moved = objective(model, 3, stage.model_copy(update={"sampler": override})).sampler
    assert (moved.strength, moved.warp_start, moved.steps) == (0.5, True, 3)
    assert objective(model, 2, stage).sampler is None


def test_a_recipe_with_the_old_sampler_keys_names_the_new_ones(tmp_path):
    recipe = {
        "preset": "tiny",
        "workdir": str(tmp_path),
        "output": str(tmp_path / "model"),
        "stages": {"3": {"iterations": 2, "batch_size": 1, "lr": 1e-4, "sampler_steps": 3}},
    }
    with pytest.raises(ConfigError, match=r"stages\.3\.sampler_steps: now sampler\.steps"):
        parse_config(recipe)


def test_straightened_previous_actions_keep_their_distances():
    bend = torch.tensor([[1.0, 0.0], [2.0, 0.2], [2.9, 0.6], [3.7, 1.2]])
    batch = {"prev_waypoints": bend.expand(400, 4, 2).clone(), "speed": torch.ones(400)}
    torch.manual_seed(0)
    out = straighten_previous_action(batch, 0.5)
    straight = (out["prev_waypoints"][:, :, 1] == 0).all(dim=1)
    assert 0.4 < straight.float().mean() < 0.6
    assert torch.equal(out["prev_waypoints"][~straight], batch["prev_waypoints"][~straight])
    assert torch.allclose(
        out["prev_waypoints"][straight][:, :, 0], bend.norm(dim=-1).expand(int(straight.sum()), 4)
    )
    assert out["speed"] is batch["speed"] and straighten_previous_action(batch, 0.0) is batch


def test_dropped_ego_status_reads_as_at_rest_and_the_rest_is_kept():
    prev = torch.arange(1.0, 9.0).view(1, 4, 2).expand(400, 4, 2).clone()
    batch = {"prev_waypoints": prev, "speed": torch.full((400,), 6.0), "tokens": torch.ones(400)}
    torch.manual_seed(0)
    out = drop_ego_status(batch, 0.3)
    dropped = out["speed"] == 0
    assert 0.22 < dropped.float().mean() < 0.38
    assert (out["prev_waypoints"][dropped] == 0).all()
    assert torch.equal(out["prev_waypoints"][~dropped], prev[~dropped])
    assert (out["speed"][~dropped] == 6.0).all() and out["tokens"] is batch["tokens"]
    assert drop_ego_status(batch, 0.0) is batch


def test_planner_loss_from_cached_tokens_equals_the_loss_from_pixels(small_scene):
    other = ProceduralScene(DriveSpec(town_seed=5, route_seed=0, frames=30, size=(32, 32)))
    torch.manual_seed(0)
    model = build_untrained("tiny")
    set_stage(model, 3)  # the encoder frozen (eval mode), as in stages 2-3
    windows = DriveDataset([small_scene, other], model.config, context=2, steps=1, pad_start=True)
    cache = VisionTokenCache.build(model, windows)
    assert cache.tokens.shape[0] == len(small_scene) + len(other)
    cached = PlannerWindows(windows, cache)
    picks = [0, 17, len(windows) - 1]  # the last window is in the second scene: offsets matter
    assert windows.index[picks[-1]][0] == 1
    assert windows.index[0] == (0, 0)  # the first frame, its history padded with itself
    assert torch.equal(cached[0]["tokens"][0], cached[0]["tokens"][1])
    collate = torch.utils.data.default_collate
    pixels = drive_batch(collate([windows[k] for k in picks]), 1)
    tokens = drive_batch(collate([cached[k] for k in picks]), 1)
    assert (
        tokens.frames is None and tokens.future_frames is None and tokens.tokens.shape[:2] == (3, 2)
    )
    assert (
        torch.equal(tokens.waypoints, pixels.waypoints)
        and tokens.instructions == pixels.instructions
    )
    model.train()  # dropout in the compressor and LLM: the same noise for both
    torch.manual_seed(1)
    expected = planner_loss(model, pixels)
    torch.manual_seed(1)
    got = planner_loss(model, tokens)
    for name, value in expected.terms.items():
        assert got.terms[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_the_token_cache_file_is_reused_only_by_the_same_encoder_and_scenes(
    small_scene, tmp_path, monkeypatch
):
    torch.manual_seed(0)
    model = build_untrained("tiny")
    windows = DriveDataset([small_scene], model.config, context=2, steps=1)
    path = tmp_path / "tokens.safetensors"
    first = VisionTokenCache.build(model, windows, path=path)
    assert path.is_file() and not path.with_name(path.name + ".partial").exists()
    encoded = []
    real = tokens_module._encode_all
    monkeypatch.setattr(tokens_module, "_encode_all", lambda *a: encoded.append(1) or real(*a))
    assert (
        torch.equal(VisionTokenCache.build(model, windows, path=path).tokens, first.tokens)
        and not encoded
    )
    fewer = DriveDataset(
        [ProceduralScene(DriveSpec(town_seed=2, route_seed=1, frames=30, size=(32, 32)))],
        model.config,
        context=2,
        steps=1,
    )
    assert (
        VisionTokenCache.build(model, fewer, path=path).tokens.shape[0] == 30 and len(encoded) == 1
    )
    with torch.no_grad():
        model.vision.proj.weight.add_(
            0.1
        )  # another encoder: its tokens differ, the file is rewritten
    retrained = VisionTokenCache.build(model, windows, path=path)
    assert len(encoded) == 2 and not torch.equal(retrained.tokens, first.tokens)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("planner", [False, True, "tokens"])
def test_stage3_changes_the_llm_not_the_generator(planner, small_scene, tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(small_scene, 3, tmp_path, iterations=2, planner=planner)
    model = trainer.model
    frozen = {
        name: _snapshot(getattr(model, name)) for name in ("generator", "conditioner", "vision")
    }
    llm = _snapshot(model.llm)
    trainer.run()
    for name, before in frozen.items():
        after = getattr(model, name).state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    assert any(not torch.equal(llm[k], v) for k, v in model.llm.state_dict().items())


def test_stage4_changes_the_generator_not_the_planner_vae_or_encoder(small_scene, tmp_path):
    torch.manual_seed(0)
    trainer = _trainer(small_scene, 4, tmp_path, iterations=2, context_noise=0.3)
    m = trainer.model
    parts = {
        "llm": m.llm,
        "compressor": m.compressor,
        "vision": m.vision,
        "vae": m.generator.vae,
        "unet": m.generator.unet,
        "conditioner": m.conditioner,
    }
    before = {name: _snapshot(module) for name, module in parts.items()}
    trainer.run()
    changed = {
        name
        for name, module in parts.items()
        if any(not torch.equal(before[name][k], v) for k, v in module.state_dict().items())
    }
    assert changed == {"unet", "conditioner"}


def test_all_stages_write_a_loadable_checkpoint_and_curves(tmp_path):
    iters = {"iterations": 2, "batch_size": 2, "lr": 1e-3, "checkpoint_every": 1}
    config = parse_config(
        {
            "preset": "tiny",
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
            "stages": {
                "0": iters,
                "1": iters,
                "2": iters,
                "3": {
                    **iters,
                    "sequence_steps": [2],
                    "sampler": {"steps": 1},
                    "planner": {"batch_size": 2, "routes_per_town": 2, "token_cache": True},
                },
                "4": {
                    **iters,
                    "sequence_steps": [2],
                    "sampler": {"steps": 2, "strength": 0.5, "context_noise": 0.1},
                    "context_noise": 0.3,
                },
            },
        }
    )
    assert run(config, [0, 1]) is None  # not the last stage: no output yet
    assert run(config) == tmp_path / "model"  # stages 0 and 1 are done and skipped; 2-4 train
    model, _ = load_checkpoint(tmp_path / "model", "cpu")
    assert float(model.generator.latent_scale) != 1.0  # calibrated after stage 0
    # the generator trained on its own rollouts keeps the sampler they were drawn with
    assert (model.config.sampler.steps, model.config.sampler.context_noise) == (2, 0.1)
    assert (tmp_path / "scenes" / "dataset_index.txt").is_file()
    for stage in range(5):
        assert (tmp_path / "model" / f"loss_stage{stage}.png").is_file()
    readme = (tmp_path / "model" / "README.md").read_text()
    assert (
        "| 3 | 2 | 2 |" in readme
        and "planner batches of 2" in readme
        and "encoder tokens cached" in readme
    )
    assert "fed-back sampler steps 1, strength 0.8, warp_start False" in readme
    assert "| 4 | 2 | 2 |" in readme and "noised to U(0, 0.3)" in readme
    assert (tmp_path / "work" / TOKEN_CACHE_FILE).is_file()
    assert '"plan_heading"' in (tmp_path / "work" / "stage3" / "log.jsonl").read_text()
    assert (
        len(list((tmp_path / "scenes").glob("town0003_route000[01]_*"))) == 2
    )  # the planner's second route


def test_a_stage_starts_from_the_checkpoint_at_the_previous_stages_final_else_warns(
    tmp_path, caplog
):
    iters = {"iterations": 2, "batch_size": 1, "lr": 1e-4, "sequence_steps": [2]}
    recipe = {"preset": "tiny", "workdir": str(tmp_path), "output": str(tmp_path / "model")}
    trained = build_untrained("tiny", seed=7)
    save_checkpoint(trained, final_dir(parse_config({**recipe, "stages": {"3": iters}}), 3))
    backend = LocalBackend()
    with caplog.at_level(logging.WARNING, logger="lmgendrive.train.runner"):
        after = starting_model(
            parse_config({**recipe, "stages": {"3": iters, "4": iters}}), 4, backend
        )
        assert not caplog.records
        alone = starting_model(parse_config({**recipe, "stages": {"4": iters}}), 4, backend)
    weight = "generator.unet.conv_in.weight"
    assert torch.equal(after.state_dict()[weight], trained.state_dict()[weight])
    assert not torch.equal(alone.state_dict()[weight], trained.state_dict()[weight])
    assert "stage 4 is this recipe's first configured stage" in caplog.text
    assert str(tmp_path / "stage3" / "final") in caplog.text


def test_loss_curve_png(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [
        f'{{"stage": 2, "step": {i}, "loss": {3 / i:.4f}, "lr": 0.001, "grad_norm": 1.0, '
        f'"seconds": 0.1, "waypoints": {2 / i:.4f}, "completion": 0.7, '
        f'"diffusion": {1 / i:.4f}}}'
        for i in range(1, 120)
    ]
    log.write_text("\n".join(rows) + "\n")
    png = plot_log(log, tmp_path / "loss.png", "stage 2")
    with Image.open(png) as img:
        assert img.size == (1100, 400)
    assert plot_log(tmp_path / "missing.jsonl", tmp_path / "none.png", "x") is None
