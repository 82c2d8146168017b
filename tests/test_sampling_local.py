"""Local errors of the fixed-step samplers: one step from the exact probability-flow ODE solution, with exact history.

A method of order p makes a local error ``C h^(p+1)`` when it starts from the exact state and is given the model's
outputs at the exact earlier states. Measuring that error against ``h`` on a log-log ladder pins every stage and
every history weight: a wrong coefficient leaves a lower power of ``h`` in the error (e.g. DPM-Solver++(3) with its
``D_2`` weight 2 -> 1.8 leaves ``h^3``, F-PNDM's 4th Runge–Kutta stage built from the 2nd leaves ``h^3``).

Setup: a 2-D three-component mixture with full covariances and its exact score; 16 trajectories of the PF-ODE from
prior draws, computed by SciPy's DOP853 at rtol = atol = 1e-13 (float64) at the grid times. The step under test
goes from ``lambda_c = 0.5`` (``sigma / alpha = 0.61``, where the mixture's modes shape the flow) to
``lambda_c + h``; the history sits at ``lambda_c - 1.3 h``, ``- 2.1 h``, ``- 3.0 h`` (unequal gaps, so the
variable-step weights are exercised). The empirical order is the least-squares slope of log RMS error against
``log h`` for ``h`` = 0.2, 0.1, 0.05, 0.025; it must lie within 0.2 of ``p + 1``. Measured on VP and VE: every
case within 0.12 of ``p + 1`` but 4-step PLMS on VE (4.82: its history spans 3 h); the 5th-order errors at the
smallest ``h`` are 1e-11, far above the reference's 1e-13.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import torch

from scoresde.data import random_mixture
from scoresde.sampling import ModelViews
from scoresde.sampling.base import GridCoords
from scoresde.sampling.ddim import ddim_coefficients
from scoresde.sampling.dpm_solver import dpm_solver_steps
from scoresde.sampling.heun import sample_heun
from scoresde.sampling.pndm import pndm_steps, pseudo_runge_kutta
from scoresde.sampling.unipc import unipc_steps
from scoresde.sde import VESDE, VPSDE

F64 = torch.float64
LAMBDA_C = 0.5
OFFSETS = [-3.0, -2.1, -1.3, 0.0, 1.0, 2.1]  # grid points in units of h; the step under test is 0 -> 1
STEP = 3  # index of lambda_c in the grid
LADDER = [0.2, 0.1, 0.05, 0.025]


class Flow:
    """Exact PF-ODE trajectories of a 2-D mixture under one SDE, evaluated on grids in lambda."""

    def __init__(self, sde):
        self.sde = sde
        self.mix = random_mixture(2, n_components=3, seed=0)
        self.model = ModelViews(self.mix.score_fn(sde), sde)
        self.x_T = sde.prior_sampling((16, 2), torch.Generator().manual_seed(0), dtype=F64)
        self._states: dict[float, list[torch.Tensor]] = {}

    def grid(self, h: float) -> torch.Tensor:
        lam = torch.tensor([LAMBDA_C + o * h for o in OFFSETS], dtype=F64)
        return self.sde.inverse_lambda(lam)

    def states(self, h: float) -> list[torch.Tensor]:
        """The exact states at every time of ``grid(h)`` (DOP853 from T, rtol = atol = 1e-13), computed once."""
        if h not in self._states:
            self._states[h] = self._solve(self.grid(h))
        return self._states[h]

    def _solve(self, grid: torch.Tensor) -> list[torch.Tensor]:
        drift = self.sde.reverse(self.mix.score_fn(self.sde), probability_flow=True)

        def f(t, y):
            x = torch.from_numpy(y).reshape(self.x_T.shape)
            return drift.sde(x, torch.full((x.shape[0],), t, dtype=F64))[0].reshape(-1).numpy()

        sol = scipy.integrate.solve_ivp(f, (self.sde.T, float(grid[-1])), self.x_T.reshape(-1).numpy(),
                                        method="DOP853", rtol=1e-13, atol=1e-13, t_eval=grid.numpy())  # fmt: skip
        return [torch.from_numpy(sol.y[:, k]).reshape(self.x_T.shape) for k in range(len(grid))]

    def output(self, prediction: str, x: torch.Tensor, t: float) -> torch.Tensor:
        return (self.model.x0 if prediction == "data" else self.model.eps)(x, t)


@pytest.fixture(scope="module", params=["vp", "ve"])
def flow(request):
    return Flow(VPSDE() if request.param == "vp" else VESDE(sigma_max=10.0))


def linear_step(flow: Flow, steps, grid, xs) -> torch.Tensor:
    """Step ``STEP`` of a table of linear multistep coefficients from the exact state with exact history."""
    coef, weights = steps.state_coef[STEP], steps.weights[STEP]
    out = coef * xs[STEP]
    for j, w in enumerate(weights):
        out = out + w * flow.output(steps.prediction, xs[STEP - j], float(grid[STEP - j]))
    return out


def corrected_step(flow: Flow, steps, grid, xs) -> torch.Tensor:
    """Step ``STEP`` followed by its UniC correction (the output at the predicted point, exact history)."""
    predicted = linear_step(flow, steps, grid, xs)
    outputs = [flow.output(steps.prediction, predicted, float(grid[STEP + 1]))]
    outputs += [flow.output(steps.prediction, xs[STEP - j], float(grid[STEP - j])) for j in range(3)]
    out = steps.state_coef[STEP] * xs[STEP]
    for w, m in zip(steps.corrector[STEP], outputs, strict=False):
        out = out + w * m
    return out


def local_slope(flow: Flow, one_step, ladder=LADDER) -> tuple[float, list[float]]:
    errors = []
    for h in ladder:
        grid, xs = flow.grid(h), flow.states(h)
        errors.append(float((one_step(grid, xs) - xs[STEP + 1]).pow(2).mean().sqrt()))
    return float(np.polyfit(np.log(ladder), np.log(errors), 1)[0]), errors


def _dpm(order, algorithm):
    def one_step(flow, grid, xs):
        steps = dpm_solver_steps(GridCoords.of(flow.sde, grid), order, algorithm, lower_order_final=False)
        return linear_step(flow, steps, grid, xs)

    return one_step


def _unipc(order, variant, prediction, corrected):
    def one_step(flow, grid, xs):
        steps = unipc_steps(GridCoords.of(flow.sde, grid), order, variant, prediction, True, lower_order_final=False)
        return (corrected_step if corrected else linear_step)(flow, steps, grid, xs)

    return one_step


def _plms(variant):
    def one_step(flow, grid, xs):
        return linear_step(flow, pndm_steps(GridCoords.of(flow.sde, grid), variant), grid, xs)

    return one_step


def _pseudo_rk(variant):
    def one_step(flow, grid, xs):
        coords = GridCoords.of(flow.sde, grid)
        eps = flow.output("noise", xs[STEP], float(grid[STEP]))
        t_next = torch.full((xs[0].shape[0],), float(grid[STEP + 1]), dtype=F64)
        # the loop's form of a model output: (factor, tensor) (here a rescaled one, as a score model's)
        eps_terms = (-2.0, -0.5 * eps)
        return pseudo_runge_kutta(flow.sde, flow.model, xs[STEP], eps_terms, coords, STEP, variant, t_next)

    return one_step


def _ddim(flow, grid, xs):
    a, b, _ = ddim_coefficients(GridCoords.of(flow.sde, grid), 0.0)[STEP]
    return a * xs[STEP] + b * flow.output("noise", xs[STEP], float(grid[STEP]))


def _heun(flow, grid, xs):
    return sample_heun(flow.sde, flow.model, xs[STEP], grid[STEP : STEP + 2])


# (label, one step, local order p + 1)
CASES = [
    ("ddim", _ddim, 2),
    ("heun", _heun, 3),
    *[(f"dpm_solver++ {o}", _dpm(o, "dpmsolver++"), o + 1) for o in (1, 2, 3)],
    *[(f"dpm_solver {o}", _dpm(o, "dpmsolver"), o + 1) for o in (1, 2, 3)],
    ("pndm s: PLMS-2", _plms("s"), 3),
    ("pndm f: PLMS-4", _plms("f"), 5),
    ("pndm s: pseudo improved Euler", _pseudo_rk("s"), 3),
    ("pndm f: pseudo RK4", _pseudo_rk("f"), 5),
    *[
        (f"unipc {v} {p} UniP-{o}", _unipc(o, v, p, False), o + 1)
        for v in ("bh1", "bh2")
        for p in ("data", "noise")
        for o in (1, 2, 3)
    ],
    *[
        (f"unipc {v} {p} UniP-{o} + UniC", _unipc(o, v, p, True), o + 2)
        for v in ("bh1", "bh2")
        for p in ("data", "noise")
        for o in (1, 2, 3)
    ],
]


@pytest.mark.parametrize("label,one_step,order", CASES, ids=[c[0] for c in CASES])
def test_local_error_order(flow, label, one_step, order):
    slope, errors = local_slope(flow, lambda grid, xs: one_step(flow, grid, xs))
    assert abs(slope - order) < 0.2, f"{label} on {type(flow.sde).__name__}: slope {slope:.2f}, errors {errors}"


# --- exactness on polynomial model outputs -------------------------------------------------------------------------
# Each linear multistep step integrates a polynomial through its outputs exactly. With a model whose output does
# not depend on x and is a polynomial P in lambda (x0_hat for data prediction, eps_hat for noise prediction), the
# exact step is ``(sigma_t / sigma_s) x + sigma_t int e^lambda P`` (data) or ``(alpha_t / alpha_s) x -
# alpha_t int e^-lambda P`` (noise), and a method of order p must reproduce it to rounding for deg P <= p - 1 (UniC:
# deg P <= p). This pins every weight exactly: DPM-Solver++(3) with its D_2 weight 2 -> 1.8 is off by 1e-3 here.
# Three steps use a simplified coefficient of the right order instead of the exact integral (DPM-Solver-2M's
# -phi_1 / 2 for h phi_2; UniPC's rho = 1/2 for UniP-2 and UniC-1, as their papers and reference codes do): they
# are exact for constants only, and their order is checked by the local-error test above.


def _exact_step(sde, grid, prediction: str, poly: np.polynomial.Polynomial, x: float) -> float:
    """The exact step from ``grid[STEP]`` to ``grid[STEP + 1]`` for the output ``P(lambda)``."""
    c = GridCoords.of(sde, grid)
    s, t = STEP, STEP + 1
    sign = 1.0 if prediction == "data" else -1.0

    def antiderivative(lam: float) -> float:
        """Of ``e^(sign lam) P(lam)``: ``e^(sign lam) sum_k (-1)^k P^(k)(lam) / sign^(k+1)``."""
        terms = ((-1) ** k * poly.deriv(k)(lam) / sign ** (k + 1) for k in range(poly.degree() + 1))
        return np.exp(sign * lam) * sum(terms)

    integral = antiderivative(c.lam[t]) - antiderivative(c.lam[s])
    if prediction == "data":
        return c.sigma[t] / c.sigma[s] * x + c.sigma[t] * integral
    return c.alpha[t] / c.alpha[s] * x - c.alpha[t] * integral


def _table_step(steps, grid, sde, poly, x: float, corrected: bool) -> float:
    lam = GridCoords.of(sde, grid).lam
    history = [poly(lam[STEP - j]) for j in range(4)]
    if corrected:
        weights, outputs = steps.corrector[STEP], [poly(lam[STEP + 1]), *history]
    else:
        weights, outputs = steps.weights[STEP], history
    return steps.state_coef[STEP] * x + sum(w * m for w, m in zip(weights, outputs, strict=False))


def _tables():
    """(label, coefficient table builder, prediction, degree it must be exact for, corrected)."""
    out = []
    for algorithm, prediction in (("dpmsolver++", "data"), ("dpmsolver", "noise")):
        for o in (1, 2, 3):
            out.append((f"dpm_solver {algorithm} {o}", lambda c, o=o, a=algorithm: dpm_solver_steps(c, o, a, False),
                        prediction, 0 if o == 2 else o - 1, False))  # fmt: skip
    for v in ("bh1", "bh2"):
        for p in ("data", "noise"):
            for o in (1, 2, 3):
                build = lambda c, o=o, v=v, p=p: unipc_steps(c, o, v, p, True, False)  # noqa: E731
                out.append((f"unipc {v} {p} UniP-{o}", build, p, 0 if o == 2 else o - 1, False))
                out.append((f"unipc {v} {p} UniP-{o} + UniC", build, p, 0 if o == 1 else o, True))
    return out


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=10.0)], ids=["vp", "ve"])
@pytest.mark.parametrize("label,build,prediction,degree,corrected", _tables(), ids=[t[0] for t in _tables()])
def test_exact_for_polynomial_outputs(sde, label, build, prediction, degree, corrected):
    """Exact to 1e-10 (relative) for ``deg P = degree`` on an uneven grid (h = 0.3, gaps 1.3 h, 0.8 h, 0.9 h), and
    not exact for ``deg P = degree + 1`` (so the check has power)."""
    grid = Flow.grid(type("G", (), {"sde": sde})(), 0.3)
    steps = build(GridCoords.of(sde, grid))
    rng = np.random.default_rng(0)
    for deg, exact in ((degree, True), (degree + 1, False)):
        poly = np.polynomial.Polynomial(rng.normal(size=deg + 1))
        want = _exact_step(sde, grid, prediction, poly, 0.7)
        got = _table_step(steps, grid, sde, poly, 0.7, corrected)
        err = abs(got - want) / max(abs(want), 1.0)
        assert (err < 1e-10) == exact, f"{label}, degree {deg}: relative error {err:.1e}"


@pytest.mark.parametrize("variant,degree", [("s", 1), ("f", 3)])
def test_plms_exact_for_polynomial_eps_in_sigma_hat(variant, degree):
    """PLMS integrates ``dy / d sigma_hat = Q(sigma_hat)`` exactly for ``deg Q <= order - 1`` (Adams–Bashforth)."""
    sde = VPSDE()
    grid = Flow.grid(type("G", (), {"sde": sde})(), 0.3)
    c = GridCoords.of(sde, grid)
    steps = pndm_steps(c, variant)
    rng = np.random.default_rng(1)
    for deg, exact in ((degree, True), (degree + 1, False)):
        q = np.polynomial.Polynomial(rng.normal(size=deg + 1))
        s_hat = c.sigma_hat
        want = c.alpha[STEP + 1] * (0.7 / c.alpha[STEP] + (q.integ()(s_hat[STEP + 1]) - q.integ()(s_hat[STEP])))
        outputs = [q(s_hat[STEP - j]) for j in range(4)]
        got = steps.state_coef[STEP] * 0.7 + sum(w * m for w, m in zip(steps.weights[STEP], outputs, strict=False))
        assert (abs(got - want) < 1e-10 * max(abs(want), 1.0)) == exact, (deg, got, want)


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction", ["data", "noise"])
def test_corrected_point_from_the_predicted_one(order, prediction):
    """UniC as ``predicted + sum_j corrections[i][j] m_j`` equals the corrector's own form ``state_coef x + sum_j
    corrector[i][j] m_j`` on every step of a grid, and the loop's ``folded`` weights take the predicted point straight
    to the next predicted point as the corrected one would (random state and outputs, float64, to 1e-12)."""
    from scoresde.sampling.exponential import accumulate, combine

    sde = VPSDE()
    steps = unipc_steps(GridCoords.of(sde, sde.inverse_lambda(torch.linspace(-4, 5, 9, dtype=F64))), order,
                        "bh2", prediction, True, False)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, dtype=F64, generator=g)
    # m_{i+1}, m_i, m_{i-1}, ... as the loop holds them: (factor, tensor), a rescaled one included
    outputs = [(1.0 if j % 2 else -0.3, torch.randn(16, 2, dtype=F64, generator=g)) for j in range(order + 1)]
    checked = 0
    for i, (corrector, correction) in enumerate(zip(steps.corrector, steps.corrections, strict=True)):
        if corrector is None:
            assert correction is None
            continue
        predicted = combine(x, steps.state_coef[i], steps.weights[i], outputs[1:])
        corrected = combine(x, steps.state_coef[i], corrector, outputs)
        torch.testing.assert_close(accumulate(predicted, correction, outputs), corrected, rtol=1e-12, atol=1e-12)
        # the loop folds this correction into the next step: from the predicted point straight to the next one
        if i + 1 < len(steps.weights):
            following = combine(corrected, steps.state_coef[i + 1], steps.weights[i + 1], outputs)
            folded = combine(predicted, steps.state_coef[i + 1], steps.folded[i + 1], outputs)
            torch.testing.assert_close(folded, following, rtol=1e-12, atol=1e-12)
        checked += 1
    assert checked == len(steps.weights) - 1  # every step but the last
