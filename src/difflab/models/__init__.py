"""Networks of the model convention: ``model(x_t, t[, cond])`` returns x_t's shape (API.md).

``build(name, **kwargs)`` makes one from a config (used by the trainer and checkpoints).
"""

from __future__ import annotations

from .analytic import GaussianDenoiser, GaussianMixtureDenoiser
from .autoencoder import AutoencoderKL, DiagonalGaussian, autoencoder_kl_mnist, autoencoder_kl_tiny
from .consistency import ConsistencyModel
from .dit import DiT, dit
from .dit import presets as _dit_presets
from .embeddings import GuidanceEmbedding, LabelEmbedding, SinusoidalEmbedding, TimestepEmbedding
from .masked import MaskConditioned, WithKnown
from .mlp import MLPDenoiser
from .noisy_classifier import AttentionPool, MixtureClassifier, NoisyClassifier
from .precond import EDMPrecond
from .registry import build, names, register
from .superres import LowResConditioned, WithLowRes
from .text import (HFTextEncoder, HFTokenizer, TextConditioned, TextEncoder, WordTokenizer, build_vocab,
                   hf_text_dit, hf_text_unet, text_dit, text_unet)
from .unet import UNet, unet_cifar10, unet_mnist, unet_tiny
from .video import VideoUNet, video_unet_mnist, video_unet_tiny

__all__ = [
    "MLPDenoiser",
    "UNet",
    "VideoUNet",
    "DiT",
    "dit",
    "EDMPrecond",
    "ConsistencyModel",
    "LowResConditioned",
    "WithLowRes",
    "MaskConditioned",
    "WithKnown",
    "GaussianMixtureDenoiser",
    "GaussianDenoiser",
    "NoisyClassifier",
    "MixtureClassifier",
    "AttentionPool",
    "AutoencoderKL",
    "DiagonalGaussian",
    "SinusoidalEmbedding",
    "TimestepEmbedding",
    "LabelEmbedding",
    "GuidanceEmbedding",
    "WordTokenizer",
    "TextEncoder",
    "TextConditioned",
    "HFTokenizer",
    "HFTextEncoder",
    "build_vocab",
    "text_unet",
    "text_dit",
    "hf_text_unet",
    "hf_text_dit",
    "build",
    "register",
    "names",
]

register("mlp", MLPDenoiser)
register("unet", UNet)
register("unet_mnist", unet_mnist)
register("unet_cifar10", unet_cifar10)
register("unet_tiny", unet_tiny)
register("superres", LowResConditioned)
register("masked", MaskConditioned)  # known data and a mask as extra inputs (models/masked.py)
register("video_unet", VideoUNet)
register("video_unet_tiny", video_unet_tiny)
register("video_unet_mnist", video_unet_mnist)
register("dit", DiT)
register("autoencoder_kl", AutoencoderKL)  # (not a denoiser: trained by difflab train-autoencoder)
register("autoencoder_kl_mnist", autoencoder_kl_mnist)
register("autoencoder_kl_tiny", autoencoder_kl_tiny)
register("text_unet", text_unet)  # prompts: token ids through a text encoder, cross-attended (models/text.py)
register("text_dit", text_dit)
register("hf_text_unet", hf_text_unet)  # a frozen CLIP / T5 text encoder from a local folder
register("hf_text_dit", hf_text_dit)
for _name, _factory in _dit_presets().items():
    register(_name, _factory)
