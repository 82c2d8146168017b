"""NCSN++ / DDPM++: FIR resampling against its definition, presets (parameter counts, forward passes), options,
dropout, mixed precision, channels_last and torch.compile."""

from __future__ import annotations

import itertools
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from scoresde.nets import NCSNpp, fir
from scoresde.nets.official import OFFICIAL_CONFIGS, net_kwargs_from_config, score_kwargs_from_config
from scoresde.score import ScoreModel
from scoresde.sde import VESDE, VPSDE

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
PRESETS = sorted(p.stem for p in CONF.glob("*.yaml") if p.stem != "mlp")
PUBLISHED = {  # Song et al. 2021 / reference code, counted over model.parameters()
    "cifar10_ncsnpp_continuous": 62_758_915,
    "cifar10_ncsnpp_deep_continuous": 107_587_075,
    "cifar10_ddpmpp_continuous": 61_804_419,
    "cifar10_ddpmpp_deep_continuous": 106_632_579,
    "celebahq_256_ncsnpp_continuous": 65_574_549,
    "ffhq_ncsnpp_continuous": 105_785_896,
}


def load_preset(name: str):
    return OmegaConf.load(CONF / f"{name}.yaml")


def build(cfg, data_shape, device=None):
    with torch.device(device or "cpu"):
        return hydra.utils.instantiate(cfg.net, data_shape=data_shape)


def channels_of(name: str) -> int:
    return 1 if name.startswith("digits") else 3


# ----------------------------------------------------------------------------------------------- FIR resampling


def upfirdn_by_definition(x: np.ndarray, k: np.ndarray, up: int, down: int, pad: tuple[int, int]) -> np.ndarray:
    """Zero insertion, zero padding, true 2-D convolution with ``k``, decimation — written out with loops."""
    h, w = x.shape
    z = np.zeros((h * up, w * up))
    z[::up, ::up] = x
    z = np.pad(z, ((pad[0], pad[1]), (pad[0], pad[1])))
    kh, kw = k.shape
    out_h, out_w = z.shape[0] - kh + 1, z.shape[1] - kw + 1
    y = np.zeros((out_h, out_w))
    for i, j in itertools.product(range(out_h), range(out_w)):
        y[i, j] = sum(k[a, b] * z[i + kh - 1 - a, j + kw - 1 - b] for a in range(kh) for b in range(kw))
    return y[::down, ::down]


@pytest.mark.parametrize("up,down,pad", [(1, 1, (1, 2)), (2, 1, (2, 1)), (1, 2, (1, 1)), (2, 2, (0, 1))])
def test_upfirdn2d_matches_definition(up, down, pad):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    k = torch.rand(4, 3, generator=gen, dtype=torch.float64)  # asymmetric: checks the flip
    out = fir.upfirdn2d(x, k, up=up, down=down, pad=pad)
    for b, c in itertools.product(range(2), range(3)):
        ref = upfirdn_by_definition(x[b, c].numpy(), k.numpy(), up, down, pad)
        np.testing.assert_allclose(out[b, c].numpy(), ref, rtol=1e-12, atol=1e-12)


