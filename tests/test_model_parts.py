"""LMGenDrive building blocks on the tiny preset: config, tokenizer, BEV targets, shapes of every
part."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lmgendrive.checkpoint import build_untrained
from lmgendrive.config import ModelConfig, preset_config
from lmgendrive.device import pick_device
from lmgendrive.sampling import sample_frames
from lmgendrive.tokenizer import DEFAULT_CORPUS, build_tokenizer, load_tokenizer
from lmgendrive.train.perception import build_bev_targets
from lmgendrive.vision import DET_CHANNELS, LIGHT_CLASSES
from schemas.errors import ConfigError


@pytest.mark.parametrize("name", ["tiny", "demo", "paper"])
def test_presets_round_trip_through_json(name):
    config = preset_config(name)
    again = ModelConfig.from_dict(json.loads(json.dumps(config.model_dump(mode="json"))))
    assert again == config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["llm"].update(hiddn=3),
            r"unknown key 'hiddn' in config\.llm; valid keys: .*'hidden'",
        ),
        (
            lambda d: d["llm"].update(hidden="wide"),
            r"config\.llm\.hidden: Input should be a valid integer",
        ),
        (
            lambda d: d["llm"].update(hidden=True),
            r"config\.llm\.hidden: Input should be a valid integer",
        ),
        (lambda d: d["llm"].update(hidden=66), "llm.hidden must be divisible by llm.heads"),
        (
            lambda d: d.update(image_size=[32, 32, 3]),
            r"config\.image_size: Tuple should have at most 2 items",
        ),
        (
            lambda d: d["sampler"].update(scheduler="euler"),
            r"config\.sampler\.scheduler: Input should be",
        ),
        (
            lambda d: d["sampler"].update(steps=4, strength=0.1),
            "at least one denoising step, got 0.1 x 4",
        ),
        (
            lambda d: d["sampler"].update(name="ddim"),
            r"sampler\.name is now config\.sampler\.scheduler",
        ),
        (
            lambda d: d["sampler"].update(guidance_scale=1.0),
            r"guidance_scale is now config\.sampler\.guidance",
        ),
    ],
)
def test_config_errors_name_the_key(change, message):
    data = preset_config("tiny").model_dump(mode="json")
    change(data)
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_dict(data)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset_config("huge")


def test_pick_device(monkeypatch):
    monkeypatch.setenv("LMGD_DEVICE", "cpu")
    assert pick_device() == torch.device("cpu")
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ConfigError):
        pick_device("not-a-device")


def test_tokenizer_splits_digits_and_round_trips(tmp_path):
    tok = build_tokenizer(DEFAULT_CORPUS, 256)
    ids = tok("After 97 meters, turn left.")["input_ids"]
    assert tok.unk_token_id not in ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    tok.save_pretrained(str(tmp_path))
    assert (
        load_tokenizer(tmp_path)("After 97 meters")["input_ids"]
        == tok("After 97 meters")["input_ids"]
    )


def test_bev_targets_place_objects_in_cells():
    cfg = preset_config("tiny").vision  # 8x8 cells of 4 m over x in [-8, 24], y in [-16, 16]
    objects = np.array(
        [
            [0, 21.0, 15.0, 0.5, 4.0, 2.0, 3.0],  # row 0 (x in [20, 24]), column 0 (y in [12, 16])
            [1, 1.0, -1.0, 0.0, 0.8, 0.8, 1.0],  # row 5, column 4
            [0, 1.9, -2.1, 0.0, 4.0, 2.0, 9.0],  # same cell as the pedestrian but nearer its centre
            [0, 40.0, 0.0, 0.0, 4.0, 2.0, 0.0],  # outside the grid
        ]
    )
    t = build_bev_targets(objects, cfg)
    assert t.shape == (8, 8, len(DET_CHANNELS)) and t[..., 0].sum() == 2
    np.testing.assert_allclose(
        t[0, 0], [1, -0.25, 0.25, math.cos(0.5), math.sin(0.5), 2.0, 1.0, 3.0], rtol=1e-6
    )
    np.testing.assert_allclose(t[5, 4, [1, 2, 7]], [-0.025, -0.025, 9.0], atol=1e-6)
    only_pedestrians = build_bev_targets(objects, cfg, classes={1})
    assert only_pedestrians[..., 0].sum() == 1 and only_pedestrians[5, 4, 7] == 1.0
    assert build_bev_targets(np.zeros((0, 7)), cfg).sum() == 0


def test_shapes_of_every_part(model):
    cfg = model.config
    b, v, (h, w) = 2, len(cfg.views), cfg.image_size
    d, hidden, q = cfg.vision.dim, cfg.llm.hidden, cfg.qformer.num_queries
    pixels = torch.rand(b, v, 3, h, w) * 2 - 1
    with torch.no_grad():
        tokens = model.vision(pixels)
        assert tokens.bev.shape == (b, cfg.vision.bev_size**2, d)
        assert tokens.waypoints.shape == (b, 4, d) and tokens.light.shape == (b, 1, d)
        out = model.vision.perceive(tokens)
        assert out.detection.shape == (b, cfg.vision.bev_size, cfg.vision.bev_size, 8)
        assert out.waypoints.shape == (b, 4, 2) and out.light_logits.shape == (
            b,
            len(LIGHT_CLASSES),
        )
        raw = tokens.for_qformer(cfg.vision.bev_pool)
        assert raw.shape == (b, model.vision.tokens_per_frame, d)
        assert model.compressor(raw).shape == (b, q, hidden)
        history = model.encode_history(pixels[:, None].expand(b, 5, v, 3, h, w))
        assert history.shape == (b, 5, q, hidden)
        ids, mask = model.tokenize(["turn left", "After 30 meters, execute a left turn."])
        embeds = model.llm.embed_instructions(ids)
        full = model.llm(embeds, mask, history, torch.zeros(b), torch.zeros(b, 4, 2))
        assert full.waypoints.shape == (b, 4, 2) and full.completion_logit.shape == (b,)
        assert full.world.shape == (b, cfg.llm.num_world_queries, hidden)
        cond = model.conditioner(pixels, full.world)
        tokens_per_view = (cfg.clip.image_size // cfg.clip.patch_size) ** 2 + 1
        assert cond.shape == (b, v, tokens_per_view, cfg.unet.cross_attention_dim)
        latents = model.generator.encode(pixels.flatten(0, 1))
        assert latents.shape == (b * v, cfg.vae.latent_channels, *cfg.latent_size)
        assert model.generator.decode(latents).shape == (b * v, 3, h, w)
        gens = [torch.Generator().manual_seed(i) for i in range(b)]
        video = sample_frames(
            model.generator, cond, model.conditioner.null_cond, pixels, gens, cfg.sampler
        )
        assert video.shape == (b, v, cfg.frames_per_step, 3, h, w)
        assert video.min() >= -1 and video.max() <= 1


def test_planning_without_world_queries_gives_the_same_actions(model):
    """The LLM is causal and the world queries come last: plan() may drop them."""
    ids, mask = model.tokenize(["turn right", "Please halt your vehicle immediately."])
    history = torch.randn(2, 3, model.config.qformer.num_queries, model.config.llm.hidden)
    args = (
        model.llm.embed_instructions(ids),
        mask,
        history,
        torch.tensor([1.0, 4.0]),
        torch.randn(2, 4, 2),
    )
    with torch.no_grad():
        full, planned = model.llm(*args, with_world=True), model.llm(*args, with_world=False)
    torch.testing.assert_close(full.waypoints, planned.waypoints, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        full.completion_logit, planned.completion_logit, rtol=1e-4, atol=1e-5
    )
    assert planned.world is None


def test_waypoints_are_offsets_from_constant_velocity(model):
    """With the action head's output zeroed the plan is straight on at the measured speed."""
    from driving.control import WAYPOINT_DT

    ids, mask = model.tokenize(["turn right", "go straight"])
    history = torch.randn(2, 3, model.config.qformer.num_queries, model.config.llm.hidden)
    speed = torch.tensor([0.0, 5.0])
    args = (model.llm.embed_instructions(ids), mask, history, speed, torch.zeros(2, 4, 2))
    head = model.llm.action_head[-1]
    saved = head.weight.detach().clone(), head.bias.detach().clone()
    try:
        with torch.no_grad():
            assert not torch.allclose(
                model.llm(*args, with_world=False).waypoints[1, :, 1], torch.zeros(4)
            )
            head.weight.zero_()
            head.bias.zero_()
            out = model.llm(*args, with_world=False)
    finally:
        with torch.no_grad():
            head.weight.copy_(saved[0])
            head.bias.copy_(saved[1])
    t = torch.arange(1, 5) * WAYPOINT_DT
    expected = torch.stack([torch.stack([v * t, torch.zeros(4)], -1) for v in speed])
    torch.testing.assert_close(out.waypoints, expected)


