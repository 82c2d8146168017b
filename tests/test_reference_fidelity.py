"""Reference fidelity of the training schedule: EMA warm-up and learning-rate warm-up, update by update.

The expected values are the formulas of yang-song/score_sde_pytorch (commit cb1f359), written out here:

* ``models/ema.py`` ``ExponentialMovingAverage(use_num_updates=True).update``: ``num_updates += 1`` first, then
  ``decay_n = min(decay, (1 + n) / (10 + n))`` with the new count ``n`` and ``shadow -= (1 - decay_n) (shadow - p)``;
  so the first three updates use 2/11, 3/12, 4/13 (0.18, 0.25, 0.31).
* ``losses.optimization_manager``: ``lr_k = lr * min(k / warmup, 1)`` for the optimizer step made when
  ``state['step'] == k``; ``run_lib.train`` starts ``state['step']`` at 0 and increments it after each step, so the
  first step has learning rate 0.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from scoresde.ema import EMA
from scoresde.training import LinearWarmup


def _reference_ema(shadow: list[torch.Tensor], params_per_step: list[list[torch.Tensor]], decay: float):
    """The reference's EMA over a sequence of parameter values, with its decay per update."""
    shadow = [s.clone() for s in shadow]
    decays = []
    num_updates = 0
    for params in params_per_step:
        num_updates += 1
        d = min(decay, (1 + num_updates) / (10 + num_updates))
        decays.append(d)
        for s, p in zip(shadow, params, strict=True):
            s.sub_((1.0 - d) * (s - p))
    return shadow, decays, num_updates


def _trajectory(model: nn.Module, steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    """Parameter values after each of ``steps`` fake optimizer steps (random moves), applied to ``model``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))
            out.append([p.detach().clone() for p in model.parameters()])
    return out


@pytest.mark.parametrize("decay", [0.9999, 0.5])
def test_ema_matches_reference_update_by_update(decay):
    """20 updates of a float64 linear layer: the averaged weights equal the reference's after every update (to
    float64 rounding, 1e-12), and the effective decays are 2/11, 3/12, 4/13, ... (capped at ``decay``: 0.5 caps
    from the 9th update on, n = 8 giving 9/18)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    ema = EMA(model, decay=decay)
    start = [p.detach().clone() for p in model.parameters()]
    traj = _trajectory(model, 20)
    with torch.no_grad():
        for p, v in zip(model.parameters(), start, strict=True):
            p.copy_(v)
    for k, params in enumerate(traj, start=1):
        with torch.no_grad():
            for p, v in zip(model.parameters(), params, strict=True):
                p.copy_(v)
        expected_decay = min(decay, (1 + k) / (10 + k))
        assert ema.current_decay() == pytest.approx(expected_decay, rel=1e-15), k
        ema.update(model)
        ref, decays, n = _reference_ema(start, traj[:k], decay)
        assert ema.num_updates == n == k
        assert decays[-1] == pytest.approx(expected_decay, rel=1e-15)
        for e, r in zip(ema.module.parameters(), ref, strict=True):
            torch.testing.assert_close(e, r, rtol=1e-12, atol=1e-12)
    if decay == 0.9999:
        assert [round(d, 2) for d in _reference_ema(start, traj[:3], decay)[1]] == [0.18, 0.25, 0.31]


def test_ema_resume_continues_the_reference_sequence():
    """3 updates, a state-dict round trip into a fresh EMA (as a resumed run does), 3 more: the same weights and
    count as 6 uninterrupted updates, and the stored ``num_updates`` is the reference's (the number of updates made)."""
    torch.manual_seed(1)
    model = nn.Linear(4, 4).double()
    start = [p.detach().clone() for p in model.parameters()]
    traj = _trajectory(model, 6, seed=3)

    def set_params(values):
        with torch.no_grad():
            for p, v in zip(model.parameters(), values, strict=True):
                p.copy_(v)

    set_params(start)
    first = EMA(model, decay=0.999)
    for params in traj[:3]:
        set_params(params)
        first.update(model)
    state = first.state_dict()
    assert state["_extra_state"]["num_updates"] == 3
    resumed = EMA(nn.Linear(4, 4).double(), decay=0.999)
    resumed.load_state_dict(state)
    for params in traj[3:]:
        set_params(params)
        resumed.update(model)
    ref, _, n = _reference_ema(start, traj, 0.999)
    assert resumed.num_updates == n == 6
    for e, r in zip(resumed.module.parameters(), ref, strict=True):
        torch.testing.assert_close(e, r, rtol=1e-12, atol=1e-12)


