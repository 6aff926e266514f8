"""The moving-digits figures of docs/video.md and the motion measure on real clips (not part of the
difflab package).

    python experiments/moving_digits.py --out docs/video     # a few seconds on one CPU core

Writes ``moving_digits.gif`` (8 clips side by side, each frame of the GIF one frame of the clips,
upscaled 4x by pixel repetition), ``moving_digits_frames.png`` (one clip a row, its frames left to
right) and ``moving_digits.json``: the bouncing-path residual (difflab.evaluation.motion_residual,
pixels) of real one-digit clips, the reference a generated clip's motion is judged against, beside
the same measure on the real clips with their frames shuffled.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
if __package__ in (None, "") and sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(HERE.parent)  # run as a script: import from the repository root

import imageio.v2 as imageio  # noqa: E402
import torch  # noqa: E402

import difflab as dl  # noqa: E402
from difflab.files import atomic_write, atomic_write_text  # noqa: E402

SPEED = (0.5, 1.5)  # the data's default speed range, pixels a frame: the fit's max_speed too
UPSCALE = 4


def picture(images: torch.Tensor, nrow: int):
    """uint8 [H, W]: the grid of images [N, 1, h, w], upscaled UPSCALE times by pixel repetition."""
    return dl.data.to_image_grid(images, nrow=nrow).repeat(UPSCALE, 0).repeat(UPSCALE, 1)[:, :, 0]


def gif_frames(clips: torch.Tensor) -> list:
    """One picture a frame: the clips [N, T, 1, H, W] side by side."""
    return [picture(clips[:, t], len(clips)) for t in range(clips.shape[1])]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/video"))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=1000, help="clips for the motion measure")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    shown = dl.data.moving_digits(8, frames=args.frames, digits=2, speed=SPEED, seed=args.seed)
    atomic_write(args.out / "moving_digits.gif",
                 lambda tmp: imageio.mimsave(tmp, gif_frames(shown.clips), duration=250, loop=0))
    frames = picture(shown.clips.flatten(0, 1), args.frames)
    atomic_write(args.out / "moving_digits_frames.png", lambda tmp: imageio.imwrite(tmp, frames))

    real = dl.data.moving_digits(args.n, frames=args.frames, digits=1, speed=SPEED, seed=args.seed + 1)
    order = torch.argsort(torch.rand(args.n, args.frames, generator=torch.Generator().manual_seed(args.seed)), 1)
    shuffled = real.clips[torch.arange(args.n)[:, None], order]
    res = {"command": "python experiments/moving_digits.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
           "clips": args.n, "frames": args.frames, "canvas": real.canvas, "sprite_size": real.sprite_size,
           "speed": list(SPEED)}
    for name, clips in (("real", real.clips), ("shuffled", shuffled)):
        r = dl.evaluation.motion_residual(clips, real.sprite_size, max_speed=SPEED[1])
        res[name] = {"median": round(float(r.median()), 4), "p90": round(float(r.quantile(0.9)), 4),
                     "max": round(float(r.max()), 4), "within_1px": round(float((r <= 1).double().mean()), 4)}
    atomic_write_text(args.out / "moving_digits.json", json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
