"""Class-conditional MLP and NCSN++: label embedding with a null label, backward compatible when unconditional."""

from __future__ import annotations

import pytest
import torch

from scoresde.guidance import cfg_score_fn
from scoresde.nets import MLP, NCSNpp
from scoresde.score import ScoreModel
from scoresde.sde import VPSDE

SMALL_NCSNPP = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0)


def _nets(num_classes):
    torch.manual_seed(0)
    return {
        "mlp": (MLP((2,), hidden=32, depth=2, embed_dim=16, num_classes=num_classes), (4, 2)),
        "ncsnpp": (NCSNpp((1, 8, 8), **SMALL_NCSNPP, num_classes=num_classes).eval(), (4, 1, 8, 8)),
    }


def _randomize(net):
    """Non-zero weights everywhere (the output layers and the label table start at zero)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return net


@pytest.mark.parametrize("kind", ["mlp", "ncsnpp"])
def test_fresh_conditional_net_equals_unconditional_and_labels_act_per_sample(kind):
    net, shape = _nets(3)[kind]
    base, _ = _nets(None)[kind]
    assert not any("label" in k for k in base.state_dict())  # unconditional checkpoints keep their keys
    base.load_state_dict({k: v for k, v in net.state_dict().items() if "label" not in k}, strict=True)
    x, label = torch.rand(shape), torch.tensor([0.3, 0.5, 0.7, 0.9])
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        # zero-initialised label table: every label (and none) gives the unconditional output
        torch.testing.assert_close(net(x, label, y), base(x, label), rtol=0, atol=0)
        _randomize(net)
        out = net(x, label, y)
        torch.testing.assert_close(net(x, label), net(x, label, torch.full((4,), 3)), rtol=0, atol=0)
        for k in range(3):  # each row depends on its own label only
            alone = net(x, label, torch.full((4,), k))
            torch.testing.assert_close(out[k], alone[k])
            assert (alone[3] - out[3]).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["mlp", "ncsnpp"])
def test_score_model_forwards_labels_and_cfg_batches_one_call(kind):
    net, shape = _nets(3)[kind]
    _randomize(net)
    model = ScoreModel(net, VPSDE(), "eps", time_scale=999)
    x, t = torch.rand(shape), torch.full((shape[0],), 0.4)
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        guided = cfg_score_fn(model, 1, 2.0)(x, t)
        assert len(calls) == 1
        cond, uncond = model(x, t, y=torch.ones(shape[0], dtype=torch.long)), model(x, t)
    torch.testing.assert_close(guided, 3 * cond - 2 * uncond, rtol=1e-5, atol=1e-5)


def test_labels_get_gradients():
    net, shape = _nets(3)["mlp"]
    _randomize(net)
    net(torch.rand(shape), torch.rand(4), torch.tensor([0, 0, 1, 3])).square().sum().backward()
    grad = net.label_embed.table.weight.grad
    assert grad[[0, 1, 3]].abs().sum(1).gt(0).all() and grad[2].abs().sum() == 0


def test_bad_labels_are_rejected():
    cond, shape = _nets(3)["mlp"]
    base, _ = _nets(None)["mlp"]
    x, label = torch.rand(shape), torch.rand(4)
    with pytest.raises(ValueError, match="without num_classes"):
        base(x, label, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\]"):
        cond(x, label, torch.tensor([0, 1, 2, 4]))
    with pytest.raises(ValueError, match="integers"):
        cond(x, label, torch.zeros(4))
    with pytest.raises(ValueError, match="conditional=True"):
        NCSNpp((1, 8, 8), **SMALL_NCSNPP, conditional=False, num_classes=3)