def test_instruction_padding_does_not_change_the_plan(model):
    """A sample's actions do not depend on how far its instruction is padded by batch mates."""
    history = torch.randn(1, 3, model.config.qformer.num_queries, model.config.llm.hidden)
    with torch.no_grad():
        alone = model.llm(*_llm_args(model, ["turn left"], history))
        padded = model.llm(
            *_llm_args(
                model,
                ["turn left", "After 45 meters, make a right turn at the intersection."],
                history.expand(2, -1, -1, -1),
            )
        )
    torch.testing.assert_close(alone.waypoints[0], padded.waypoints[0], rtol=1e-4, atol=1e-5)


def _llm_args(model, texts, history):
    ids, mask = model.tokenize(texts)
    b = len(texts)
    return model.llm.embed_instructions(ids), mask, history, torch.zeros(b), torch.zeros(b, 4, 2)


@pytest.mark.parametrize("multiview", [True, False])
def test_multiview_fusion_switch(multiview):
    base = preset_config("tiny")
    fusion = base.fusion.model_copy(update={"multiview": multiview})
    model = build_untrained(base.model_copy(update={"fusion": fusion})).eval()
    pixels = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    world = torch.randn(1, base.llm.num_world_queries, base.llm.hidden)
    changed = pixels.clone()
    changed[:, 0] = -changed[:, 0]
    with torch.no_grad():
        a, b = model.conditioner(pixels, world), model.conditioner(changed, world)
    other_views_moved = not torch.allclose(a[:, 1:], b[:, 1:])
    assert other_views_moved == multiview
    assert not torch.allclose(a[:, 0], b[:, 0])
