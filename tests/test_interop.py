"""diffusers interop: a random UNet2DModel and DDPM-type schedulers (no download) against diffusers itself.

Tolerances: the UNet runs in float32; the same float32 network evaluated twice at the same timestep agrees bitwise,
so the score identity at the training timesteps is checked to 1e-6 of each tensor's max. Sampler round trips chain
10-20 float32 network calls through float64 (ours) or float32 (diffusers) coefficients, and our samplers pass the
time as float32, which moves the timestep label by up to one float32 ulp near 1000 (6e-5): measured agreement with
diffusers 3e-7 (DDIM) and 6e-7 (DPM-Solver++), asserted at 1e-5 of the max.
"""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from scoresde.interop import (  # noqa: E402
    alphas_cumprod_from_config,
    from_diffusers,
    is_diffusers_folder,
    load_diffusers,
)
from scoresde.interop.diffusers import DDPM_TYPE_SCHEDULERS  # noqa: E402
from scoresde.sampling import get_sampler  # noqa: E402
from scoresde.sde import VPSDE  # noqa: E402

REL = 1e-5
SHAPE = (2, 3, 8, 8)


def tiny_unet(seed: int = 0, **overrides) -> torch.nn.Module:
    """A 180k-parameter UNet2DModel (two levels, attention at 4x4) with every weight moved off its init, so that
    zero-initialised output layers do not hide a mapping error."""
    torch.manual_seed(seed)
    kwargs = dict(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    unet = diffusers.UNet2DModel(**{**kwargs, **overrides})
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return unet.eval()


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def x_start(seed: int = 3) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


# --- the schedule -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls_name", DDPM_TYPE_SCHEDULERS)
@pytest.mark.parametrize(
    "schedule",
    [
        dict(beta_schedule="linear"),
        dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        dict(beta_schedule="squaredcos_cap_v2"),
        dict(trained_betas=torch.linspace(1e-3, 0.05, 100).tolist(), num_train_timesteps=100),
    ],
    ids=["linear", "scaled_linear", "cosine", "trained"],
)
def test_alphas_cumprod_bitwise_as_diffusers(cls_name, schedule):
    """Our reading of the config equals the scheduler's own float32 alphas_cumprod bit for bit."""
    sched = getattr(diffusers, cls_name)(**schedule)
    ours = alphas_cumprod_from_config(dict(sched.config))
    assert ours.dtype == torch.float32 and torch.equal(ours, sched.alphas_cumprod)


def test_sde_is_exact_at_the_scheduler_timesteps(unet):
    sched = diffusers.DDPMScheduler()
    m = from_diffusers(unet, sched)
    k = torch.arange(1000)
    assert m.sde.N == 1000 and m.sde.T == 1.0
    torch.testing.assert_close(
        m.sde.marginal_alpha(m.time_of_timestep(k)) ** 2, sched.alphas_cumprod.double(), rtol=1e-12, atol=0
    )


# --- the score and its views ---------------------------------------------------------------------------------


def diffusers_eps_x0(pred: str, out: torch.Tensor, x: torch.Tensor, abar: torch.Tensor):
    """diffusers' conversions (DDIMScheduler.step) of a model output to (eps, x0)."""
    a, b = abar.sqrt()[:, None, None, None], (1 - abar).sqrt()[:, None, None, None]
    if pred == "epsilon":
        return out, (x - b * out) / a
    if pred == "sample":
        return (x - a * out) / b, out
    return a * out + b * x, a * x - b * out


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_score_is_minus_eps_over_sigma_at_training_timesteps(unet, pred):
    sched = diffusers.DDPMScheduler(prediction_type=pred)
    m = from_diffusers(unet, sched)
    x = x_start()
    for k in ([0, 999], [1, 500], [250, 998]):
        k = torch.tensor(k)
        abar = sched.alphas_cumprod[k]
        with torch.no_grad():
            eps, x0 = diffusers_eps_x0(pred, unet(x, k).sample, x, abar)
            t = m.time_of_timestep(k)  # float64: the UNet sees exactly k
            score = m.score_fn(x, t)
            eps_hat, x0_hat = m.score_fn.eps_hat(x, t), m.score_fn.x0_hat(x, t)
        assert rel_err(score, -eps / (1 - abar).sqrt()[:, None, None, None]) < 1e-6
        assert rel_err(eps_hat, eps) < 1e-6 and rel_err(x0_hat, x0) < 1e-6


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
def test_views_agree_between_timesteps(unet, pred):
    """Off the knots: eps_hat = -sigma score and x0_hat = (x + sigma^2 score) / alpha (Tweedie), float64 network."""
    m = from_diffusers(tiny_unet().double(), diffusers.DDPMScheduler(prediction_type=pred))
    x = x_start().double()
    t = torch.tensor([0.0004, 0.73215], dtype=torch.float64)
    alpha, sigma = m.sde.marginal_alpha(t)[:, None, None, None], m.sde.marginal_std(t)[:, None, None, None]
    with torch.no_grad():
        score, eps_hat, x0_hat = m.score_fn(x, t), m.score_fn.eps_hat(x, t), m.score_fn.x0_hat(x, t)
    torch.testing.assert_close(eps_hat, -sigma * score, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0_hat, (x + sigma**2 * score) / alpha, rtol=1e-9, atol=1e-9)


# --- samplers against diffusers' schedulers ------------------------------------------------------------------


def _grids_as_data() -> bool:
    """Whether the public samplers take a grid as a tensor of times (CONTRACT), tried on a Gaussian score."""
    grid = torch.tensor([1.0, 0.5, 0.1], dtype=torch.float64)
    try:
        get_sampler("ddim", grid=grid, denoise=False)(VPSDE(), lambda x, t: -x, (2, 2), x_init=torch.ones(2, 2))
    except Exception:  # noqa: BLE001 - any refusal means the feature is absent
        return False
    return True


def _needs_grids():
    if not _grids_as_data():
        pytest.xfail("needs grids as data (sampling branch): get_sampler(name, grid=<tensor of times>)")


def run_diffusers(unet, sched, steps: int) -> torch.Tensor:
    sched.set_timesteps(steps)
    x = x_start()
    with torch.no_grad():
        for k in sched.timesteps:
            x = sched.step(unet(x, k).sample, k, x).prev_sample
    return x


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("alpha_to_one", [False, True])
def test_ddim_reproduces_diffusers(unet, pred, alpha_to_one):
    """Our ``ddim`` on the times of DDIMScheduler's timesteps gives its output. Its last step goes to timestep 0
    (``set_alpha_to_one=False``: our grid ends at t_0 = 1/N) or to alpha = 1, i.e. x0_hat at the last timestep
    (our final Tweedie step, ``denoise=True``)."""
    _needs_grids()
    sched = diffusers.DDIMScheduler(
        prediction_type=pred, clip_sample=False, timestep_spacing="trailing", set_alpha_to_one=alpha_to_one
    )
    m = from_diffusers(unet, sched)
    ref = run_diffusers(unet, sched, 10)
    times = [m.time_of_timestep(int(k)) for k in sched.timesteps]
    if not alpha_to_one:
        times.append(m.time_of_timestep(0))
    sampler = get_sampler("ddim", grid=torch.tensor(times, dtype=torch.float64), denoise=alpha_to_one)
    res = sampler(m.sde, m.score_fn, SHAPE, x_init=x_start())
    assert res.nfe == 10
    assert rel_err(res.samples, ref) < REL


@pytest.mark.parametrize("pred", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("final,steps", [("zero", 20), ("sigma_min", 10)])
def test_dpm_solver_pp_reproduces_diffusers(unet, pred, final, steps):
    """Our second-order multistep DPM-Solver++ on DPMSolverMultistepScheduler's timesteps gives its output.

    ``final_sigmas_type="zero"`` ends with a first-order step to sigma = 0, i.e. x0_hat at the last timestep (our
    final Tweedie step); ``"sigma_min"`` ends at timestep 0 (t = 1/N) with a first-order step (fewer than 15
    steps), which ``lower_order_final=True`` gives us. Third order is not compared: diffusers weights the second
    difference by phi_3 where the Taylor expansion of DPM-Solver++ gives 2 phi_3, which ours uses.
    """
    _needs_grids()
    sched = diffusers.DPMSolverMultistepScheduler(prediction_type=pred, solver_order=2, final_sigmas_type=final)
    m = from_diffusers(unet, sched)
    ref = run_diffusers(unet, sched, steps)
    times = [m.time_of_timestep(int(k)) for k in sched.timesteps]
    if final == "sigma_min":
        times.append(m.time_of_timestep(0))
    grid = torch.tensor(times, dtype=torch.float64)
    # diffusers lowers the order at its last step (to sigma = 0 or, below 15 steps, at timestep 0), never before
    lower = final == "sigma_min"
    sampler = get_sampler(
        "dpm_solver", order=2, algorithm="dpmsolver++", grid=grid, denoise=not lower, lower_order_final=lower
    )
    res = sampler(m.sde, m.score_fn, SHAPE, x_init=x_start())
    assert res.nfe == steps
    assert rel_err(res.samples, ref) < REL


def test_named_samplers_run_on_a_diffusers_model(unet):
    """Every sampler and the exact likelihood run on the wrapped model: finite outputs of the right shape."""
    from scoresde.likelihood import log_likelihood

    m = from_diffusers(unet, diffusers.DDPMScheduler())
    gen = torch.Generator().manual_seed(0)
    for name, opts in [("ddim", dict(steps=5)), ("ancestral", dict(steps=5)), ("dpm_solver", dict(steps=5))]:
        res = get_sampler(name, **opts)(m.sde, m.score_fn, SHAPE, generator=gen)
        assert res.samples.shape == SHAPE and torch.isfinite(res.samples).all()
    res = log_likelihood(m.sde, m.score_fn, x_start().clamp(-1, 1), rtol=1e-3, atol=1e-3, generator=gen)
    assert torch.isfinite(res.logp).all() and res.nfe > 0


# --- folders ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["flat", "pipeline"])
def test_load_a_local_folder(tmp_path, unet, layout, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sched = diffusers.DDIMScheduler(prediction_type="v_prediction", beta_schedule="squaredcos_cap_v2")
    if layout == "flat":
        unet.save_pretrained(tmp_path)
        sched.save_pretrained(tmp_path)
    else:
        diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(tmp_path)
    assert is_diffusers_folder(tmp_path) and not is_diffusers_folder(tmp_path / "nowhere")
    loaded = load_diffusers(tmp_path)
    direct = from_diffusers(unet, sched)
    assert loaded.prediction_type == "v_prediction" and loaded.data_shape == (3, 8, 8)
    x, t = x_start(), torch.tensor([0.3, 0.9], dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(loaded.score_fn(x, t), direct.score_fn(x, t))


def test_sample_and_likelihood_jobs_take_a_diffusers_folder(tmp_path, unet, monkeypatch):
    """``sample.py ckpt=<folder>`` / ``likelihood.py ckpt=<folder> +data=npz ...`` through :func:`scoresde.load_model`:
    uint8 NHWC images, and bits/dim of uint8 images with the 8-bit offset in [-1, 1] (diffusers' data range)."""
    import numpy as np

    import scoresde
    from scoresde.jobs import likelihood, sample
    from tests.configs import typed_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "model"
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(folder)
    m = scoresde.load_model(folder)
    assert m.kind == "diffusers" and m.data_shape == (3, 8, 8) and m.centered
    paths = sample.run(
        typed_config("sample", f"ckpt={folder}", "sampler=ddim", "sampler.steps=3", "n=3"), tmp_path / "s"
    )
    arr = np.load(paths["npz"])["arr_0"]
    assert arr.shape == (3, 8, 8, 3) and arr.dtype == np.uint8
    images = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images)
    res = likelihood.run(typed_config("likelihood", f"ckpt={folder}", "+data=npz", f"data.path={tmp_path / 'imgs.npz'}",
                                      "data.test_fraction=0.5", "rtol=1e-3", "atol=1e-3"), tmp_path / "l")  # fmt: skip
    assert res["metric"] == "bits/dim" and res["data_range"] == [-1.0, 1.0] and res["n"] == 2


# --- refusals ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config,match",
    [
        (dict(beta_schedule="sigmoid"), "beta_schedule"),
        (dict(rescale_betas_zero_snr=True), "rescale_betas_zero_snr"),
        (dict(prediction_type="flow"), "prediction_type"),
        (dict(_class_name="ScoreSdeVeScheduler"), "_class_name"),
        (dict(beta_start="0.1"), "beta_start"),
        (dict(num_train_timesteps=0), "num_train_timesteps"),
        (dict(trained_betas=[0.1, 0.2], num_train_timesteps=3), "trained_betas"),
    ],
)
def test_unmapped_schedulers_are_refused(unet, config, match):
    with pytest.raises(ValueError, match=match):
        from_diffusers(unet, {"_class_name": "DDPMScheduler", **config})


@pytest.mark.parametrize(
    "overrides,match",
    [
        (dict(out_channels=6), "learned-variance"),
        (dict(time_embedding_type="fourier"), "time_embedding_type"),
        (dict(num_class_embeds=10), "class-conditional"),
    ],
)
def test_unmapped_unets_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        from_diffusers(tiny_unet(**overrides), diffusers.DDPMScheduler())


def test_not_a_unet_or_not_a_folder(tmp_path, unet):
    with pytest.raises(TypeError, match="UNet2DModel"):
        from_diffusers(torch.nn.Conv2d(3, 3, 1), diffusers.DDPMScheduler())
    with pytest.raises(FileNotFoundError, match="diffusers model folder"):
        load_diffusers(tmp_path)
    unet.save_pretrained(tmp_path)
    diffusers.DDPMScheduler().save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, _class_name="UNet2DConditionModel")))
    with pytest.raises(ValueError, match="UNet2DModel"):
        load_diffusers(tmp_path)
