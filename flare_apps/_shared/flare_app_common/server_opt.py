"""Server-side optimisers over the aggregated update (FedOpt family): FedAvg, FedAvgM, FedAdam.

Each round the server computes the weighted mean ``delta`` of the sites' parameter differences
(the "pseudo-gradient", pointing downhill) and moves the global parameters by it:

- ``avg`` (FedAvg): ``w += lr * delta`` — with ``lr`` = 1 exactly plain FedAvg;
- ``momentum`` (FedAvgM, Hsu et al. 2019): ``m = beta * m + delta; w += lr * m``;
- ``adam`` (FedAdam, Reddi et al. 2021): ``m = b1 m + (1-b1) delta; v = b2 v + (1-b2) delta^2;
  w += lr * m / (sqrt(v) + tau)`` (no bias correction, as in the paper).

Pure numpy; the state (momentum buffers) lives in the server process and restarts from zero when
a job is resumed from a checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

SERVER_OPTIMIZERS = ("avg", "momentum", "adam")


class ServerOptimizer:
    def __init__(
        self,
        kind: str = "avg",
        lr: float = 1.0,
        momentum: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ):
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimizer {kind!r}; one of {SERVER_OPTIMIZERS}")
        if not lr > 0:
            raise ValueError(f"server learning rate must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"server momentum must be in [0, 1), got {momentum}")
        self.kind, self.lr, self.beta, self.beta2, self.tau = (
            kind,
            float(lr),
            float(momentum),
            float(beta2),
            float(tau),
        )
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    def step(self, global_params: Mapping[str, np.ndarray], deltas: Mapping[str, np.ndarray]) -> dict:
        """New global parameters from the aggregated ``deltas`` (float64 arrays; keys without one keep their value)."""
        new = {}
        for k, g in global_params.items():
            d = deltas.get(k)
            if d is None:
                new[k] = g
                continue
            d = np.asarray(d, dtype=np.float64)
            if self.kind == "avg":
                step = self.lr * d
            elif self.kind == "momentum":
                m = self.m.get(k)
                m = d.copy() if m is None else self.beta * m + d
                self.m[k] = m
                step = self.lr * m
            else:
                m = self.m.get(k, np.zeros_like(d))
                v = self.v.get(k, np.zeros_like(d))
                m = self.beta * m + (1 - self.beta) * d
                v = self.beta2 * v + (1 - self.beta2) * d * d
                self.m[k], self.v[k] = m, v
                step = self.lr * m / (np.sqrt(v) + self.tau)
            new[k] = (np.asarray(g, dtype=np.float64) + step).astype(g.dtype)
        return new
