"""Time grids as data: decreasing times ``T = t_0 > t_1 > ... > t_n = eps`` for fixed-step samplers.

Every grid is defined through the SDE's own members (``marginal_lambda`` and ``inverse_lambda``), so it works
for VP, sub-VP and VE alike:

* ``uniform``   — uniform in ``t`` (Song et al. 2021);
* ``quadratic`` — ``t = eps + (T - eps) u^2`` for uniform ``u`` (denser near the data, Song et al. 2021 DDIM);
* ``edm``       — Karras et al. (2022), Eq. 5: ``sigma_hat_i^(1/rho)`` uniform, ``sigma_hat = sigma / alpha``,
  ``rho = 7``;
* ``logsnr``    — uniform in ``lambda = log(alpha / sigma)`` (Lu et al. 2022, DPM-Solver).
"""

from __future__ import annotations

import torch

from scoresde.sde import LinearSDE

GRIDS = ("uniform", "quadratic", "edm", "logsnr")


def time_grid(
    sde: LinearSDE,
    steps: int,
    eps: float = 1e-3,
    kind: str = "uniform",
    rho: float = 7.0,
    T: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``steps + 1`` decreasing times from ``T`` to ``eps`` (both included)."""
    if kind not in GRIDS:
        raise ValueError(f"unknown time grid {kind!r}; choose one of {GRIDS}")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    T = sde.T if T is None else float(T)
    if not 0 < eps < T:
        raise ValueError(f"need 0 < eps < T, got eps={eps}, T={T}")
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)  # 0 at T, 1 at eps
    ends = torch.tensor([T, eps], dtype=torch.float64)
    if kind == "uniform":
        t = T + (eps - T) * u
    elif kind == "quadratic":
        t = eps + (T - eps) * (1 - u) ** 2
    else:
        lam_T, lam_eps = sde.marginal_lambda(ends)
        if kind == "logsnr":
            lam = lam_T + (lam_eps - lam_T) * u
        else:  # edm: sigma_hat = exp(-lambda)
            s_max, s_min = torch.exp(-lam_T) ** (1 / rho), torch.exp(-lam_eps) ** (1 / rho)
            lam = -rho * torch.log(s_max + (s_min - s_max) * u)
        t = sde.inverse_lambda(lam)
        t[0], t[-1] = T, eps  # exact end points
    return t.to(device=device, dtype=dtype)
