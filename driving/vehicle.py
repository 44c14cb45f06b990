"""The size of a car: the ego and every other vehicle of the procedural world."""

from __future__ import annotations

VEHICLE_SIZE = (4.5, 1.9, 1.5)  # length, width, height, metres
HALF_LENGTH = VEHICLE_SIZE[0] / 2  # centre to front bumper: the front is at arc length s + this
