"""Latent diffusion (Rombach et al., CVPR 2022): a small KL-regularized convolutional autoencoder, its training and
latent scaling, safetensors files that are data only, and datasets encoded once into (cached) latents.

Score models are trained on ``encode_dataset(autoencoder, dataset)`` like on any other data; their samples are
decoded to images with ``autoencoder.decode(z)``.
"""

from scoresde.latent.autoencoder import Autoencoder
from scoresde.latent.cache import cache_path, encode_dataset
from scoresde.latent.io import load_autoencoder, save_autoencoder
from scoresde.latent.train import AutoencoderResult, fit_latent_scale, reconstruction_mse, train_autoencoder

__all__ = [
    "Autoencoder",
    "AutoencoderResult",
    "cache_path",
    "encode_dataset",
    "fit_latent_scale",
    "load_autoencoder",
    "reconstruction_mse",
    "save_autoencoder",
    "train_autoencoder",
]
