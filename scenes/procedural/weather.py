"""Weather and time-of-day presets of the procedural world."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.errors import ConfigError
from schemas.scene import WEATHERS as WEATHER_NAMES


@dataclass(frozen=True)
class Weather:
    name: str
    weather_id: int  # numeric id written to LMDrive-format measurements
    sky_top: tuple[int, int, int]
    sky_horizon: tuple[int, int, int]
    ambient: float
    sun: float
    sun_azimuth_deg: float
    sun_elevation_deg: float
    tint: tuple[float, float, float]
    fog_color: tuple[int, int, int]
    fog_density: float  # per metre
    rain: bool = False
    wet: bool = False
    night: bool = False

    @property
    def sun_dir(self) -> np.ndarray:
        az, el = np.radians(self.sun_azimuth_deg), np.radians(self.sun_elevation_deg)
        return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])


WEATHERS: dict[str, Weather] = {
    w.name: w
    for w in [
        Weather(
            "clear_noon",
            1,
            (62, 122, 196),
            (178, 206, 232),
            0.55,
            0.55,
            130.0,
            60.0,
            (1.0, 1.0, 1.0),
            (178, 206, 232),
            0.0035,
        ),
        Weather(
            "cloudy",
            2,
            (138, 145, 156),
            (196, 199, 204),
            0.82,
            0.12,
            130.0,
            55.0,
            (0.96, 0.97, 1.0),
            (190, 194, 200),
            0.006,
        ),
        Weather(
            "rain",
            3,
            (88, 94, 104),
            (138, 143, 150),
            0.62,
            0.04,
            130.0,
            50.0,
            (0.84, 0.88, 0.95),
            (128, 134, 142),
            0.013,
            rain=True,
            wet=True,
        ),
        Weather(
            "fog",
            4,
            (176, 180, 184),
            (196, 198, 200),
            0.8,
            0.05,
            130.0,
            50.0,
            (0.95, 0.96, 0.97),
            (192, 194, 196),
            0.045,
        ),
        Weather(
            "sunset",
            5,
            (58, 66, 122),
            (250, 152, 84),
            0.42,
            0.6,
            200.0,
            7.0,
            (1.12, 0.86, 0.68),
            (226, 150, 110),
            0.006,
        ),
        Weather(
            "night",
            6,
            (4, 7, 18),
            (22, 28, 46),
            0.2,
            0.0,
            0.0,
            -30.0,
            (0.78, 0.84, 1.0),
            (14, 17, 28),
            0.009,
            night=True,
        ),
    ]
}


assert tuple(WEATHERS) == WEATHER_NAMES, "the presets are the scene contract's weathers"


def get_weather(name: str) -> Weather:
    """The preset called ``name``; a :class:`ConfigError` lists the valid names otherwise."""
    try:
        return WEATHERS[name]
    except KeyError:
        raise ConfigError(f"unknown weather {name!r}; valid: {', '.join(WEATHERS)}") from None
