"""Clips out (difflab.data.clips): the GIF's frames read back equal the grid of the clips' frame t,
its timing, the still grid of frames, and the refusals (frames of different sizes, bad shapes,
paths and options)."""

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

import difflab as dl
from difflab.data.clips import check_clips, save_clips_gif, save_frame_grid, to_clip_frames, to_frame_grid


def some_clips(N=3, T=5, C=1, H=6, W=7, seed=0):
    return torch.rand(N, T, C, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_gif_frames_are_the_grids_of_each_frame_exactly(tmp_path):
    clips = some_clips()
    path = save_clips_gif(clips, tmp_path / "clips.gif", nrow=2, fps=5)
    frames = imageio.mimread(path)
    assert len(frames) == 5
    for t, frame in enumerate(frames):
        expected = dl.data.to_image_grid(clips[:, t], nrow=2)[:, :, 0]  # 2 clips a row, 2 rows
        got = frame if frame.ndim == 2 else frame[:, :, 0]
        assert np.array_equal(got, expected)  # every uint8 gray level survives the GIF's palette
    with Image.open(path) as gif:
        assert gif.info["duration"] == 200 and gif.info.get("loop") == 0  # 1000 ms / 5 fps, for ever
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write leaves no temporary file


def test_clip_frames_upscale_and_colour():
    clips = some_clips(N=2, T=3, C=3)
    frames = to_clip_frames(clips, nrow=2, padding=0, scale=3)
    assert len(frames) == 3 and frames[0].shape == (18, 42, 3)
    small = dl.data.to_image_grid(clips[:, 1], nrow=2, padding=0)
    assert np.array_equal(frames[1][::3, ::3], small) and np.array_equal(frames[1][2::3, 2::3], small)


def test_the_frame_grid_has_a_clip_a_row(tmp_path):
    clips = some_clips(N=2, T=4)
    grid = to_frame_grid(clips, padding=1)
    assert grid.shape == (2 * 7 + 1, 4 * 8 + 1)
    for i in range(2):
        for t in range(4):
            tile = grid[1 + i * 7: 1 + i * 7 + 6, 1 + t * 8: 1 + t * 8 + 7]
            assert np.array_equal(tile, dl.data.to_image_grid(clips[i, t][None], padding=0)[:, :, 0])
    path = save_frame_grid(clips, tmp_path / "frames.png", padding=1)
    assert np.array_equal(np.asarray(Image.open(path)), grid)


def test_lists_of_clips_or_frames_and_one_clip_are_taken():
    clips = some_clips(N=2, T=3)
    assert torch.equal(check_clips(list(clips)), clips)
    assert torch.equal(check_clips(list(clips[0])), clips[:1])  # a list of one clip's frames
    assert torch.equal(check_clips(clips[0]), clips[:1])  # one clip [T, C, H, W]


def test_frames_of_different_sizes_are_refused(tmp_path):
    a, b = some_clips(N=1, H=8, W=8)[0], some_clips(N=1, H=6, W=8)[0]
    with pytest.raises(ValueError, match=r"clip 1's frames are 6x8 pixels but clip 0's are 8x8.*one size"):
        save_clips_gif([a, b], tmp_path / "x.gif")
    with pytest.raises(ValueError, match=r"frame 2 is 6x8 pixels but frame 0 is 8x8"):
        save_clips_gif([a[0], a[1], b[0]], tmp_path / "x.gif")
    with pytest.raises(ValueError, match=r"clip 1 has shape \(4, 1, 8, 8\) but clip 0 \(5, 1, 8, 8\)"):
        save_clips_gif([a, a[:4]], tmp_path / "x.gif")
    assert not (tmp_path / "x.gif").exists()


@pytest.mark.parametrize("clips, match", [
    (torch.rand(2, 3, 2, 4, 4), r"C = 1, 3 or 4"),
    (torch.rand(4, 4), r"\[N, T, C, H, W\]"),
    (torch.rand(0, 3, 1, 4, 4), r"non-empty"),
    ([], r"non-empty list"),
    ([torch.rand(3, 1, 4, 4), torch.rand(1, 4, 4)], r"not a mix"),
    (np.zeros((1, 2, 1, 4, 4)), r"tensor"),
])
def test_bad_clips_are_refused(clips, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        save_clips_gif(clips, tmp_path / "x.gif")


@pytest.mark.parametrize("kw, match", [
    (dict(path="clips.png"), r"\.gif.*clips\.gif"),
    (dict(path="clips"), r"image suffix"),
    (dict(fps=0), r"fps must be"),
    (dict(fps=float("nan")), r"fps must be"),
    (dict(loop=-1), r"loop must be"),
    (dict(scale=0), r"scale"),
])
def test_bad_options_are_refused(kw, match, tmp_path):
    kw = {"path": "x.gif", **kw}
    kw["path"] = tmp_path / kw["path"]
    with pytest.raises(ValueError, match=match):
        save_clips_gif(some_clips(), **kw)
