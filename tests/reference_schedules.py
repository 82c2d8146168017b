"""The four SDEs' schedules written out from the papers, independently of ``scoresde.sde`` (test oracles only).

Each is a plain-Python function of a float time in float64 arithmetic:

* VP (Song et al. 2021, Eq. 11 and 33): ``beta(t) = b0 + t (b1 - b0)``, ``log alpha = -t^2 (b1 - b0) / 4 - t b0 / 2``,
  ``sigma^2 = 1 - alpha^2``, ``f = -beta / 2``, ``g^2 = beta``.
* sub-VP (Eq. 29): the same ``alpha`` and drift, ``sigma = 1 - alpha^2``, ``g^2 = beta (1 - alpha^4)``.
* VE (Eq. 9 and 30): ``sigma = s_min (s_max / s_min)^t``, ``alpha = 1``, ``f = 0``,
  ``g^2 = 2 sigma^2 log(s_max / s_min)``.
* cosine VP (Nichol & Dhariwal 2021, Eq. 17): ``alpha^2 = cos^2 a(t) / cos^2 a(0)``,
  ``a(t) = (t + s) / (1 + s) pi / 2``, ``beta = pi / (1 + s) tan a(t)``, clipped at ``beta_max`` (past the time
  where the clip starts ``log alpha`` falls linearly with slope ``-beta_max / 2``, the convention documented in
  ``CosineVPSDE``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.optimize import brentq


@dataclass(frozen=True)
class Coeffs:
    """Schedule values at one time: mean coefficient, std, drift coefficient ``f`` and ``g^2``."""

    alpha: float
    sigma: float
    f: float
    g2: float


def vp(t: float, b0: float = 0.1, b1: float = 20.0) -> Coeffs:
    beta = b0 + t * (b1 - b0)
    m = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    return Coeffs(math.exp(m), math.sqrt(-math.expm1(2 * m)), -0.5 * beta, beta)


def subvp(t: float, b0: float = 0.1, b1: float = 20.0) -> Coeffs:
    beta = b0 + t * (b1 - b0)
    m = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    return Coeffs(math.exp(m), -math.expm1(2 * m), -0.5 * beta, beta * -math.expm1(4 * m))


def ve(t: float, s_min: float = 0.01, s_max: float = 50.0) -> Coeffs:
    sigma = s_min * (s_max / s_min) ** t
    return Coeffs(1.0, sigma, 0.0, 2 * sigma**2 * math.log(s_max / s_min))


def cosine(t: float, s: float = 0.008, beta_max: float = 100.0) -> Coeffs:
    def a(u: float) -> float:
        return (u + s) / (1 + s) * math.pi / 2

    t_clip = math.atan(beta_max * (1 + s) / math.pi) * 2 * (1 + s) / math.pi - s
    if t <= t_clip:
        log_alpha = math.log(math.cos(a(t)) / math.cos(a(0.0)))
        beta = math.pi / (1 + s) * math.tan(a(t))
    else:
        log_alpha = math.log(math.cos(a(t_clip)) / math.cos(a(0.0))) - 0.5 * beta_max * (t - t_clip)
        beta = beta_max
    return Coeffs(math.exp(log_alpha), math.sqrt(-math.expm1(2 * log_alpha)), -0.5 * beta, beta)


SCHEDULES = {"vp": vp, "subvp": subvp, "ve": ve, "vp_cosine": cosine}


def time_of_sigma_hat(name: str, sigma_hat: float) -> float:
    """The time at which ``sigma / alpha == sigma_hat`` (root of the monotone ``log(sigma / alpha)``, to 1e-15)."""
    fn = SCHEDULES[name]
    target = math.log(sigma_hat)
    return brentq(lambda t: math.log(fn(t).sigma / fn(t).alpha) - target, 1e-9, 1.0, xtol=1e-15, rtol=1e-15)
