"""Latent diffusion (Rombach et al. 2022): what a run's network, its sampler and its editing
functions need to work on the latents of a KL autoencoder (``models.AutoencoderKL``).

A latent run trains its network on s (z - shift), z ~ q(z | x) of its training images
(training/latent_data.py), so everything that samples is unchanged and runs in latent space
(``dl.sample`` makes latents: it is a function of the model); what turns its output into images
is the autoencoder's decoder:

    images = clamp(decode(latents / s + shift), -1, 1)            (:func:`decode_latents`)
    latents = s (z - shift),  z = mean of q(z | x), or a draw      (:func:`encode_images`)

The decoded images are clamped to the data's range [-1, 1]: pixel-space samplers clip their x0
estimates there, and the decoder's output may overshoot it slightly; latents are never clipped
(their range is the autoencoder's, as in Stable Diffusion).

A run carries its autoencoder: training copies the autoencoder's run folder (config and
weights) into ``RUN/autoencoder`` (:data:`AUTOENCODER_FOLDER`), and ``dl.load(RUN)`` decodes with
that copy (:func:`autoencoder_folder`), so the run folder alone samples after the original
autoencoder moved or changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from ..models.autoencoder import AutoencoderKL
from ..samplers.base import randn

__all__ = ["AUTOENCODER_FOLDER", "autoencoder_folder", "check_autoencoder", "check_latent_channels",
           "check_latent_shape", "latent_channels_of", "decode_latents", "encode_images", "CODEC_BATCH"]

AUTOENCODER_FOLDER = "autoencoder"  # RUN/autoencoder: the run's own copy of its autoencoder's run folder
CODEC_BATCH = 256  # images encoded or latents decoded per call (the draws do not depend on it: one stream)


def autoencoder_folder(checkpoint: Path, named: Optional[str] = None) -> Path:
    """``RUN/autoencoder`` of the latent run whose checkpoint folder is ``checkpoint``
    (RUN/checkpoints/step_N); FileNotFoundError naming the missing folder and the fix when it is
    not there. ``named``: the config's ``latent.autoencoder`` (the folder the run was trained from),
    for the message."""
    checkpoint = Path(checkpoint)
    run = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    folder = run / AUTOENCODER_FOLDER
    if not folder.is_dir():
        source = f" (it was trained from {named!r}: `cp -r {named} {folder}` if that is still the same run)" \
            if named else ""
        raise FileNotFoundError(
            f"{str(checkpoint)!r} is a latent diffusion model, and its autoencoder {str(folder)!r} is missing: the "
            f"model makes latents, which only that autoencoder turns into images. Copy the autoencoder's run "
            f"folder there{source}, or load the whole run folder this checkpoint came from")
    return folder


def check_autoencoder(model: nn.Module, where: str) -> AutoencoderKL:
    """``model`` when it is an :class:`AutoencoderKL` whose latent scale factor was measured; else
    ValueError naming ``where`` (the folder it came from) and the fix."""
    if not isinstance(model, AutoencoderKL):
        raise ValueError(
            f"{where} holds a {type(model).__name__} model, not an autoencoder: latent diffusion needs the run "
            "folder of `difflab train-autoencoder --config configs/mnist_vae.yaml --out DIR` (or a Stable Diffusion "
            "VAE written as a run by difflab.training.diffusers_vae.autoencoder_run_from_diffusers)")
    if not float(model.scaling_factor) > 0:
        raise ValueError(
            f"the autoencoder of {where} has no latent scale factor (scaling_factor = 0: never measured), so its "
            "latents have no known scale for the diffusion process; `difflab train-autoencoder` measures it after "
            "its last step: finish the run (difflab train-autoencoder --out DIR --resume), or measure it with "
            "difflab.training.autoencoder.measure_scale_factor")
    return model


def latent_channels_of(model: nn.Module) -> Optional[int]:
    """The input channels of a diffusion network (through the wrappers EDMPrecond and
    ConsistencyModel, whose network is ``.net``), or None for one without (an MLP)."""
    while getattr(model, "in_channels", None) is None and isinstance(getattr(model, "net", None), nn.Module):
        model = model.net
    channels = getattr(model, "in_channels", None)
    return int(channels) if isinstance(channels, int) else None


def check_latent_channels(model: nn.Module, autoencoder: AutoencoderKL, where: str,
                          model_name: str = "the model") -> None:
    """The network takes as many channels as the autoencoder's latents have; else ValueError
    naming both and the fix."""
    channels = latent_channels_of(model)
    c = autoencoder.latent_channels
    if channels is not None and channels != c:
        raise ValueError(
            f"{model_name} takes {channels} input channels but the autoencoder {where} makes latents of {c} channels "
            f"({c} x h/{autoencoder.downsample_factor} x w/{autoencoder.downsample_factor}), which the model must "
            f"take and predict: set model.kwargs.in_channels: {c} (and out_channels, if the model names it), or "
            "name an autoencoder of that many latent channels in latent.autoencoder")


def check_latent_shape(autoencoder: AutoencoderKL, image_shape, sample_shape, where: str) -> None:
    """A loaded latent run's autoencoder maps its images [C, H, W] to latents of the shape its
    network was trained on; else ValueError naming both shapes (another autoencoder was put in
    ``RUN/autoencoder``)."""
    try:
        made = tuple(autoencoder.latent_shape(tuple(image_shape)))
    except ValueError:
        made = None
    if made != tuple(sample_shape):
        raise ValueError(
            f"the autoencoder {where} makes latents of shape {made} from the run's images {tuple(image_shape)}, "
            f"and the model was trained on latents {tuple(sample_shape)}: it is not the autoencoder the run was "
            "trained with. Restore the run's own copy (the autoencoder run folder it was trained from)")


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(module.parameters())
    return p.device, p.dtype


@torch.no_grad()
def encode_images(autoencoder: AutoencoderKL, images: Tensor, *, sample: bool = False,
                  generator: Optional[torch.Generator] = None, batch_size: int = CODEC_BATCH) -> Tensor:
    """The diffusion latents of ``images`` [B, C, H, W] in [-1, 1]: s (z - shift), z the mean of
    q(z | x) (``sample=False``) or a draw mean + std eps, eps from ``generator`` (drawn on its
    device and moved, so a CPU generator gives the same latents on any device; one stream over
    the batches). Computed in ``batch_size`` images at a time on the autoencoder's device, in its
    dtype; returned there."""
    device, dtype = _device_dtype(autoencoder)
    if not sample:  # the model's own s (mean - shift)
        return torch.cat([autoencoder.encode_latents(images[i:i + batch_size].to(device, dtype), sample=False)
                          for i in range(0, len(images), batch_size)])
    # a draw: eps from the generator on its own device (AutoencoderKL.encode_latents draws on the
    # model's, which a CPU generator cannot serve on a GPU, and the cache must not depend on it)
    s, shift = autoencoder.latent_scale, autoencoder.shift_factor
    out = []
    for i in range(0, len(images), batch_size):
        q = autoencoder.encode(images[i:i + batch_size].to(device, dtype))
        out.append((q.mean + q.std * randn(q.mean.shape, generator, device, q.mean.dtype) - shift) * s)
    return torch.cat(out)


@torch.no_grad()
def decode_latents(autoencoder: AutoencoderKL, latents: Tensor, batch_size: int = CODEC_BATCH) -> Tensor:
    """The images [B, C, H, W] of diffusion latents [B, c, h, w]: decode(latents / s + shift),
    clamped to [-1, 1] (the data's range, where pixel-space samplers clip), computed on the
    autoencoder's device in ``batch_size`` latents at a time and returned on the latents' device
    in their dtype."""
    if not isinstance(latents, Tensor) or latents.ndim != 4 or latents.shape[1] != autoencoder.latent_channels:
        got = tuple(latents.shape) if isinstance(latents, Tensor) else type(latents).__name__
        raise ValueError(f"the autoencoder decodes latents [B, {autoencoder.latent_channels}, h, w], got {got}: "
                         "the diffusion model's samples are not this autoencoder's latents")
    device, dtype = _device_dtype(autoencoder)
    out = [autoencoder.decode_latents(latents[i:i + batch_size].to(device, dtype)).clamp(-1.0, 1.0)
           for i in range(0, len(latents), batch_size)]
    return torch.cat(out).to(latents.device, latents.dtype)
