"""Forward SDEs with the reference code's interface (Song et al., ICLR 2021)."""

from scoresde.sde.base import SDE, LinearReverseSDE, LinearSDE, ReverseSDE, ScoreFn
from scoresde.sde.discrete import DiscreteVPSDE
from scoresde.sde.edm import EDMSDE
from scoresde.sde.ve import VESDE
from scoresde.sde.vp import VPSDE, CosineVPSDE, SubVPSDE

__all__ = [
    "SDE",
    "LinearSDE",
    "LinearReverseSDE",
    "ReverseSDE",
    "ScoreFn",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "CosineVPSDE",
    "EDMSDE",
    "DiscreteVPSDE",
]
