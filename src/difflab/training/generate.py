"""Drawing samples from a trained network: labels, seeds, shapes and image grids."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..data.grids import save_image_grid
from ..models.masked import WithKnown, masked_model
from ..processes import Process
from ..samplers import sample
from ..validation import is_int, model_attribute, positive_int
from .latent import decode_latents

__all__ = ["generate", "labels_for", "prompts_for", "split_prompt", "class_rows", "save_grid"]

Labels = Union[None, int, Sequence[int], Tensor]


def labels_for(labels: Labels, n: int, num_classes: Optional[int]) -> Optional[Tensor]:
    """A long tensor [n] of class labels from an int (all n alike), a sequence or a tensor."""
    if labels is None:
        return None
    if num_classes is None:
        raise ValueError("labels were given but the model is unconditional (trained without num_classes)")
    if isinstance(labels, (bool, str, bytes)) or not (is_int(labels) or isinstance(labels, (Sequence, Tensor,
                                                                                          np.ndarray))):
        digits = isinstance(labels, str) and labels.isdigit()
        hint = f" (the class index as a number: labels={int(labels)})" if digits else ""
        raise TypeError(f"labels must be an int, a sequence of ints or a long tensor, got "
                        f"{type(labels).__name__} {labels!r}{hint}")
    if is_int(labels):
        cond = torch.full((n,), int(labels), dtype=torch.long)
    else:
        try:
            cond = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):  # a sequence of strings, ragged lists, ...
            raise TypeError(f"labels must be an int, a sequence of ints or a long tensor, got {labels!r}") from None
        if cond.is_floating_point() or cond.shape != (n,):
            raise ValueError(f"labels must be {n} integers (one per sample), got shape {tuple(cond.shape)}")
        cond = cond.long().cpu()
    if (cond < 0).any() or (cond >= num_classes).any():
        raise ValueError(f"labels must lie in 0 .. {num_classes - 1}, got values in "
                         f"[{int(cond.min())}, {int(cond.max())}]")
    return cond


Prompts = Union[None, str, Sequence[str]]


COMPOSE = " AND "  # joins the parts of a composed prompt (Composable Diffusion's and the web UIs' syntax)


def prompts_for(prompts: Prompts, n: int, tokenizer, name: str = "prompts") -> Optional[Tensor]:
    """Token ids [n, max_length] of a text model from one prompt (all n alike) or n prompts.

    A prompt of parts joined by " AND " (upper case; "a 7 AND bold strokes AND on the left") is a
    composed prompt, whose parts' guidance directions add up (Liu et al. 2022; the samplers'
    :class:`~difflab.samplers.denoiser.Denoiser`): then the ids are [n, K, max_length], K the most
    parts of any prompt, a prompt of fewer parts padded with empty captions (rows of padding, which
    add nothing). Errors name the argument ``name``."""
    if prompts is None:
        return None
    if tokenizer is None:
        raise ValueError(f"{name} were given but the model takes no text (it has no tokenizer): sample it with "
                         "labels (a class-conditional model) or with neither")
    if isinstance(prompts, str):
        prompts = [prompts] * n
    if not isinstance(prompts, Sequence) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name} must be a string or a sequence of strings, got {prompts!r}"[:200])
    if len(prompts) != n:
        raise ValueError(f"{name} must be one string or {n} strings (one per sample), got {len(prompts)}")
    parts = [split_prompt(p) for p in prompts]
    K = max(len(ps) for ps in parts)
    if K == 1:
        return tokenizer.encode(list(prompts))
    ids = torch.zeros(n, K, int(tokenizer.max_length), dtype=torch.long)  # 0: padding, the empty caption
    said = [(i, k) for i, ps in enumerate(parts) for k in range(len(ps))]
    encoded = tokenizer.encode([parts[i][k] for i, k in said])
    for row, (i, k) in zip(encoded, said):
        ids[i, k] = row
    return ids


def split_prompt(prompt: str) -> list[str]:
    """The parts of a composed prompt ("a 7 AND bold" -> ["a 7", "bold"]); [prompt] when it has one."""
    if COMPOSE not in prompt:
        return [prompt]
    parts = [part.strip() for part in prompt.split(COMPOSE)]
    if not all(parts):
        raise ValueError(f"composed prompt {prompt!r} has an empty part: write parts joined by ' AND ', e.g. "
                         "'a 7 AND bold strokes'")
    return parts


def class_rows(num_classes: int, per_class: int) -> Tensor:
    """Labels 0,0,..,1,1,..: a grid with ``per_class`` columns has one row per class."""
    return torch.arange(num_classes).repeat_interleave(per_class)


@torch.no_grad()
def generate(
    model: nn.Module,
    proc: Process,
    n: int,
    sample_shape: Sequence[int],
    *,
    image_shape: Optional[Sequence[int]] = None,
    sampler: str = "ddim",
    steps: int = 50,
    guidance: float = 1.0,
    labels: Labels = None,
    seed: Optional[int] = None,
    eta: float = 0.0,
    device=None,
    progress: bool = False,
    prompts: Prompts = None,
    negative_prompts: Prompts = None,
    autoencoder: Optional[nn.Module] = None,
    **options,
) -> Tensor:
    """n samples [n, *image_shape] (or sample_shape) from ``model``, conditioned on class
    ``labels`` or, for a text model, ``prompts`` (one string, or n); the starting noise comes
    from a CPU generator seeded with ``seed``, so a seed gives the same noise on any device.
    ``proc`` may be any process: a sampler whose default spacing lies on the DDPM grid (ddim,
    ddpm) takes a continuous process's own (``samplers.timesteps.default_spacing``).
    ``negative_prompts`` (one string, or n; one part each): what guidance moves away from, in place
    of the empty caption (diffusers' ``negative_prompt``; needs guidance != 1); or ``negative_cond``,
    :func:`difflab.sample`'s keyword, for the condition itself (a class-conditional model's negative
    label, an int or n labels; or token ids).
    ``autoencoder``: a latent model's (``dl.load(RUN).autoencoder``): the sampled latents are
    decoded into images [n, *image_shape] (``training.latent.decode_latents``, clamped to [-1, 1]).
    A mask-conditioned model (:mod:`difflab.models.masked`) samples with nothing given."""
    n = positive_int("n (the number of samples)", n)
    tokenizer = model_attribute(model, "tokenizer")
    if tokenizer is not None and labels is not None:
        raise ValueError("this model is text-conditioned: give prompts= (strings), not labels=")
    cond = labels_for(labels, n, getattr(model, "num_classes", None))
    if prompts is not None:
        cond = prompts_for(prompts, n, tokenizer)
    negative = options.pop("negative_cond", None)  # dl.sample's own: labels (an int, or [n]) or token ids [n, L]
    if negative_prompts is not None:
        if negative is not None:
            raise ValueError("give negative_prompts= (captions) or negative_cond= (labels or token ids), not both")
        if prompts is None:
            raise ValueError("negative_prompts go with prompts= (what to guide towards, and away from what)")
        negative = prompts_for(negative_prompts, n, tokenizer, "negative_prompts")
        if negative.ndim == 3:
            raise ValueError(f"a negative prompt is one caption, not parts joined by '{COMPOSE.strip()}' (got "
                             f"{repr(negative_prompts)[:200]}): write e.g. 'bold strokes' (several words in one caption)")
    if masked_model(model) is not None:  # a mask-conditioned network with nothing given (an all-ones mask):
        model = WithKnown(model, torch.zeros(n, *sample_shape),  # the unconditional task its loss also trains
                          torch.ones((1,) * (1 + len(sample_shape))))
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    x = sample(model, proc, (n, *sample_shape), sampler, steps, eta, cond=cond, guidance=guidance,
               generator=g, device=device, progress=progress, negative_cond=negative, **options)
    if autoencoder is not None:  # a latent model's samples are latents; the images are their decodings
        return decode_latents(autoencoder, x)
    if image_shape is not None and tuple(image_shape) != tuple(sample_shape):
        x = x.reshape(n, *image_shape)
    return x


def save_grid(images: Tensor, path: Union[str, Path], nrow: int) -> Path:
    """Images in [-1, 1], shape [N, C, H, W], as a PNG grid with ``nrow`` images per row."""
    return save_image_grid(images.detach().float().cpu(), path, nrow=nrow)
