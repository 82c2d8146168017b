"""Score networks. Every network is called as ``net(x, label)`` and built with a ``data_shape`` keyword."""

from scoresde.nets.dit import DiT
from scoresde.nets.mlp import MLP
from scoresde.nets.ncsnpp import NCSNpp
from scoresde.nets.official import OFFICIAL_CONFIGS, CheckpointMismatchError, OfficialModel, load_official_checkpoint
from scoresde.nets.superres import SuperResNet

__all__ = ["MLP", "NCSNpp", "OFFICIAL_CONFIGS", "CheckpointMismatchError", "OfficialModel", "load_official_checkpoint"]
__all__ += ["DiT", "SuperResNet"]
