"""Building windows: drawn on the side faces the camera sees, within the detail distance, beyond
the near plane, lit and dark at night."""

import numpy as np
import pytest

from scenes.procedural.town import make_town
from scenes.procedural.weather import get_weather
from scenes.procedural.windows import LIT, NEAR, Windows

F, CX, CY = 100.0, 128.0, 128.0


def _pixels(cam: np.ndarray) -> np.ndarray:
    uv = np.stack([CX + F * cam[..., 0] / cam[..., 2], CY + F * cam[..., 1] / cam[..., 2]], -1)
    return np.round(uv * 16).astype(np.int32)


def _camera(x: float, y: float, heading: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera 1.5 m up at (x, y) looking along ``heading`` (radians, CCW from +x): position and
    rows right, down, forward."""
    fwd = np.array([np.cos(heading), np.sin(heading), 0.0])
    right = np.array([np.sin(heading), -np.cos(heading), 0.0])
    return np.array([x, y, 1.5]), np.stack([right, [0.0, 0.0, -1.0], fwd])


@pytest.fixture(scope="module")
def town():
    return make_town(3)


def _building(town, windows: Windows) -> int:
    """A building with lit and dark windows on its +x face (face 0)."""
    for b in range(len(town.buildings)):
        lit = windows.lit[windows.start[b][0] : windows.stop[b][0]]
        if lit.any() and not lit.all():
            return b
    raise AssertionError("no building with lit and dark windows on its +x face")


def _calls(windows, b, pos, rot, visible=(True, False, False, False, True), nearest=8.0):
    """Calls for a scene of two culled boxes, a non-building and building ``b``, both drawn."""
    return windows.calls(
        np.array([0, 1]),
        np.array([-1, b]),
        np.array([5.0, nearest]),
        np.array([[True] * 5, list(visible)]),
        pos,
        rot,
        _pixels,
        60.0,
    )


def test_night_windows_are_lit_or_dark_as_the_town_says(town):
    windows = Windows(town, get_weather("night"))
    b = _building(town, windows)
    building = town.buildings[b]
    pos, rot = _camera(building.cx + building.hx + 8.0, building.cy, np.pi)  # facing its +x face
    calls = _calls(windows, b, pos, rot)
    assert list(calls) == [(1, 0)]  # keyed by the position among the drawn boxes, and face
    (lit_quads, lit_col), (dark_quads, dark_col) = calls[(1, 0)]
    lit = windows.lit[windows.start[b][0] : windows.stop[b][0]]
    assert (len(lit_quads), len(dark_quads)) == (lit.sum(), (~lit).sum())
    weather = get_weather("night")
    fog = 1 - np.exp(-weather.fog_density * 8.0)
    expected = LIT * (1 - fog) + fog * np.asarray(weather.fog_color, np.float32)
    np.testing.assert_allclose(lit_col, expected, rtol=1e-6)
    assert sum(dark_col) < sum(lit_col) / 3  # unlit glass is dark at night


def test_day_windows_are_one_colour_on_the_faces_seen_within_the_detail_distance(town):
    windows = Windows(town, get_weather("clear_noon"))
    b = _building(town, windows)
    building = town.buildings[b]
    pos, rot = _camera(building.cx + building.hx + 8.0, building.cy, np.pi)
    (quads, _colour), *more = _calls(windows, b, pos, rot)[(1, 0)]
    assert not more and len(quads) == windows.stop[b][0] - windows.start[b][0]
    assert _calls(windows, b, pos, rot, visible=(False,) * 4 + (True,)) == {}  # face not seen
    assert _calls(windows, b, pos, rot, nearest=61.0) == {}  # beyond the detail distance


def test_windows_reaching_behind_the_near_plane_are_left_out(town):
    """A camera beside the +x face looking along it (north): only the windows wholly ahead of
    the near plane are drawn."""
    windows = Windows(town, get_weather("clear_noon"))
    b = _building(town, windows)
    building = town.buildings[b]
    pos, rot = _camera(building.cx + building.hx + 2.0, building.cy, np.pi / 2)
    quads = windows.quads[windows.start[b][0] : windows.stop[b][0]]
    ahead = (quads[..., 1] - pos[1] > NEAR).all(axis=1)
    assert 0 < ahead.sum() < len(quads)
    drawn = _calls(windows, b, pos, rot)[(1, 0)][0][0]
    assert len(drawn) == ahead.sum()
