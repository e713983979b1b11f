"""Synthetic streams with known change points for the drift benchmark (generated here)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numba import njit

N_FEATURES = 16
PHI = 0.5
STREAM_TYPES = ("iid", "ar1", "lognormal")


@njit(cache=True)
def _ar1(eps: npt.NDArray[np.float64], phi: float, state: npt.NDArray[np.float64]) -> None:
    # In place: eps becomes x_t = phi x_{t-1} + sqrt(1 - phi^2) eps_t (unit marginal variance).
    s = np.sqrt(1.0 - phi * phi)
    n, d = eps.shape
    for j in range(d):
        prev = state[j]
        for i in range(n):
            prev = phi * prev + s * eps[i, j]
            eps[i, j] = prev
        state[j] = prev


class NoDrift:
    """An endless no-drift stream of one type, drawn in chunks."""

    def __init__(self, kind: str, seed: int, d: int = N_FEATURES) -> None:
        self.kind = kind
        self.rng = np.random.default_rng(seed)
        self.d = d
        self.state = self.rng.standard_normal(d)  # AR(1) starts in its stationary law

    def take(self, n: int) -> npt.NDArray[np.float32]:
        x = self.rng.standard_normal((n, self.d))
        if self.kind == "ar1":
            _ar1(x, PHI, self.state)
        elif self.kind == "lognormal":
            np.exp(x, out=x)
        return x.astype(np.float32)


def mean_shift(x: npt.NDArray[np.float32], cols: list[int], sigma: float) -> None:
    x[:, cols] += sigma  # unit marginal sigma in the Gaussian streams


def variance_ratio(x: npt.NDArray[np.float32], cols: list[int], ratio: float) -> None:
    x[:, cols] *= np.float32(np.sqrt(ratio))


def errors(rng: np.random.Generator, n: int, p: float) -> npt.NDArray[np.float64]:
    return (rng.random(n) < p).astype(np.float64)
