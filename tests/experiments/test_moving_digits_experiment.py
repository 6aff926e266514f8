"""experiments/moving_digits.py (docs/video.md's figures and the real clips' motion residual): the GIF's
frames are the clips' frames, and the numbers are the library's measure."""

import json

import imageio.v2 as imageio
import numpy as np

import difflab as dl
from experiments import moving_digits


def test_writes_the_gif_the_frame_grid_and_the_residuals(tmp_path):
    assert moving_digits.main(["--out", str(tmp_path), "--frames", "5", "--n", "40", "--seed", "2"]) == 0
    shown = dl.data.moving_digits(8, frames=5, digits=2, seed=2)
    gif = imageio.mimread(tmp_path / "moving_digits.gif")
    assert len(gif) == 5
    for t, frame in enumerate(gif):
        gray = frame[..., 0] if frame.ndim == 3 else frame
        want = dl.data.to_image_grid(shown.clips[:, t], nrow=8)[:, :, 0]
        np.testing.assert_array_equal(gray[:: moving_digits.UPSCALE, :: moving_digits.UPSCALE], want)
    grid = imageio.imread(tmp_path / "moving_digits_frames.png")
    want = dl.data.to_image_grid(shown.clips.flatten(0, 1), nrow=5)[:, :, 0]  # a clip a row
    assert grid.shape[:2] == ((8 * 18 + 2) * moving_digits.UPSCALE, (5 * 18 + 2) * moving_digits.UPSCALE)
    np.testing.assert_array_equal(grid[:: moving_digits.UPSCALE, :: moving_digits.UPSCALE], want)
    res = json.loads((tmp_path / "moving_digits.json").read_text())
    real = dl.data.moving_digits(40, frames=5, seed=3)
    want = dl.evaluation.motion_residual(real.clips, 8, max_speed=1.5)
    assert res["real"]["median"] == round(float(want.median()), 4) and res["real"]["within_1px"] == 1.0
    assert res["shuffled"]["median"] > 2 * res["real"]["median"]
    assert "--frames 5" in res["command"]
