"""Sampler settings: one set of keys for a checkpoint's sampler, a job's override and a training
stage's; overrides apply over a base, and a sampler left unresolved is refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.errors import ConfigError
from schemas.sampler import SamplerConfig, SamplerOverride

BASE = SamplerConfig(
    scheduler="dpmsolver++", steps=12, strength=0.3, context_detail=True, warp_start=True
)


def test_an_override_has_the_keys_of_a_sampler():
    assert list(SamplerOverride.model_fields) == list(SamplerConfig.model_fields)
    assert all(value is None for _, value in SamplerOverride())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scheduler": "euler"}, "scheduler"),
        ({"strength": 0.0}, "strength"),
        ({"guidance": 0.5}, "guidance"),
        ({"steps": "4"}, "steps"),  # no coercion
        ({"steps": 4, "strength": 0.1}, "at least one denoising step, got 0.1 x 4"),
        ({"name": "ddim"}, "name"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(values, message):
    with pytest.raises(ValidationError, match=message):
        SamplerConfig(**values)


def test_an_override_replaces_only_what_it_sets():
    assert SamplerOverride().over(BASE) == BASE
    over = SamplerOverride(scheduler="ddim", strength=0.5, warp_start=False).over(BASE)
    changed = {"scheduler": "ddim", "strength": 0.5, "warp_start": False}
    assert over == BASE.model_copy(update=changed)
    with pytest.raises(ConfigError, match="job: strength x steps .* got 0.3 x 1"):
        SamplerOverride(steps=1).over(BASE, "job")


def test_only_a_complete_override_is_a_resolved_sampler():
    assert SamplerOverride(**BASE.model_dump()).resolved() == BASE
    with pytest.raises(ConfigError, match="sampler: steps, warp_start unset"):
        SamplerOverride(**BASE.model_dump(exclude={"steps", "warp_start"})).resolved()
