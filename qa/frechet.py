"""Mergeable feature statistics and the Fréchet distance between two Gaussians, in float64.

:class:`FeatureStats` keeps the count, the sum and the sum of outer products of feature vectors, so
statistics gathered by several workers merge exactly (``a.merge(b)`` equals one pass over both
sets). The distance uses the symmetric form ``Tr sqrt(S1^1/2 S2 S1^1/2)`` with eigendecompositions
(round-off eigenvalues, negative or tiny, set to 0): real-valued, and equal to the
``scipy.linalg.sqrtm`` form of pytorch-fid to ~1e-8 relative. Eigenvalues under the numerical-rank
tolerance count as 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from schemas.errors import BadInputError

SMALL_DIM = 512


@dataclass
class FeatureStats:
    """Sufficient statistics of a set of feature vectors: count, sum (D,), sum of outer products
    (D, D)."""

    count: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        return cls(0, np.zeros(dim), np.zeros((dim, dim)))

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        stats = cls.empty(features.shape[1])
        stats.add(features)
        return stats

    @classmethod
    def from_moments(cls, count: int, mu: np.ndarray, sigma: np.ndarray) -> FeatureStats:
        """Back from a mean and an unbiased covariance (what :meth:`save` writes)."""
        mu = np.asarray(mu, np.float64)
        return cls(
            int(count),
            count * mu,
            (count - 1) * np.asarray(sigma, np.float64) + count * np.outer(mu, mu),
        )

    @property
    def dim(self) -> int:
        return self.total.shape[0]

    def add(self, features: np.ndarray) -> None:
        """Accumulate ``features`` (N, D) in place."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(
                f"features of shape {x.shape} do not fit statistics of dimension {self.dim}"
            )
        self.count += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def merge(self, other: FeatureStats) -> FeatureStats:
        """The statistics of both sets together."""
        return FeatureStats(
            self.count + other.count, self.total + other.total, self.outer + other.outer
        )

    def mean(self) -> np.ndarray:
        return self.total / self.count

    def cov(self) -> np.ndarray:
        """Unbiased covariance (divides by N - 1, as ``np.cov`` and pytorch-fid)."""
        if self.count < 2:
            raise BadInputError(f"a covariance needs at least 2 feature vectors, got {self.count}")
        mu = self.mean()
        return (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)

    def save(self, file: Path | BinaryIO) -> None:
        """``mu`` and ``sigma`` as pytorch-fid writes them (``python -m pytorch_fid a.npz b.npz``
        reads the file), plus ``count`` so that :meth:`load` gives mergeable statistics back."""
        np.savez(file, mu=self.mean(), sigma=self.cov(), count=np.int64(self.count))

    @classmethod
    def load(cls, path: Path) -> FeatureStats:
        with np.load(path) as f:
            return cls.from_moments(int(f["count"]), f["mu"], f["sigma"])


def merge_all(stats: list[FeatureStats]) -> FeatureStats:
    out = FeatureStats.empty(stats[0].dim)
    for s in stats:
        out = out.merge(s)
    return out


def weighted_sum(stats: list[FeatureStats], weights: np.ndarray) -> FeatureStats:
    """Statistics of a resample that takes group ``i`` ``weights[i]`` times."""
    w = np.asarray(weights, dtype=np.float64)
    return FeatureStats(
        int(round(float(np.dot(w, [s.count for s in stats])))),
        np.tensordot(w, np.stack([s.total for s in stats]), axes=1),
        np.tensordot(w, np.stack([s.outer for s in stats]), axes=1),
    )


@contextmanager
def _cpu_threads_for(dim: int, device: torch.device) -> Iterator[None]:
    """One CPU thread for small matrices: there thread start-up costs more than it saves, and a
    busy machine makes the threads wait for each other (10x slower and worse)."""
    if device.type != "cpu" or dim > SMALL_DIM:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rank_clipped(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Eigenvalues below the numerical-rank tolerance (``max * D * eps``, as
    ``np.linalg.matrix_rank``) set to 0: with fewer items than dimensions most are round-off, and
    their square roots would add up."""
    tol = eigenvalues.abs().max() * eigenvalues.numel() * torch.finfo(eigenvalues.dtype).eps
    return torch.where(eigenvalues > tol, eigenvalues, torch.zeros_like(eigenvalues))


def frechet_from_moments(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    device: str | torch.device = "cpu",
) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` in float64."""
    device = torch.device(device)
    with _cpu_threads_for(len(mu1), device):
        s1 = torch.as_tensor(np.asarray(sigma1, np.float64), device=device)
        s2 = torch.as_tensor(np.asarray(sigma2, np.float64), device=device)
        w, v = torch.linalg.eigh(s1)
        root = (v * _rank_clipped(w).sqrt()) @ v.T
        middle = root @ s2 @ root
        ev = _rank_clipped(torch.linalg.eigvalsh((middle + middle.T) / 2))
        trace = (torch.trace(s1) + torch.trace(s2) - 2 * ev.sqrt().sum()).item()
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(diff @ diff + trace)


def frechet_distance(a: FeatureStats, b: FeatureStats, device: str | torch.device = "cpu") -> float:
    """Fréchet distance between the Gaussians fitted to two sets of statistics."""
    if a.dim != b.dim:
        raise ValueError(f"statistics of dimension {a.dim} and {b.dim} cannot be compared")
    return frechet_from_moments(a.mean(), a.cov(), b.mean(), b.cov(), device)