def test_fir_resampling_identities():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3, generator=gen, dtype=torch.float64)
    box = fir.fir_kernel([1, 1]).double()
    # The [1, 1] filter is nearest-neighbour upsampling / 2x2 average pooling.
    torch.testing.assert_close(fir.upsample_2d(x, box), fir.naive_upsample_2d(x))
    torch.testing.assert_close(fir.downsample_2d(x, box), fir.naive_downsample_2d(x))
    k = fir.fir_kernel([1, 3, 3, 1]).double()
    # The transposed-convolution fast path of upsample_2d is upfirdn2d with the reference padding.
    for kern in (k, torch.rand(4, 4, generator=gen, dtype=torch.float64), fir.fir_kernel([1, 2, 1]).double()):
        p = kern.shape[0] - 2
        ref = fir.upfirdn2d(x, kern * 4, up=2, pad=((p + 1) // 2 + 1, p // 2))
        torch.testing.assert_close(fir.upsample_2d(x, kern), ref)
    # Constant images stay constant away from the zero-padded border (the filter has unit DC gain).
    ones = torch.ones(1, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(fir.upsample_2d(ones, k)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12, dtype=torch.float64))
    torch.testing.assert_close(fir.downsample_2d(ones, k)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2, dtype=torch.float64))
    # Fused conv + resampling equal resampling then convolution away from the border (they pad differently).
    for kern in (box, k):
        up = fir.upsample_conv_2d(x, w, kern)
        ref = F.conv2d(fir.upsample_2d(x, kern), w, padding=1)
        torch.testing.assert_close(up[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
        down = fir.conv_downsample_2d(x, w, kern)
        ref = fir.downsample_2d(F.conv2d(x, w, padding=1), kern)
        torch.testing.assert_close(down[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
        assert up.shape == (2, 5, 16, 16) and down.shape == (2, 5, 4, 4)


# ----------------------------------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_presets_have_published_parameter_counts(name):
    cfg = load_preset(name)
    net = build(cfg, (3, cfg.image_size, cfg.image_size), device="meta")
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED[name]
    # The preset is the reference config it names: same network options and score convention.
    official = net_kwargs_from_config(cfg.official_config)
    assert official.pop("data_shape") == (3, cfg.image_size, cfg.image_size)
    ours = OmegaConf.to_container(cfg.net, resolve=True)
    ours.pop("_target_")
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in ours.items()} == official
    score = score_kwargs_from_config(cfg.official_config)
    assert {k: cfg[k] for k in score} == score
    assert cfg.ema_rate == OFFICIAL_CONFIGS[cfg.official_config]["model"]["ema_rate"]


def test_official_config_names_have_published_counts():
    expected = {f"{'ve' if 'ncsnpp' in k else 'vp'}/{k}": v for k, v in PUBLISHED.items()}
    expected |= {"subvp/cifar10_ddpmpp_continuous": 61_804_419, "subvp/cifar10_ddpmpp_deep_continuous": 106_632_579}
    assert set(expected) == set(OFFICIAL_CONFIGS)
    for name, count in expected.items():
        with torch.device("meta"):
            net = NCSNpp(**net_kwargs_from_config(name))
        assert sum(p.numel() for p in net.parameters()) == count, name


def reduced_resolution(net_cfg) -> int:
    """Smallest power-of-two resolution >= 16 that keeps every level and every attention layer of the preset."""
    res = max(16, 2 ** (len(net_cfg.ch_mult) - 1))
    assert set(net_cfg.attn_resolutions) <= {res // 2**i for i in range(len(net_cfg.ch_mult))}
    return res


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_runs_forward_and_backward_at_reduced_resolution(name):
    cfg = load_preset(name)
    small = name not in PUBLISHED
    res = cfg.image_size if small else reduced_resolution(cfg.net)
    # Full width; the reduced resolution still has every level, so every layer runs.
    shape = (channels_of(name), res, res)
    torch.manual_seed(0)
    net = build(cfg, shape)
    batch = 2 if small else 1
    x = torch.rand(batch, *shape)
    label = (torch.tensor([3.0, 0.5]) if cfg.time_input == "sigma" else torch.tensor([900.0, 10.0]))[:batch]
    out = net(x, label)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if small:  # gradients reach every trainable parameter
        out.square().mean().backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", ["ncsnpp", "ddpmpp"])
def test_default_small_models_are_cpu_sized(name):
    cfg = load_preset(name)
    with torch.device("meta"):
        net = hydra.utils.instantiate(cfg.net, data_shape=(3, 32, 32))
    assert sum(p.numel() for p in net.parameters()) < 2_000_000


# ----------------------------------------------------------------------------------------------------- options

OPTION_GRID = [
    dict(resblock_type="ddpm", progressive="output_skip", progressive_input="input_skip", progressive_combine="cat"),
    dict(resblock_type="ddpm", progressive="residual", progressive_input="residual", fir=True),
    dict(resblock_type="ddpm", progressive="residual", progressive_input="input_skip", fir=False),
    dict(resblock_type="biggan", progressive="output_skip", progressive_input="input_skip", fir=True),
    dict(resblock_type="biggan", progressive="residual", progressive_input="none", progressive_combine="cat"),
    dict(resblock_type="ddpm", resamp_with_conv=False, fir=True, progressive_input="input_skip"),
    dict(resblock_type="ddpm", resamp_with_conv=False, fir=False, skip_rescale=False),
    dict(embedding_type="positional", conditional=False),
]


@pytest.mark.parametrize("opts", OPTION_GRID, ids=lambda o: "-".join(f"{v}" for v in o.values()))
def test_option_combinations_run_and_are_reproducible(opts):
    kwargs = dict(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0) | opts
    torch.manual_seed(0)
    net = NCSNpp((3, 8, 8), **kwargs).eval()
    x, label = torch.rand(2, 3, 8, 8), torch.tensor([0.3, 400.0])
    with torch.no_grad():
        out = net(x, label)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # A state_dict round trip into a differently seeded net gives the same outputs (names cover every weight).
    torch.manual_seed(1)
    other = NCSNpp((3, 8, 8), **kwargs).eval()
    other.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(other(x, label), out, rtol=0, atol=0)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="progressive"):
        NCSNpp((3, 8, 8), nf=16, ch_mult=(1, 2), progressive="bogus")
    with pytest.raises(ValueError, match="square"):
        NCSNpp((3, 8, 16), nf=16, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="divisible"):
        NCSNpp((3, 12, 12), nf=16, ch_mult=(1, 2, 2, 2))
    net = NCSNpp((3, 8, 8), nf=16, ch_mult=(1, 2), attn_resolutions=())
    with pytest.raises(ValueError, match="shape"):
        net(torch.rand(2, 3, 16, 16), torch.ones(2))
    with pytest.raises(ValueError, match="label"):
        net(torch.rand(2, 3, 8, 8), torch.ones(3))


def small_net(**kw) -> NCSNpp:
    torch.manual_seed(0)
    return NCSNpp((3, 8, 8), nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), init_scale=1.0, **kw)


def test_dropout_only_in_train_mode():
    net = small_net(dropout=0.5)
    x, label = torch.rand(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    net.train()
    assert not torch.equal(net(x, label), net(x, label))
    net.eval()
    torch.testing.assert_close(net(x, label), net(x, label), rtol=0, atol=0)


def test_scale_by_sigma_divides_the_output():
    """The reference's division by sigma lives in the preconditioning layer: the score is ``net(x, sigma) / sigma``."""
    net, sde = small_net().eval(), VESDE()
    model = ScoreModel(net, sde, "score", "sigma", scale_by_sigma=True)
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([0.2, 0.6])
    sigma = sde.marginal_std(t)
    with torch.no_grad():
        torch.testing.assert_close(model(x, t) * sigma[:, None, None, None], net(x, sigma))


def test_float64_and_channels_last_agree_with_float32():
    net = small_net().eval()
    x, label = torch.rand(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        ref = net(x, label)
        out64 = net.double()(x.double(), label.double())
        assert out64.dtype == torch.float64
        torch.testing.assert_close(out64.float(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
        net.float().to(memory_format=torch.channels_last)
        out_cl = net(x.to(memory_format=torch.channels_last), label)
        torch.testing.assert_close(out_cl, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("embedding_type", ["fourier", "positional"])
def test_bf16_autocast_keeps_embedding_and_scaling_in_float32(embedding_type):
    net = small_net(embedding_type=embedding_type).eval()
    model = ScoreModel(net, VESDE(), "score", "sigma", scale_by_sigma=True)  # the 1 / sigma scaling
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([0.5, 0.9])
    label = model.noise_label(t)
    with torch.no_grad():
        ref = model(x, t)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert net.embed(label).dtype == torch.float32
            out = model(x, t)
    assert out.dtype == torch.float32
    # bf16 has an 8-bit mantissa: a few 1e-2 relative error over a dozen layers.
    assert ((out - ref).abs().max() / ref.abs().max()).item() < 0.1


def test_score_model_wraps_ddpmpp_and_ncsnpp():
    """VP: the network sees 999 t and predicts eps; VE: it sees 2 x - 1 and sigma(t); output / sigma = score."""
    x, t = torch.rand(2, 3, 8, 8), torch.tensor([0.2, 0.9])
    vp_net = small_net(embedding_type="positional").eval()
    vp = ScoreModel(vp_net, VPSDE(), parameterization="eps", time_input="t", time_scale=999)
    with torch.no_grad():
        std = VPSDE().marginal_std(t)
        torch.testing.assert_close(vp(x, t), -vp_net(x, 999 * t) / std[:, None, None, None])
        ve_net = small_net().eval()
        ve = ScoreModel(ve_net, VESDE(), "score", "sigma", centered=False, scale_by_sigma=True)
        sigma = VESDE().marginal_std(t)
        torch.testing.assert_close(ve(x, t), ve_net(2 * x - 1, sigma) / sigma[:, None, None, None])


@pytest.mark.slow
def test_torch_compile_matches_eager():
    net = small_net().eval()
    x, label = torch.rand(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    compiled = torch.compile(net)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, label), net(x, label), rtol=1e-4, atol=1e-5)


def test_presets_compose_with_hydra_and_carry_the_data_scaling():
    """``model=<preset>`` composes; the data scaling is the preset's ``centered`` (also when overridden), applied by the
    preconditioning layer (``ScoreModel``), not passed to the network."""
    from hydra import compose, initialize_config_dir

    root = OmegaConf.load(CONF.parent / "config.yaml")
    has_model = any(isinstance(d, dict) and "model" in d for d in root.get("defaults", []))
    prefix = "" if has_model else "+"
    with initialize_config_dir(config_dir=str(CONF.parent), version_base=None):
        for preset, centered in (("ncsnpp", False), ("ddpmpp", True)):
            for override in ([], [f"model.centered={not centered}"]):
                cfg = compose("config", overrides=[f"{prefix}model={preset}", *override])
                with torch.device("meta"):
                    net = hydra.utils.instantiate(cfg.model.net, data_shape=(1, 8, 8))
                assert isinstance(net, NCSNpp) and "centered" not in cfg.model.net
                assert cfg.model.centered == (centered if not override else not centered)
