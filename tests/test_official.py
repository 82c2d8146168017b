"""Reference checkpoints (yang-song/score_sde_pytorch) load strictly and reproduce the reference outputs.

Fixtures: ../shared/fixtures/official_score_sde/ (made by the unmodified reference code, see its README).
Tolerance: the README measured thread-count differences of up to 1.2e-6 of each tensor's max |value| in the
reference itself, so outputs are compared with 1e-5 of the max. At t = 1e-5 the reference's float32
``std = sqrt(1 - exp(2 m))`` is off by 0.6% (VP) / 1.2% (sub-VP) through cancellation; there our scores are
compared against ``-net_out / std_fixture`` and, loosely, against the stored scores.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from scoresde.nets.ncsnpp import NCSNpp
from scoresde.nets.official import (
    CheckpointMismatchError,
    convert_state_dict,
    load_official_checkpoint,
    net_kwargs_from_config,
    official_module_order,
    resolve_config,
)
from tests.conftest import SHARED

FIXTURES = SHARED / "fixtures" / "official_score_sde"
NAMES = ["ve_ncsnpp_continuous", "vp_ddpmpp_continuous", "subvp_ddpmpp_continuous"]
REL_TOL = 1e-5


def fixture_dir(name: str):
    path = FIXTURES / name
    if not (path / "checkpoint.pth").is_file():
        pytest.fail(
            f"official fixture {name!r} missing: expected {path}/checkpoint.pth, config.json, io.pt "
            f"(the reference fixtures belong in ../shared/fixtures/official_score_sde/, see its README)"
        )
    return path


def load_io(name: str) -> dict:
    return torch.load(fixture_dir(name) / "io.pt", weights_only=True)


def close_to_max(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL_TOL) -> float:
    err = ((actual - expected).abs().max() / expected.abs().max()).item()
    assert err < rel, f"max error {err:.3g} of max |value| exceeds {rel}"
    return err


CASES = [(n, e) for n in NAMES for e in (False, True)]


@pytest.fixture(scope="module", params=CASES, ids=lambda p: f"{p[0]}-{'ema' if p[1] else 'model'}")
def loaded(request):
    name, use_ema = request.param
    path = fixture_dir(name)
    model = load_official_checkpoint(path / "checkpoint.pth", path / "config.json", use_ema=use_ema)
    return name, use_ema, model, load_io(name)


def test_network_output_matches_reference(loaded):
    _, use_ema, model, io = loaded
    tag = "ema" if use_ema else "model"
    sm = model.score_model  # the reference's 2x - 1 input and 1 / sigma output live in the preconditioning layer
    with torch.no_grad():
        out = model.net(io["x"] if sm.centered else 2 * io["x"] - 1, io["labels"])
        if sm.scale_by_sigma:  # the reference VE network divides by its label sigma(t)
            out = out / io["labels"][:, None, None, None]
    close_to_max(out, io[f"net_out_{tag}"])


def test_labels_match_reference(loaded):
    _, _, model, io = loaded
    torch.testing.assert_close(model.score_model.noise_label(io["t"]), io["labels"], rtol=1e-6, atol=0)


def test_scores_match_reference(loaded):
    name, use_ema, model, io = loaded
    tag = "ema" if use_ema else "model"
    with torch.no_grad():
        score = model.score_model(io["x"], io["t"])
        raw = model.score_model.raw(io["x"], io["t"])
    ref = io[f"score_{tag}"]
    if name.startswith("ve"):
        close_to_max(score, ref)
        return
    # t > 1e-5: the exact std and the reference float32 std agree to < 3e-7.
    close_to_max(score[1:], ref[1:])
    # t = 1e-5: the network part against the reference's own std, and loosely against the stored score.
    close_to_max(-raw[:1] / io["std"][0], ref[:1])
    close_to_max(score[:1], ref[:1], rel=0.05 if name.startswith("vp") else 0.1)


def test_dsm_loss_matches_reference(loaded):
    """Reference DSM loss (Song et al. 2021, Eq. 7, lambda = sigma^2) from its own draws ``loss_t``, ``loss_z``."""
    name, use_ema, model, io = loaded
    sde, t, z, x = model.sde, io["loss_t"], io["loss_z"], io["x"]
    mean, std = sde.marginal_prob(x, t)
    perturbed = mean + std[:, None, None, None] * z
    close_to_max(perturbed, io["loss_perturbed_x"])
    with torch.no_grad():
        score = model.score_model(perturbed, t)
    per_elem = (score * std[:, None, None, None] + z) ** 2
    per_example = per_elem.flatten(1).mean(1) if io["reduce_mean"] else 0.5 * per_elem.flatten(1).sum(1)
    tag = "ema" if use_ema else "model"
    torch.testing.assert_close(per_example, io[f"loss_per_example_{tag}"], rtol=1e-5, atol=0)
    torch.testing.assert_close(per_example.mean(), torch.as_tensor(io[f"loss_{tag}"]), rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_and_metadata(name):
    io, path = load_io(name), fixture_dir(name)
    model = load_official_checkpoint(path / "checkpoint.pth", path / "config.json")
    params = list(model.net.parameters())
    assert sum(p.numel() for p in params) == io["param_count"]
    assert sum(p.numel() for p in params if p.requires_grad) == io["trainable_param_count"]
    assert sum(p.requires_grad for p in params) == io["ema_shadow_count"]
    assert model.step == io["step"] == 12345
    assert model.centered == (not name.startswith("ve"))
    assert not model.net.training


def test_mismatched_checkpoint_lists_missing_and_unexpected_keys():
    ve, vp = fixture_dir(NAMES[0]), fixture_dir(NAMES[1])
    with pytest.raises(CheckpointMismatchError) as info:
        load_official_checkpoint(ve / "checkpoint.pth", vp / "config.json")
    msg = str(info.value)
    assert "missing keys" in msg and "unexpected keys" in msg
    assert "all_modules.0.W" in msg  # the Fourier W has no place in DDPM++
    assert info.value.unexpected and (info.value.missing or info.value.mismatched)


def test_dropped_and_extra_keys_are_reported():
    path = fixture_dir(NAMES[1])
    state = torch.load(path / "checkpoint.pth", weights_only=True)["model"]
    net = NCSNpp(**net_kwargs_from_config(path / "config.json"))
    broken = dict(state)
    broken.pop("module.all_modules.3.GroupNorm_0.weight")
    broken["module.all_modules.999.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(net, broken)
    assert info.value.unexpected == ["all_modules.999.weight"]
    assert len(info.value.missing) == 1 and info.value.missing[0].endswith("norm_0.weight")
    # Without the DataParallel prefix the same state dict loads.
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    net.load_state_dict(convert_state_dict(net, plain), strict=True)


@pytest.mark.parametrize(
    "progressive,progressive_input",
    list(itertools.product(("none", "output_skip", "residual"), ("none", "input_skip", "residual"))),
)
def test_module_order_holds_every_parameter_once(progressive, progressive_input):
    """The reference's flat module list, as ``official_module_order`` maps it, holds every parameter of the network
    exactly once (the class-label embedding, which the reference lacks, aside); the parameter-free pyramid
    resamplers of output_skip / input_skip, kept outside all_modules by the reference, take no index, while the
    residual pyramids' resampling convolutions do (one per level above the lowest resolution: 2 of 3 here)."""
    net = NCSNpp((3, 8, 8), nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,),
                 progressive=progressive, progressive_input=progressive_input, num_classes=3)  # fmt: skip
    order = official_module_order(net)
    assert len(set(order)) == len(order)
    held = [id(p) for path in order for p in net.get_submodule(path).parameters()]
    assert len(held) == len(set(held))
    assert set(held) == {id(p) for name, p in net.named_parameters() if not name.startswith("label_embed.")}
    assert sum(p.endswith(".pyramid_up") for p in order) == (2 if progressive == "residual" else 0)
    assert sum(p.endswith(".pyramid_down") for p in order) == (2 if progressive_input == "residual" else 0)
    assert sum(p.endswith(".pyramid_combine") for p in order) == (2 if progressive_input == "input_skip" else 0)


