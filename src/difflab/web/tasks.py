"""What each kind of request runs: sampling, inpainting and image-to-image, as jobs for the
queue (:mod:`.jobs`), each reporting its steps and, every few steps, the denoised estimate.

The calls are the library's own (``LoadedRun.sample``, :func:`difflab.editing.inpaint`,
:func:`difflab.editing.img2img`) with the request's seed, so the page's images are the ones
``difflab sample`` / ``dl.load(run).sample(n, ..., seed=seed)`` give for the same settings.
A clip model's samples [T, C, H, W] come back as GIFs, their previews as a PNG of every frame.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..editing import img2img, inpaint, repaint_schedule, sdedit_sigmas
from ..samplers import SAMPLERS, sampler_sigmas
from ..samplers.timesteps import default_spacing
from ..training.latent import decode_latents
from .images import clip_grid_png, to_gif, to_png
from .jobs import Progress
from .params import SampleParams

__all__ = ["PREVIEWS", "generate_task", "inpaint_task", "img2img_task", "Task"]

# About this many previews of the denoised estimate per job: enough to watch the image form,
# few enough that encoding them costs nothing next to the network (a PNG of a grid per preview).
PREVIEWS = 10

Task = tuple  # (work: Callable[[Progress], list[bytes]], total steps, info for the page)


def _reporter(progress: Progress, image_shape, total: int, autoencoder=None) -> Callable[[dict], None]:
    """The sampler's per-step callback: the step reached, and a PNG grid of the denoised
    estimates x0_hat every ``total // PREVIEWS`` steps (and at the last): images in a row, clips
    a row each; a latent run's estimates decoded by its ``autoencoder``."""
    every = max(1, total // PREVIEWS)
    count = 0

    def report(step: dict) -> None:
        nonlocal count
        count += 1
        preview = None
        if count % every == 0 or count >= total:
            x0 = step["denoised"].detach().float().cpu()
            if autoencoder is not None:
                x0 = decode_latents(autoencoder, x0)
            x0 = x0.reshape(x0.shape[0], *image_shape)
            preview = clip_grid_png(x0) if x0.ndim == 5 else to_png(x0)
        progress(count, preview)

    return report


def _labels(p: SampleParams) -> Optional[Tensor]:
    return None if p.label is None else torch.full((p.n,), p.label, dtype=torch.long)


def _pngs(x: Tensor, image_shape) -> list:
    """One file per sample: a PNG per image, a GIF per clip."""
    x = x.detach().float().cpu().reshape(x.shape[0], *image_shape)
    encode = to_gif if x.ndim == 5 else to_png
    return [encode(x[i:i + 1]) for i in range(len(x))]


def _info(p: SampleParams, kind: str) -> dict:
    info = {"kind": kind, "model": p.model.id, "label": p.label, "sampler": p.sampler, "steps": p.steps,
            "guidance": p.guidance, "seed": p.seed, "n": p.n,
            "media": "image/gif" if p.model.kind == "clip" else "image/png"}
    if kind == "img2img":
        info["strength"] = p.strength
    if kind == "inpaint":
        info.update(resample=p.resample, jump=p.jump)
    return info


def generate_task(p: SampleParams) -> Task:
    """``p.n`` samples from one seed, as ``run.sample(n, sampler, steps, guidance, label, seed, eta=eta)``."""
    run = p.model.run
    total = len(sampler_sigmas(run.proc, SAMPLERS[p.sampler], p.steps)) - 1

    def work(progress: Progress) -> list:
        x = run.sample(p.n, p.sampler, p.steps, p.guidance, p.label, p.seed, eta=p.eta, device=p.model.device,
                       callback=_reporter(progress, run.image_shape, total, run.autoencoder))
        return _pngs(x, run.image_shape)

    return work, total, _info(p, "generate")


def _batch(p: SampleParams, image: Tensor) -> Tensor:
    """The image [1, C, H, W] repeated n times, in the network's sample shape (a latent run's
    editing functions take images: its autoencoder encodes them)."""
    run = p.model.run
    shape = run.image_shape if run.autoencoder is not None else run.sample_shape
    return image.expand(p.n, *image.shape[1:]).reshape(p.n, *shape).contiguous()


def inpaint_task(p: SampleParams, image: Tensor, mask: Tensor) -> Task:
    """``p.n`` fillings of ``mask`` (1 = fill) in ``image`` [1, C, H, W] by
    :func:`difflab.editing.inpaint` (RePaint when ``p.resample`` > 1), seeded with ``p.seed``."""
    run = p.model.run
    jump = p.jump if p.resample > 1 else 1
    path = repaint_schedule(p.steps, jump, p.resample)
    total = sum(b == a + 1 for a, b in zip(path[:-1], path[1:]))  # the steps down, each a network call
    options = {"eta": p.eta} if p.sampler == "ddim" else {}

    def work(progress: Progress) -> list:
        x = _batch(p, image)
        m = _batch(p, mask.expand_as(image))
        g = torch.Generator().manual_seed(p.seed)
        y = inpaint(run.ema_model, run.proc, x, m, p.sampler, p.steps, jump_length=jump, resample=p.resample,
                    cond=_labels(p), guidance=p.guidance, generator=g,
                    callback=_reporter(progress, run.image_shape, total, run.autoencoder),
                    autoencoder=run.autoencoder, **options)
        return _pngs(y, run.image_shape)

    return work, total, _info(p, "inpaint")


def img2img_task(p: SampleParams, image: Tensor) -> Task:
    """``p.n`` SDEdit results of ``image`` [1, C, H, W] at ``p.strength`` by
    :func:`difflab.editing.img2img`, seeded with ``p.seed``."""
    run = p.model.run
    spacing = default_spacing(run.proc, SAMPLERS[p.sampler].default_spacing)
    total = len(sdedit_sigmas(run.proc, p.strength, p.steps, spacing, p.sampler)) - 1

    def work(progress: Progress) -> list:
        g = torch.Generator().manual_seed(p.seed)
        y = img2img(run.ema_model, run.proc, _batch(p, image), p.strength, p.sampler, p.steps, eta=p.eta,
                    cond=_labels(p), guidance=p.guidance, generator=g,
                    callback=_reporter(progress, run.image_shape, total, run.autoencoder), autoencoder=run.autoencoder)
        return _pngs(y, run.image_shape)

    return work, total, _info(p, "img2img")