def _lrs_used(scheduler_factory, steps: int, lr: float = 2e-4) -> list[float]:
    """The learning rate of each of ``steps`` optimizer steps, read just before the step (as the reference sets it)."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=lr)
    sched = scheduler_factory(opt)
    used = []
    for _ in range(steps):
        used.append(opt.param_groups[0]["lr"])
        p.grad = torch.ones(1)
        opt.step()
        sched.step()
    return used


@pytest.mark.parametrize("warmup", [1, 5, 100])
def test_lr_warmup_matches_reference_step_by_step(warmup):
    """``LambdaLR(LinearWarmup(W))`` (conf/optim/adam.yaml) gives optimizer step k (0-based) the reference's
    ``lr * min(k / W, 1)``: 0 at the first step, the full rate from step W on."""
    lr, steps = 2e-4, 2 * warmup + 3
    used = _lrs_used(lambda o: torch.optim.lr_scheduler.LambdaLR(o, LinearWarmup(warmup)), steps, lr)
    expected = [lr * min(k / warmup, 1.0) for k in range(steps)]
    assert used[0] == 0.0
    assert used == pytest.approx(expected, rel=1e-12, abs=0)
    assert LinearWarmup(0)(0) == 1.0 == LinearWarmup(-1)(3)  # warm-up off: the full rate from the first step


def test_lr_warmup_resumes_mid_warmup():
    """A scheduler state saved after 3 of 10 warm-up steps and loaded into a fresh scheduler continues with 3/10."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, LinearWarmup(10))
    for _ in range(3):
        p.grad = torch.ones(1)
        opt.step()
        sched.step()
    opt2 = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, LinearWarmup(10))
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.3, rel=1e-15)


def test_training_run_logs_the_reference_learning_rates(tmp_path):
    """End to end (train.py's code in-process, toy MLP, warm-up 20, lr 2e-3, 6 steps logged every step): the logged
    rate after step s is the one step s + 1 uses, ``2e-3 * s / 20`` (the reference's), so step 1 ran at 0."""
    from tests.test_train_cli import train_in_process

    run = tmp_path / "run"
    train_in_process(run, "trainer.steps=6", "trainer.ckpt_every=6", "trainer.log_every=1")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert sorted(lrs) == list(range(1, 7))
    for s, v in lrs.items():
        assert v == pytest.approx(2e-3 * s / 20, rel=1e-12), s


def test_warmup_cosine_schedule_closed_form():
    """``WarmupCosine(W, T, f)``: the linear warm-up of :class:`LinearWarmup` up to step W, then
    ``f + (1 - f) (1 + cos(pi (k - W) / (T - W))) / 2``: 1 at W, (1 + f) / 2 halfway, f at T and after."""
    from scoresde.training import WarmupCosine

    w, total, final, lr = 10, 50, 0.1, 2e-3
    used = _lrs_used(lambda o: torch.optim.lr_scheduler.LambdaLR(o, WarmupCosine(w, total, final)), total + 5, lr)
    expected = [lr * (k / w if k < w else final + (1 - final) * (1 + math.cos(math.pi * min(k - w, total - w) /
                (total - w))) / 2) for k in range(total + 5)]  # fmt: skip
    assert used == pytest.approx(expected, rel=1e-12, abs=1e-18)
    assert used[w] == pytest.approx(lr) and used[30] == pytest.approx(lr * (1 + final) / 2)
    assert used[total:] == pytest.approx([lr * final] * 5)
    for bad, match in [((10, 10), "total"), ((10, 50, 1.5), "final")]:
        with pytest.raises(ValueError, match=match):
            WarmupCosine(*bad)
