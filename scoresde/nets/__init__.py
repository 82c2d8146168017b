"""Score networks. Every network is called as ``net(x, label)`` and built with a ``data_shape`` keyword."""

from scoresde.nets.mlp import MLP
from scoresde.nets.ncsnpp import NCSNpp

__all__ = ["MLP", "NCSNpp"]