def test_config_with_other_noise_levels_is_rejected(tmp_path):
    """The checkpoint's ``sigmas`` buffer pins sigma_min / sigma_max / num_scales of the config it was trained with."""
    path = fixture_dir(NAMES[0])
    cfg = resolve_config(path / "config.json")
    cfg["model"]["sigma_max"] = 348.0
    with pytest.raises(CheckpointMismatchError, match="sigma_max=348"):
        load_official_checkpoint(path / "checkpoint.pth", cfg)


def test_ema_list_of_wrong_length_is_an_error():
    path = fixture_dir(NAMES[0])
    ckpt = torch.load(path / "checkpoint.pth", weights_only=True)
    net = NCSNpp(**net_kwargs_from_config(path / "config.json"))
    with pytest.raises(CheckpointMismatchError, match="shadow_params"):
        convert_state_dict(net, ckpt["model"], ckpt["ema"]["shadow_params"][:-1])


def test_bad_paths_and_missing_ema(tmp_path):
    cfg = fixture_dir(NAMES[0]) / "config.json"
    with pytest.raises(FileNotFoundError, match="no reference checkpoint"):
        load_official_checkpoint(tmp_path / "nope.pth", cfg)
    with pytest.raises(FileNotFoundError, match="published config"):
        resolve_config(tmp_path / "nope.json")
    ckpt = torch.load(fixture_dir(NAMES[0]) / "checkpoint.pth", weights_only=True)
    torch.save({"model": ckpt["model"], "step": 1}, tmp_path / "no_ema.pth")
    with pytest.raises(ValueError, match="use_ema=False"):
        load_official_checkpoint(tmp_path / "no_ema.pth", cfg)
    assert load_official_checkpoint(tmp_path / "no_ema.pth", cfg, use_ema=False).step == 1


@pytest.mark.parametrize("name", NAMES[:2])
def test_loaded_model_drives_a_reverse_diffusion(name):
    """End to end: prior sample -> a few reverse-diffusion steps (Song et al. 2021, Eq. 46) -> images in [0, 1]."""
    path = fixture_dir(name)
    model = load_official_checkpoint(path / "checkpoint.pth", path / "config.json")
    rsde = model.sde.reverse(model.score_model)
    steps, eps = 4, 1e-3

    def sample(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        x = model.sde.prior_sampling((2, *model.data_shape), generator=gen)
        times = torch.linspace(model.sde.T, eps, steps)
        with torch.no_grad():
            for i, t in enumerate(times):
                dt = times[i] - times[i + 1] if i + 1 < steps else t - 0.0
                f, g = rsde.discretize(x, t.expand(2), dt)
                x = x - f + g[:, None, None, None] * torch.randn(x.shape, generator=gen)
        return x

    x = sample(0)
    assert x.shape == (2, 3, 16, 16) and torch.isfinite(x).all()
    torch.testing.assert_close(sample(0), x, rtol=0, atol=0)
    img = model.to_unit_interval(x)
    assert img.min() >= 0 and img.max() <= 1


def test_missing_fixtures_fail_loudly_naming_their_place():
    with pytest.raises(pytest.fail.Exception, match="shared/fixtures/official_score_sde"):
        fixture_dir("no_such_fixture")
