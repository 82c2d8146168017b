"""The preconditioning layer: from a network's output to the denoiser, the noise and the score (DESIGN: ``ScoreModel``).

Every SDE here has ``x_t = alpha(t) x_0 + sigma(t) eps``. Write ``y = x / alpha`` and ``s = sigma / alpha`` (the noise
level of Karras et al. 2022 in the scaled frame, ``exp(-lambda)``). A network ``F = net(c_in x, label)`` is turned
into the three views of the same prediction,

    x0_hat = A x + B F,    eps_hat = C x + D F,    score = E x + G F,

whose coefficients depend only on ``alpha``, ``sigma`` (and ``sigma_data``) and are written out for each
parameterization, so no view is computed from another (no ``score -> eps -> score`` round trip, no cancellation
at small ``sigma``):

* ``score`` — ``F`` is the score; with ``scale_by_sigma`` it is ``sigma * score`` (= ``-eps``; the reference
  NCSN++'s division by sigma, Song et al. 2021, App. H);
* ``eps``   — ``F`` predicts the noise (DDPM, the reference VP / sub-VP models);
* ``x0``    — ``F`` predicts the data;
* ``v``     — ``F`` predicts ``v = a eps - b x_0`` with ``a = alpha / r``, ``b = sigma / r``, ``r = sqrt(alpha^2 +
  sigma^2)`` (Salimans & Ho 2022, Sec. 4; ``r = 1`` for VP) from the input ``x / r``;
* ``edm``   — Karras et al. (2022), Eq. 7 and Table 1: ``x0_hat = c_skip y + c_out F(c_in y, c_noise)`` with
  ``c_skip = sd^2 / (s^2 + sd^2)``, ``c_out = s sd / sqrt(s^2 + sd^2)``, ``c_in = 1 / sqrt(s^2 + sd^2)``,
  ``sd = sigma_data``. (``v`` is ``edm`` with ``sigma_data = 1`` and ``F -> -F``.)

The network's noise label (``time_input``, times ``time_scale``): ``"t"`` (the reference VP models use ``999 t``),
``"sigma"`` (``sigma(t)``, the reference VE models), ``"log_sigma"``, or ``"edm"`` (``c_noise = log(s) / 4``).
``centered=False`` says the data lie in ``[0, 1]``: the network then sees ``2 x - 1`` (the reference's NCSN++).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from scoresde.sde import LinearSDE
from scoresde.utils import as_time, batch_broadcast

PARAMETERIZATIONS = ("score", "eps", "x0", "v", "edm")
TIME_INPUTS = ("t", "sigma", "log_sigma", "edm")


@dataclass
class Precond:
    """Per-sample coefficients ``(B,)`` of one parameterization at given ``alpha``, ``sigma``: the network input is
    ``c_in * x``; the views are ``x0 = a x + b F``, ``eps = c x + d F``, ``score = e x + f F``. ``None`` stands for
    a coefficient that is identically 1 (``c_in``) or 0 (the others), so it costs nothing and rounds nothing."""

    c_in: torch.Tensor | None
    a: torch.Tensor | None
    b: torch.Tensor
    c: torch.Tensor | None
    d: torch.Tensor
    e: torch.Tensor | None
    f: torch.Tensor
    f_divides: bool = False  # score = F / f (the reference's own operation, so its scores are reproduced bitwise)


def precond_coefficients(
    parameterization: str,
    alpha: torch.Tensor,
    sigma: torch.Tensor,
    sigma_data: float = 1.0,
    scale_by_sigma: bool = False,
) -> Precond:
    """The coefficients of :class:`Precond` for ``parameterization`` (module docstring), each in closed form."""
    one = torch.ones_like(sigma)
    if parameterization == "eps":  # x0 = (x - sigma F) / alpha, score = -F / sigma
        return Precond(None, 1 / alpha, -sigma / alpha, None, one, None, -sigma, f_divides=True)
    if parameterization == "score":  # score = k F, eps = -sigma k F, x0 = (x + sigma^2 k F) / alpha
        if scale_by_sigma:
            return Precond(None, 1 / alpha, sigma / alpha, None, -one, None, sigma, f_divides=True)
        return Precond(None, 1 / alpha, sigma**2 / alpha, None, -sigma, None, one)
    if parameterization == "x0":  # eps = (x - alpha F) / sigma, score = (alpha F - x) / sigma^2
        return Precond(None, None, one, 1 / sigma, -alpha / sigma, -1 / sigma**2, alpha / sigma**2)
    if parameterization in ("edm", "v"):
        sd = 1.0 if parameterization == "v" else float(sigma_data)
        sign = -1.0 if parameterization == "v" else 1.0
        s = sigma / alpha
        r2 = s**2 + sd**2  # x0 = c_skip y + c_out F with y = x / alpha
        root = torch.sqrt(r2)
        eps_out = -sign * sd / root  # eps = (y - x0) / s = s y / r2 - sd F / root: no cancellation
        return Precond(
            1 / (alpha * root),
            sd**2 / (r2 * alpha),
            sign * s * sd / root,
            s / (r2 * alpha),
            eps_out,
            -1 / (r2 * alpha**2),  # score = -eps / sigma
            -eps_out / sigma,
        )
    raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")


class ScoreModel(nn.Module):
    """``score_fn(x, t)`` of a network for a given SDE and parameterization, with the other two views.

    Calling the module returns the score; :meth:`x0_hat` (the denoiser ``D``) and :meth:`eps_hat` give the data and
    noise predictions of the same network call. ``sigma_data`` (the data's standard deviation) is needed by the
    ``edm`` parameterization only.
    """

    def __init__(
        self,
        net: nn.Module,
        sde: LinearSDE,
        parameterization: str = "eps",
        time_input: str = "t",
        time_scale: float = 1.0,
        *,
        sigma_data: float | None = None,
        centered: bool = True,
        scale_by_sigma: bool = False,
    ):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; choose one of {PARAMETERIZATIONS}")
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; choose one of {TIME_INPUTS}")
        if parameterization == "edm" and sigma_data is None:
            raise ValueError("parameterization 'edm' needs sigma_data (the data's standard deviation)")
        if sigma_data is not None and not (math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive number, got {sigma_data}")
        if scale_by_sigma and parameterization != "score":
            raise ValueError(f"scale_by_sigma applies to parameterization 'score' only, not {parameterization!r}")
        self.net = net
        self.sde = sde
        self.parameterization = parameterization
        self.time_input = time_input
        self.time_scale = float(time_scale)
        self.sigma_data = None if sigma_data is None else float(sigma_data)
        self.centered = bool(centered)
        self.scale_by_sigma = bool(scale_by_sigma)

    def options(self) -> dict:
        """The constructor options besides ``net`` and ``sde`` (to wrap another view of the same network)."""
        return dict(
            parameterization=self.parameterization,
            time_input=self.time_input,
            time_scale=self.time_scale,
            sigma_data=self.sigma_data,
            centered=self.centered,
            scale_by_sigma=self.scale_by_sigma,
        )

    def with_net(self, net: nn.Module) -> ScoreModel:
        """The same preconditioning around another module (e.g. the DDP- or ``torch.compile``-wrapped network)."""
        return ScoreModel(net, self.sde, **self.options())

    def noise_label(self, t: torch.Tensor) -> torch.Tensor:
        """The label ``(B,)`` the network is conditioned on: ``time_scale`` times ``t``, ``sigma``, ``log sigma`` or
        ``c_noise = log(sigma / alpha) / 4``."""
        if self.time_input == "t":
            label = t
        elif self.time_input == "sigma":
            label = self.sde.marginal_std(t)
        elif self.time_input == "log_sigma":
            label = torch.log(self.sde.marginal_std(t))
        else:
            label = -0.25 * self.sde.marginal_lambda(t)
        return label if self.time_scale == 1.0 else label * self.time_scale

    def precond(self, t: torch.Tensor) -> Precond:
        """The coefficients ``(B,)`` at times ``t``."""
        alpha, sigma = self.sde.marginal_alpha(t), self.sde.marginal_std(t)
        sd = 1.0 if self.sigma_data is None else self.sigma_data
        return precond_coefficients(self.parameterization, alpha, sigma, sd, self.scale_by_sigma)

    def _input(self, x: torch.Tensor, c_in: torch.Tensor | None) -> torch.Tensor:
        if c_in is not None:
            x = batch_broadcast(c_in, x) * x
        return x if self.centered else 2 * x - 1.0

    def _evaluate(self, x: torch.Tensor, t, **kwargs) -> tuple[torch.Tensor, Precond]:
        """One network call: its output (in ``x``'s dtype at least) and the coefficients."""
        t = as_time(t, x)
        p = self.precond(t)
        out = self.net(self._input(x, p.c_in), self.noise_label(t), **kwargs)
        return out.to(torch.promote_types(out.dtype, x.dtype)), p

    @staticmethod
    def _combine(
        x: torch.Tensor, out: torch.Tensor, u: torch.Tensor | None, w: torch.Tensor, divide: bool = False
    ) -> torch.Tensor:
        """``u x + w F`` (``u = None``: ``w F`` alone; ``divide``: ``F / w``, an eps-net's score ``-F / sigma``)."""
        w = batch_broadcast(w.to(out.dtype), out)
        w_out = out / w if divide else w * out
        return w_out if u is None else batch_broadcast(u.to(out.dtype), x) * x + w_out

    def raw(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The network's output at ``(x, t)``."""
        return self._evaluate(x, t, **kwargs)[0]

    def forward(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The score ``grad_x log p_t(x)``."""
        out, p = self._evaluate(x, t, **kwargs)
        return self._combine(x, out, p.e, p.f, p.f_divides)

    def x0_hat(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The denoiser ``D(x, t) = E[x_0 | x_t = x]`` (data prediction)."""
        out, p = self._evaluate(x, t, **kwargs)
        return self._combine(x, out, p.a, p.b)

    def eps_hat(self, x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        """The noise prediction ``E[eps | x_t = x] = -sigma * score``."""
        out, p = self._evaluate(x, t, **kwargs)
        return self._combine(x, out, p.c, p.d)

    # Names used before the preconditioning layer existed.
    predict_eps = eps_hat
    predict_x0 = x0_hat


def estimate_sigma_data(x: torch.Tensor) -> float:
    """The data's standard deviation ``sigma_data`` (Karras et al. 2022, App. B.6) from examples ``(B, ...)``: the
    square root of the per-coordinate variances averaged over coordinates (the paper sets 0.5 for images in
    [-1, 1]; 2-D points of std 2 give 2). Non-finite entries are left out."""
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"need a batch of at least 2 examples (B, ...) to estimate sigma_data, got {tuple(x.shape)}")
    xf = x.reshape(x.shape[0], -1).double()
    xf = torch.where(torch.isfinite(xf), xf, torch.nan)  # non-finite entries are left out (the loss reports them)
    value = float(torch.sqrt(((xf - xf.nanmean(0)) ** 2).nanmean(0).mean()))
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"cannot estimate sigma_data from data with standard deviation {value}")
    return value
