"""The action head's reader branch (``llm.action_reads_readers``): a trained model gains it at
zero and plans as before; stage 2's ``reader_branch_only`` trains it alone on planner batches,
whose token cache carries the readers' values; recipes that cannot have it say so."""

from __future__ import annotations

import json

import pytest
import torch

from lmgendrive.checkpoint import build_untrained, load_checkpoint, save_checkpoint
from lmgendrive.config import ModelConfig, preset_config
from lmgendrive.train.config import parse_config
from lmgendrive.train.data import DriveDataset
from lmgendrive.train.losses import planner_loss
from lmgendrive.train.runner import run
from lmgendrive.train.stages import drive_batch, set_stage
from lmgendrive.train.tokens import PlannerWindows, VisionTokenCache
from scenes.procedural.drive import DriveSpec, ProceduralScene
from schemas.errors import ConfigError


def _with_readers(seed: int = 0):
    model = build_untrained("tiny", seed=seed)
    model.add_readers(seed=0, lane=True, light=True)
    return model


def _seed_frames(model, n: int = 2, t: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    size = model.config.image_size
    shape = (n, len(model.config.vision_views), t, *size, 3)
    return torch.randint(0, 256, shape, generator=g).to(torch.uint8)


def _eval_waypoint_loss(model, batch) -> float:
    """The planner's waypoint loss on ``batch`` without dropout, leaving ``model`` training."""
    model.eval()
    with torch.no_grad():
        loss = float(planner_loss(model, batch).terms["plan_waypoints"])
    model.train()
    return loss


def test_a_reader_branch_added_to_a_trained_model_plans_as_before_and_trains_alone():
    model = _with_readers().eval()
    frames, instructions = _seed_frames(model), ["turn left", "go straight"]
    speed = [0.0, 6.0]
    before = model.plan(model.start(frames, instructions, speed=speed)).waypoints
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_reader_branch(seed=0)
    assert model.config.llm.action_reads_readers
    start = model.start(frames, instructions, speed=speed)
    assert torch.equal(torch.as_tensor(model.plan(start).waypoints), torch.as_tensor(before))

    trainable = set_stage(model, 2, reader_branch_only=True)
    assert {id(p) for p in trainable} == {id(p) for p in model.llm.reader_branch.parameters()}
    model.train()
    batch = drive_batch(
        {
            "frames": frames,
            "instruction": instructions,
            "speed": torch.tensor(speed),
            "prev_waypoints": torch.zeros(2, 4, 2),
            "waypoints": torch.zeros(2, 1, 4, 2),  # both stop
            "completed": torch.zeros(2, 1),
        },
        1,
    )
    optimizer = torch.optim.Adam(trainable, lr=1e-2)
    first = _eval_waypoint_loss(model, batch)
    torch.manual_seed(0)  # the dropout masks of the training steps
    for _ in range(30):
        out = planner_loss(model, batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert _eval_waypoint_loss(model, batch) < 0.5 * first  # it learns to stop the moving car
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state.items())  # nothing else moved
    # and what it makes of the plan depends on what the readers read
    model.eval()
    start = model.start(frames, instructions, speed=speed)
    read = model.plan(start).waypoints
    start.light = torch.flip(start.light, dims=[1])
    assert not torch.allclose(torch.as_tensor(model.plan(start).waypoints), torch.as_tensor(read))


def test_the_token_cache_carries_the_readers_values_and_plans_as_from_pixels():
    model = _with_readers()
    model.add_reader_branch(seed=0)
    torch.nn.init.normal_(model.llm.reader_branch.out.weight, std=0.5)  # as if trained
    set_stage(model, 2, reader_branch_only=True)
    scene = ProceduralScene(
        DriveSpec(town_seed=3, route_seed=0, frames=30, size=(32, 32), center_view=True)
    )
    windows = DriveDataset([scene], model.config, context=2, steps=1, pad_start=True)
    cache = VisionTokenCache.build(model, windows)
    assert cache.readers.shape == (len(scene), 7)
    assert ((cache.readers[:, 3:].sum(1) - 1).abs() < 1e-5).all()  # light probabilities
    cached = PlannerWindows(windows, cache)
    picks = [0, 11, len(windows) - 1]
    collate = torch.utils.data.default_collate
    pixels = drive_batch(collate([windows[k] for k in picks]), 1)
    tokens = drive_batch(collate([cached[k] for k in picks]), 1)
    assert tokens.readers.shape == (3, 7)
    model.eval()
    expected = planner_loss(model, pixels)
    got = planner_loss(model, tokens)
    for name, value in expected.terms.items():
        assert got.terms[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    readerless = VisionTokenCache(cache.tokens, cache.offsets)
    no_readers = drive_batch(collate([PlannerWindows(windows, readerless)[k] for k in picks]), 1)
    with pytest.raises(ConfigError, match="readers' values"):
        planner_loss(model, no_readers)


def _recipe(tmp_path, start_from: str, model: dict, **stage) -> dict:
    return {
        "preset": "tiny",
        "start_from": start_from,
        "model": model,
        "workdir": str(tmp_path / "work"),
        "output": str(tmp_path / "model"),
        "data": {"towns": [3], "frames": 30, "size": 32, "cache": str(tmp_path / "scenes")},
        "stages": {"2": {"iterations": 4, "batch_size": 1, "lr": 1e-2, "warmup": 1, **stage}},
    }


READERS = {"vision": {"lane_reader": True, "light_reader": True}}
BRANCH = {**READERS, "llm": {"action_reads_readers": True}}
PLANNER = {"batch_size": 3, "token_cache": True}


def test_stage_2_trains_the_reader_branch_of_a_trained_checkpoint_and_nothing_else(tmp_path):
    trained = _with_readers(seed=7)
    save_checkpoint(trained, tmp_path / "trained", trained_stages=[0, 1, 2, 3])
    recipe = _recipe(
        tmp_path, str(tmp_path / "trained"), BRANCH, reader_branch_only=True, planner=PLANNER
    )
    recipe["data"]["workers"] = 0
    assert run(parse_config(recipe)) == tmp_path / "model"
    model, _ = load_checkpoint(tmp_path / "model", "cpu")
    assert model.config.llm.action_reads_readers
    old, new = trained.state_dict(), model.state_dict()
    assert {k for k in new if k not in old} == {
        k for k in new if k.startswith("llm.reader_branch.")
    }
    assert all(torch.equal(new[k], v) for k, v in old.items())  # the video's weights as they were
    assert model.llm.reader_branch.out.weight.abs().sum() > 0  # trained off zero
    meta = json.loads((tmp_path / "model" / "config.json").read_text())
    assert meta["trained_stages"] == [0, 1, 2, 3]
    rows = (tmp_path / "work" / "stage2" / "log.jsonl").read_text().splitlines()
    assert len(rows) == 4 and all("plan_waypoints" in json.loads(r) for r in rows)
    assert "diffusion" not in rows[-1]  # planner batches alone
    assert "reader branch alone" in (tmp_path / "model" / "README.md").read_text()


def test_models_and_recipes_that_cannot_have_the_reader_branch_say_so(tmp_path):
    data = preset_config("tiny").model_dump(mode="json")
    data["llm"]["action_reads_readers"] = True
    with pytest.raises(ConfigError, match="llm.action_reads_readers.*both readers"):
        ModelConfig.from_dict(data)
    stage = {"reader_branch_only": True, "planner": PLANNER}
    with pytest.raises(ConfigError, match="reader_branch_only.*stage 2 only"):
        parse_config(_recipe(tmp_path, "demo", READERS, **stage))  # no branch in the model
    with pytest.raises(ConfigError, match="reader_branch_only"):
        parse_config(_recipe(tmp_path, "demo", BRANCH, reader_branch_only=True))  # no planner
    bad = _recipe(tmp_path, "demo", BRANCH)
    bad["stages"]["3"] = {"iterations": 2, "batch_size": 1, "lr": 1e-4, **stage}
    with pytest.raises(ConfigError, match="stage 3: reader_branch_only"):
        parse_config(bad)
    model = _with_readers()
    model.add_reader_branch(seed=0)
    args = (
        torch.zeros(1, 2, model.config.llm.hidden),
        torch.ones(1, 2, dtype=torch.bool),
        torch.zeros(1, 1, model.config.qformer.num_queries, model.config.llm.hidden),
        torch.zeros(1),
        torch.zeros(1, 4, 2),
    )
    with pytest.raises(ValueError, match="readers must be given"):
        model.llm(*args)
    with pytest.raises(ValueError, match="readers must be given"):
        _with_readers().llm(*args, readers=torch.zeros(1, 7))
