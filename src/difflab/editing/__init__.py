"""Editing with a trained model: inpainting, image-to-image, super-resolution, inversion, interpolation.

    import difflab as dl
    run = dl.load("runs/mnist")
    mask = dl.editing.parse_mask("half:bottom", (28, 28))
    filled = dl.editing.inpaint(run.ema_model, run.proc, images, mask, "ddpm", 100, resample=5, jump_length=5)
    edited = dl.editing.img2img(run.ema_model, run.proc, images, strength=0.5)
    strip = dl.editing.interpolate(run.ema_model, run.proc, images[0], images[1], frames=8)
    sr = dl.load("runs/mnist_superres")
    high = dl.editing.upscale(sr.ema_model, sr.proc, low)          # 14x14 -> 28x28

One concept per module: :mod:`.masks`, :mod:`.inpaint` (replacement and RePaint),
:mod:`.img2img` (SDEdit), :mod:`.superres` (low-res conditioned models, their loss, sampling),
:mod:`.interpolate` (inversion round trip, slerp), :mod:`.io` (PNG in and out for the CLI),
:mod:`.reconstruction` (reconstruction-guided sampling, ``inpaint(reconstruction_guidance=w_r)``).
"""

from .img2img import img2img, sdedit_sigmas
from .inpaint import STEPWISE_SAMPLERS, inpaint, paste, repaint_schedule
from .interpolate import interpolate, reconstruct, slerp
from .io import load_images, save_images
from .masks import (across_frames, between_frames_mask, box_mask, check_mask, frames_mask, future_frames_mask,
                    half_mask, load_mask, parse_clip_mask, parse_mask)
from .superres import (LowResConditioned, SuperResLoss, WithLowRes, downsample, lowres_model, train_superres,
                       upsample, upscale)

__all__ = [
    "inpaint", "repaint_schedule", "paste", "STEPWISE_SAMPLERS",
    "img2img", "sdedit_sigmas",
    "upscale", "LowResConditioned", "WithLowRes", "SuperResLoss", "train_superres", "downsample", "upsample",
    "lowres_model",
    "interpolate", "reconstruct", "slerp",
    "box_mask", "half_mask", "parse_mask", "load_mask", "check_mask",
    "frames_mask", "future_frames_mask", "between_frames_mask", "across_frames", "parse_clip_mask",
    "load_images", "save_images",
]
