"""Intervals and small-N corrections for the QA figures.

Fréchet distances: the tasks of a horizon are split into groups (every task of a group, its
generated samples and its recorded future, fall together), and the statistics are kept per group.
The bootstrap resamples groups with replacement (paired: real and generated move together),
recomputes the distance from the summed statistics and takes the 2.5 / 97.5 percentiles. The
FID-infinity estimate (Chong & Forsyth 2020) fits ``FD_N = FD_inf + k / N`` to distances over
subsets of the groups and reports the intercept.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from qa.frechet import FeatureStats, frechet_distance, merge_all, weighted_sum

Distance = Callable[[FeatureStats, FeatureStats], float]
INFINITY_DRAWS = 3  # random subsets per subset size


def bootstrap_ci(
    real: list[FeatureStats],
    generated: list[FeatureStats],
    value: float,
    replicates: int,
    rng: np.random.Generator,
    distance: Distance = frechet_distance,
) -> tuple[float, float]:
    """95 % interval around ``value`` (the distance of all groups) under a paired bootstrap over the
    groups, bias-corrected.

    A resample repeats groups, so it holds fewer distinct items and its distance is biased upwards
    (the Fréchet distance grows as N shrinks); the percentiles are therefore shifted by the
    replicates' mean minus the full-sample distance, and the lower end is clipped at 0.
    """
    g = len(real)
    values = []
    for _ in range(replicates):
        weights = np.bincount(rng.integers(0, g, g), minlength=g)
        values.append(distance(weighted_sum(real, weights), weighted_sum(generated, weights)))
    shift = float(np.mean(values)) - value
    lo, hi = np.percentile(values, [2.5, 97.5]) - shift
    return max(0.0, float(lo)), max(0.0, float(hi))


def fd_infinity(
    real: list[FeatureStats],
    generated: list[FeatureStats],
    rng: np.random.Generator,
    distance: Distance = frechet_distance,
) -> tuple[float, list[tuple[int, float]]]:
    """Intercept of the least-squares line of FD against 1/N over subsets of half to all of the
    groups; also the (N, FD) points fitted. Needs at least 3 groups (two subset sizes)."""
    g = len(real)
    if g < 3:
        raise ValueError("FD-infinity needs at least 3 groups")
    points = []
    for k in range(math.ceil(g / 2), g + 1):
        for _ in range(1 if k == g else INFINITY_DRAWS):
            pick = rng.choice(g, size=k, replace=False)
            r, q = merge_all([real[i] for i in pick]), merge_all([generated[i] for i in pick])
            points.append((q.count, distance(r, q)))
    n, fd = np.array(points, dtype=np.float64).T
    slope, intercept = np.polyfit(1.0 / n, fd, 1)
    return float(intercept), [(int(a), float(b)) for a, b in points]


def wilson(successes: int, trials: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95 % interval of a proportion."""
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def correlation_ci(
    pairs: list[np.ndarray],
    replicates: int,
    rng: np.random.Generator,
    statistic: Callable[[np.ndarray], float | None],
) -> tuple[float | None, float | None]:
    """95 % percentile interval of ``statistic`` over (x, y) rows, resampling the per-sample arrays
    of ``pairs``; replicates where the statistic is undefined (None) are left out."""
    values = []
    for _ in range(replicates):
        value = statistic(
            np.concatenate([pairs[i] for i in rng.integers(0, len(pairs), len(pairs))])
        )
        if value is not None:
            values.append(value)
    if not values:
        return None, None
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)
