"""What the editing commands (inpaint, img2img, upscale, interpolate) share: the checkpoint,
the input PNGs and the conversion between image shape and the network's sample shape."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..data.clips import read_clip_mp4
from ..data.grids import check_image_path
from ..devices import resolve_device
from ..editing.io import load_images
from ..training.checkpoint import load
from .speed import accelerated, add_speed_args

__all__ = ["add_run_args", "load_run", "read_inputs", "read_clips", "labels", "Shapes", "check_out"]


def add_run_args(p, sampler_choices, default_sampler: str, default_steps: int) -> None:
    p.add_argument("--ckpt", required=True, help="run folder or checkpoint folder (difflab train --out)")
    p.add_argument("--sampler", default=default_sampler, choices=sampler_choices)
    p.add_argument("--steps", type=int, default=default_steps, help="sampler steps")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--label", type=int, default=None, help="class label for a class-conditional model")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    add_speed_args(p)
    p.add_argument("--no-clip", action="store_true",
                   help="don't clamp the model's x0 estimates to the run's data range ([-1, 1] for images; clamped by default)")


def load_run(args, stochastic: bool = False, whole_run: bool = True):
    """The run of ``--ckpt`` on ``--device`` and the network to use (``--raw``: not the EMA), as
    the speed flags ask (``stochastic``: the command draws noise as it runs whatever its sampler,
    as inpainting does). A super-resolution network refuses, at its first call, any command that
    gives it no low-res image. ``whole_run=False``: --fast captures each network call, never a
    whole run."""
    deterministic = not stochastic and getattr(args, "sampler", "ddim") != "ddpm" and getattr(args, "eta", 0) == 0
    deterministic = deterministic and whole_run
    device = resolve_device(args.device, "--device")
    run = load(args.ckpt, device=device)
    return run, accelerated(run.model if args.raw else run.ema_model, args, device, deterministic)


def check_out(args, default: Optional[str] = None):
    """``--out`` as a Path, checked (an image suffix, not a folder) and its folder created before
    any sampling, so a bad output path costs no work."""
    return check_image_path(args.out if args.out is not None else default, "--out", mkdir=True)


class Shapes:
    """Images [B, C, H, W] <-> the network's samples [B, *sample_shape] (flat for an MLP)."""

    def __init__(self, run) -> None:
        self.image_shape, self.sample_shape = tuple(run.image_shape), tuple(run.sample_shape)
        if getattr(run, "autoencoder", None) is not None:  # a latent run's edits take images: its autoencoder encodes
            self.sample_shape = self.image_shape
        if len(self.image_shape) < 2:  # a 2-D toy model: its samples are points, there is no PNG to edit
            raise ValueError(
                f"{run.path} makes vectors of shape {self.image_shape} (e.g. 2-D points), not images: the editing "
                "commands read and write PNG images. Edit vectors in Python, e.g. dl.editing.inpaint(run.ema_model, "
                "run.proc, x, mask) with x and mask of shape [B, "
                f"{self.image_shape[0] if self.image_shape else 'D'}]")

    def check(self, x: Tensor, what: str = "input image", scale: int = 1) -> Tensor:
        want = self.image_shape[:-2] + tuple(s // scale for s in self.image_shape[-2:])
        if tuple(x.shape[1:]) != want:
            c, h, w = want if len(want) == 3 else (1, *want[-2:])
            got = f"{x.shape[-1]}x{x.shape[-2]} with {x.shape[1]} channel(s)"
            raise ValueError(f"{what} is {got}, but the model works on {w}x{h} images with {c} channel(s); "
                             "resize the image (or pick the matching checkpoint)")
        return x

    def to_model(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.sample_shape)

    def to_image(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.image_shape)


def read_inputs(paths, run, n: int = 1) -> Tensor:
    """The input PNGs with the model's channel count, each repeated ``n`` times (rows of a grid)."""
    if n < 1:
        raise ValueError(f"--n (results per input) must be >= 1, got {n}")
    channels = run.image_shape[0] if len(run.image_shape) == 3 else 1
    x = load_images(paths, channels=channels if channels in (1, 3) else None)
    return x.repeat_interleave(n, dim=0)


def read_clips(paths, run, n: int = 1) -> Tensor:
    """Clips [len(paths) * n, T, C, H, W] in [-1, 1] for a run that makes clips [T, C, H, W]: each
    file one clip of 1 .. T frames (all files alike), each repeated ``n`` times. An animated GIF's
    frames are at the model's frame size; a GIF frame shown k times as long as the shortest is k
    repeated frames (how GIF writers store a digit that did not move). An MP4 (lossy; ``pip install
    "difflab[video]"``) is read back to the model's frame size by
    :func:`difflab.data.clips.read_clip_mp4`, which undoes ``save_clips_mp4``'s upscaling and white
    border (as ``difflab sample --out clip.mp4`` writes one clip) or resizes a video of the same
    aspect ratio."""
    if n < 1:
        raise ValueError(f"--n (results per input) must be >= 1, got {n}")
    T, C, H, W = run.image_shape
    if C not in (1, 3):
        raise ValueError(f"{run.path} makes clips of {C} channels; only grey (1) or RGB (3) clips are read from GIFs "
                         "or MP4s")
    clips = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise FileNotFoundError(f"input clip {str(p)!r} does not exist")
        if path.suffix.lower() == ".mp4":
            clip = read_clip_mp4(path, (H, W), C)
        else:
            clip = _read_clip_gif(path, C, (H, W))
        if not 1 <= len(clip) <= T:
            raise ValueError(f"input clip {str(p)!r} has {len(clip)} frames, but the model makes clips of {T} "
                             f"frames (it takes clips of 1 .. {T} frames); cut the clip")
        if clips and len(clip) != clips[0].shape[0]:
            raise ValueError(f"input clip {str(p)!r} has {len(clip)} frames but {str(paths[0])!r} has "
                             f"{clips[0].shape[0]}; give clips of one length")
        clips.append(clip)
    return torch.stack(clips).repeat_interleave(n, dim=0)


def _read_clip_gif(path: Path, C: int, size: tuple[int, int]) -> Tensor:
    """One clip [T, C, H, W] in [-1, 1] from an animated GIF whose frames are ``size`` (H, W)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError  # (Pillow: as load_mask reads PNGs)

    H, W = size
    try:
        with Image.open(path) as gif:
            shown = [(np.asarray(f.convert("L" if C == 1 else "RGB"), dtype=np.uint8), f.info.get("duration", 0))
                     for f in ImageSequence.Iterator(gif)]
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read input clip {str(path)!r} as an animated GIF: {err}") from None
    # GIF writers (Pillow's) store a run of identical frames as one frame shown that many times
    # as long: a frame shown k times the shortest frame's duration is k frames of the clip
    durations = [d for _, d in shown]
    base = min(durations)
    repeats = [max(1, round(d / base)) for d in durations] if base > 0 else [1] * len(shown)
    frames = [f for (f, _), k in zip(shown, repeats) for _ in range(k)]
    got = frames[0].shape[:2]
    if got != (H, W):
        raise ValueError(f"input clip {str(path)!r} has frames of {got[1]}x{got[0]} pixels, but the model works on "
                         f"{W}x{H} frames; give one clip a file at the model's size (a GIF of several clips side "
                         "by side, as difflab sample writes, is not one clip)")
    a = torch.from_numpy(np.stack(frames)).float().div(127.5).sub(1.0)  # uint8 -> [-1, 1]
    return a[:, None] if C == 1 else a.permute(0, 3, 1, 2)


def labels(args, run, batch: int) -> Optional[Tensor]:
    if args.label is None:
        if args.guidance != 1.0:
            raise ValueError("--guidance needs --label (the class to guide towards)")
        return None
    if run.num_classes is None:
        raise ValueError(f"--label needs a class-conditional model; {args.ckpt} is unconditional")
    if not 0 <= args.label < run.num_classes:
        raise ValueError(f"--label must lie in 0 .. {run.num_classes - 1}, got {args.label}")
    return torch.full((batch,), args.label, dtype=torch.long)


def clip_x0(args):
    """None (no clipping) with --no-clip, else ``...``: the run's process's data range."""
    return None if getattr(args, "no_clip", False) else ...


def generator(args) -> torch.Generator:
    return torch.Generator().manual_seed(int(args.seed))
