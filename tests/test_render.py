"""What the cameras show: road below, sky above, weathers visibly different."""

import numpy as np
import pytest

from scenes.procedural.weather import WEATHERS


def _mid_block_frame(scene) -> int:
    for i in range(len(scene)):
        if not scene.measurements(i).is_junction and scene.measurements(i).speed > 2:
            return i
    raise AssertionError("no mid-block frame")


def test_front_view_shows_road_below_and_sky_above(noon_scene):
    img = noon_scene.images(_mid_block_frame(noon_scene))["front"].astype(int)
    h, w, _ = img.shape
    road = img[int(h * 0.85) :, int(w * 0.45) : int(w * 0.75)].reshape(-1, 3).mean(0)
    assert np.ptp(road) < 25 and 35 < road.mean() < 120  # grey asphalt
    sky = img[:3, w // 2 - 4 : w // 2 + 4].reshape(-1, 3).mean(0)
    assert sky[2] > sky[0] + 30  # blue sky at clear noon


def test_lane_markings_visible_left_of_the_ego_lane(noon_scene):
    """Right-hand traffic: the yellow centre line is in the left half of the front view."""
    img = noon_scene.images(_mid_block_frame(noon_scene))["front"].astype(int)
    h, w, _ = img.shape
    band = img[int(h * 0.7) :]
    yellow = (band[..., 0] > 150) & (band[..., 1] > 110) & (band[..., 2] < 90)
    cols = np.flatnonzero(yellow.any(axis=0))
    assert len(cols) > 3 and np.median(cols) < w / 2


def test_side_views_look_sideways(noon_scene):
    imgs = noon_scene.images(_mid_block_frame(noon_scene))
    assert not np.array_equal(imgs["left"], imgs["front"])
    assert not np.array_equal(imgs["right"], imgs["front"])


@pytest.fixture(scope="module")
def weather_frames(scene_factory):
    return {
        w: scene_factory(town_seed=4, route_seed=6, weather=w, frames=25)
        .images(20)["front"]
        .astype(float)
        for w in WEATHERS
    }


def test_weathers_are_visibly_different(weather_frames):
    names = list(weather_frames)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = np.abs(weather_frames[a] - weather_frames[b]).mean()
            assert diff > 6, f"{a} and {b} look the same (mean abs diff {diff:.1f})"


def test_weather_character(weather_frames):
    noon, night, fog = weather_frames["clear_noon"], weather_frames["night"], weather_frames["fog"]
    assert night.mean() < 0.45 * noon.mean()
    top = slice(0, noon.shape[0] // 2)
    assert fog[top].std() < 0.7 * noon[top].std()  # fog washes out the distance
    sunset_sky = (
        weather_frames["sunset"][noon.shape[0] // 2 - 8 : noon.shape[0] // 2 - 2]
        .reshape(-1, 3)
        .mean(0)
    )
    assert sunset_sky[0] > sunset_sky[2] + 20  # orange horizon
    rain, cloudy = weather_frames["rain"], weather_frames["cloudy"]
    assert rain.mean() < cloudy.mean()


LAMP_PIXELS = {  # what each lit lamp looks like at clear noon: (channel, low, high) bounds
    "red": ((0, 200, 256), (1, 0, 100), (2, 0, 100)),
    "yellow": ((0, 200, 256), (1, 150, 240), (2, 0, 100)),
    "green": ((0, 0, 130), (1, 200, 256), (2, 90, 180)),
}


def _lit(img: np.ndarray, state: str) -> int:
    """Pixels of ``img`` coloured as the lit ``state`` lamp."""
    mask = np.ones(img.shape[:2], bool)
    for channel, low, high in LAMP_PIXELS[state]:
        mask &= (img[..., channel] >= low) & (img[..., channel] < high)
    return int(mask.sum())


def test_each_lit_lamp_of_the_governing_light_shows_at_the_stop_line_and_none_from_behind(
    scene_factory,
):
    """Every lamp shows on the head the ego faces (red and yellow were once painted over by their
    own housing), and no lamp shows through the back of a head."""
    from dataclasses import replace

    from scenes.procedural.town import DIRECTIONS

    scene = scene_factory(town_seed=4, route_seed=3, frames=90, center_view=True)
    i = next(i for i in range(len(scene)) if scene.measurements(i).light_distance < 3.0)
    frame = replace(scene.log.frames[i], vehicles=np.zeros((0, 5)), pedestrians=np.zeros((0, 5)))
    m = scene.log.route.next_maneuver(frame.ego_s + 2.5)
    heads = scene.town.light_heads()
    ours = next(j for j, (node, k, _) in enumerate(heads) if node == m.node and k == m.k_in)
    scene.images(i)  # builds the renderer
    renderer = scene._renderer

    def lit(frame, state: str) -> int:
        """Pixels coloured as the lit lamp, beyond those with every lamp off."""
        lights = ["none"] * len(heads)
        lights[ours] = state
        on, off = (
            renderer.render(replace(frame, lights=s), [], [])["center"]
            for s in (lights, ["none"] * len(heads))
        )
        return _lit(on, state) - _lit(off, state)

    for state in LAMP_PIXELS:
        assert lit(frame, state) >= 4, f"the {state} lamp does not show at the stop line"
    # 15 m before the head looking at it, and 15 m past it looking back: its back faces the camera
    # (the lit lamp, 0.6 m behind the housing's back, may peek below its bottom edge: a sliver)
    d, head = DIRECTIONS[m.k_in], heads[ours][2]

    def at(offset: float, yaw: float):
        x, y = head + offset * d
        return replace(frame, ego=np.array([x, y, yaw, 0.0]))

    front, back = at(-15.0, np.arctan2(d[1], d[0])), at(15.0, np.arctan2(-d[1], -d[0]))
    for state in LAMP_PIXELS:
        seen = lit(front, state)
        assert seen >= 4, f"the {state} lamp does not show from 15 m"
        assert lit(back, state) <= seen // 4, f"the {state} lamp shows through the head's back"
