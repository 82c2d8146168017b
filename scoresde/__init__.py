"""scoresde: continuous-time score-based generative modeling with SDEs (Song et al., ICLR 2021)."""

__version__ = "0.1.0"
