"""NCSN++ / DDPM++ options the shared fixtures do not cover, against the reference implementation.

``tests/fixtures/reference_ncsnpp_options.pt`` was produced by the unmodified reference (score_sde_pytorch at
cb1f359, CPU) with ``tests/fixtures/make_reference_ncsnpp.py``: per case a reference config, the reference
``state_dict`` layout, an input, labels and the reference output. The weights are the deterministic ``fill`` of the
generator, rebuilt here, so a case is: rebuild the reference state dict, load it through our official-checkpoint
converter (the path a released CelebA-HQ / FFHQ checkpoint takes), run our network, compare with the reference
output to 1e-5 of its largest value (the shared fixtures' README measures ~1e-6 between thread counts).
The reference's input map ``2 x - 1`` (``data.centered=False``) and its division by the noise level
(``scale_by_sigma``) are applied around our network here, as the preconditioning layer does for loaded checkpoints.

The output-pyramid algebra (``progressive=output_skip``) is also checked on its own, so that a wrong scaling of the
pyramid fails even where no reference checkpoint can be loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from scoresde.nets.ncsnpp import NCSNpp
from scoresde.nets.official import convert_state_dict, net_kwargs_from_config, official_module_order
from tests.fixtures.make_reference_ncsnpp import fill

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "reference_ncsnpp_options.pt"
CASES = {c["name"]: c for c in torch.load(FIXTURE, weights_only=True)["cases"]}


def _reference_sigma(cfg: dict, labels: torch.Tensor) -> torch.Tensor:
    """The noise level the reference divides by with ``scale_by_sigma``: the label itself for Fourier features, else
    its geometric level ``exp(linspace(log sigma_max, log sigma_min, num_scales))[label]`` (reference
    ``models/utils.get_sigmas``, indexed with ``label.long()``)."""
    model = cfg["model"]
    if model["embedding_type"] == "fourier":
        return labels.double()
    log_sigmas = torch.linspace(math.log(model["sigma_max"]), math.log(model["sigma_min"]), model["num_scales"],
                                dtype=torch.float64)  # fmt: skip
    return log_sigmas.exp()[labels.long()]


@pytest.mark.parametrize("name", sorted(CASES))
def test_option_combination_matches_reference(name):
    case = CASES[name]
    cfg = json.loads(case["config"])
    net = NCSNpp(**net_kwargs_from_config(cfg)).eval()
    state = {k: fill(i, s) for i, (k, s) in enumerate(zip(case["keys"], case["shapes"], strict=True))}
    net.load_state_dict(convert_state_dict(net, state), strict=True)
    # every reference index has its module: the last one (a conv with parameters in every case) ends our order
    assert 1 + max(int(k.split(".")[1]) for k in case["keys"]) == len(official_module_order(net))
    x = case["x"] if cfg["data"]["centered"] else 2 * case["x"] - 1
    with torch.no_grad():
        out = net(x, case["labels"]).double()
    if cfg["model"]["scale_by_sigma"]:
        out = out / _reference_sigma(cfg, case["labels"])[:, None, None, None]
    err = float((out - case["out"].double()).abs().max() / case["out"].abs().max())
    assert err < 1e-5, f"{name}: max error {err:.3g} of max |value|"


def test_fixture_covers_the_options():
    """Between the shared fixtures (progressive none; input none / residual) and these cases, every value of
    ``progressive``, ``progressive_input``, ``progressive_combine``, ``resblock_type``, ``embedding_type``, ``fir``,
    ``skip_rescale``, ``resamp_with_conv``, ``scale_by_sigma`` and the data centring is run through the reference,
    except ``progressive=residual``: its pyramid upsamples with a convolution, and both of the reference's paths for
    that (FIR ``upsample_conv_2d``, non-FIR ``F.interpolate``) raise under current PyTorch."""
    seen: dict[str, set] = {}
    for case in CASES.values():
        cfg = json.loads(case["config"])
        for k in ("progressive", "progressive_input", "progressive_combine", "resblock_type", "embedding_type", "fir",
                  "skip_rescale", "resamp_with_conv", "scale_by_sigma"):  # fmt: skip
            seen.setdefault(k, set()).add(cfg["model"][k])
        seen.setdefault("centered", set()).add(cfg["data"]["centered"])
    assert seen["progressive"] >= {"output_skip"} and seen["progressive_input"] >= {"input_skip", "residual"}
    assert seen["progressive_combine"] == {"sum", "cat"} and seen["resblock_type"] == {"ddpm", "biggan"}
    for k in ("fir", "skip_rescale", "resamp_with_conv", "scale_by_sigma", "centered"):
        assert seen[k] == {True, False}, k
    assert seen["embedding_type"] == {"fourier", "positional"}


@pytest.mark.parametrize("skip_rescale", [True, False])
def test_output_skip_pyramid_algebra(skip_rescale):
    """The reference's output pyramid: at the lowest resolution ``p = conv(act(norm(h)))``; above it
    ``p = up(p) + conv(act(norm(h)))`` with no rescaling (``skip_rescale`` only applies to the residual pyramid); the
    network's output is the final ``p`` (no ``conv_out``; the division by sigma belongs to the preconditioning layer).
    Recomputed from the activations entering each level's pyramid head (random weights, float64)."""
    torch.manual_seed(0)
    net = NCSNpp((3, 8, 8), nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,),
                 progressive="output_skip", progressive_input="input_skip", skip_rescale=skip_rescale,
                 embedding_type="fourier", dropout=0.0).double().eval()  # fmt: skip
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert not hasattr(net, "conv_out")
    heads = []
    hooks = [level.pyramid_norm.register_forward_hook(lambda m, i, o, k=k: heads.append((k, i[0]))) for k, level in
             enumerate(net.up)]  # fmt: skip
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.3, 7.0], dtype=torch.float64)
    with torch.no_grad():
        out = net(x, sigma)
        for h in hooks:
            h.remove()
        assert [k for k, _ in heads] == list(range(len(net.up)))
        pyramid = None
        for k, h in heads:
            level = net.up[k]
            head = level.pyramid_conv(F.silu(level.pyramid_norm(h)))
            pyramid = head if pyramid is None else _fir_upsample(pyramid) + head
    torch.testing.assert_close(out, pyramid, rtol=1e-10, atol=1e-10)


def _fir_upsample(x: torch.Tensor) -> torch.Tensor:
    """2x FIR upsampling with the kernel (1, 3, 3, 1) (StyleGAN2's upsample_2d, gain 1): insert zeros, pad (2, 1),
    filter with the separable kernel normalised to sum 4 (= factor^2)."""
    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=x.dtype)
    k = torch.outer(k1, k1)
    k = k / k.sum() * 4
    b, c, h, w = x.shape
    up = torch.zeros(b, c, 2 * h, 2 * w, dtype=x.dtype)
    up[:, :, ::2, ::2] = x
    up = F.pad(up, (2, 1, 2, 1))
    weight = k.flip(0, 1)[None, None].expand(c, 1, 4, 4)
    out = F.conv2d(up, weight, groups=c)
    assert out.shape[-1] == 2 * w and math.isclose(float(k.sum()), 4.0)
    return out
