"""Clips out (difflab.data.clips): the GIF's frames read back equal the grid of the clips' frame t,
its timing, the still grid of frames, the MP4's frames within the codec's error, and the refusals
(frames of different sizes, bad shapes, paths and options, a missing MP4 plugin)."""

import sys

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from PIL import Image

import difflab as dl
from difflab.data.clips import (check_clips, check_video_or_image_path, mp4_scale, save_clips, save_clips_gif,
                                save_clips_mp4, save_frame_grid, to_clip_frames, to_frame_grid)


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


# MP4 (save_clips_mp4): lossy, so the frames read back are compared with the GIF's mapping within a bound
# measured on these clips (docs/video.md): at crf 18 the moving digits come back within 0.05 grey levels on
# average (max 2); the same frames in reverse order are 18 levels off on average, inverted grey 245.

def read_mp4(path) -> np.ndarray:
    """[T, H, W, 3] uint8, as imageio's ffmpeg plugin decodes it."""
    return np.stack(imageio.mimread(path, format="FFMPEG", memtest=False))


def test_mp4_frames_are_the_gif_frames_upscaled_within_the_codec_error(tmp_path):
    md = dl.data.moving_digits(3, frames=8, canvas=16, seed=0)
    path = save_clips_mp4(md.clips, tmp_path / "clips.mp4", fps=5)
    got = read_mp4(path).astype(np.float64)
    want = np.stack(to_clip_frames(md.clips, scale=4)).astype(np.float64)  # 16x16 -> 64x64 by default (mp4_scale)
    assert got.shape == (8, 20 * 4, (2 + 3 * 18) * 4, 3)  # every frame, one row of 3 clips, padding 2, x4
    assert np.array_equal(got[..., 0], got[..., 2])  # grey stays grey (no chroma)
    error = np.abs(got[..., 0] - want)
    assert error.mean() < 0.5 and np.percentile(error, 99.9) <= 4
    assert np.abs(got[::-1, ..., 0] - want).mean() > 10  # the bound tells frame order apart ...
    assert np.abs(255 - got[..., 0] - want).mean() > 100  # ... and the value mapping
    assert imageio.get_reader(path, format="FFMPEG").get_meta_data()["fps"] == 5
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write leaves no temporary file


def test_mp4_pads_odd_sizes_to_even_with_white(tmp_path):
    clips = some_clips(N=2, T=3, H=7, W=9)
    path = save_clips_mp4(clips, tmp_path / "c.mp4", nrow=2, scale=3, padding=0, crf=0)
    got = read_mp4(path).astype(np.float64)[..., 0]
    want = np.stack(to_clip_frames(clips, nrow=2, padding=0, scale=3)).astype(np.float64)
    assert want.shape == (3, 21, 54) and got.shape == (3, 22, 54)  # one white row: yuv420p needs even sizes
    assert (got[:, 21] >= 253).all() and np.abs(got[:, :21] - want).max() <= 2  # crf 0: the YUV rounding alone


def test_mp4_keeps_colours_in_rgb_order(tmp_path):
    g = torch.Generator().manual_seed(1)  # smooth colour clips: 4x4 noise upsampled to 16x16 frames
    clips = torch.nn.functional.interpolate(torch.rand(6, 3, 4, 4, generator=g), size=16, mode="bilinear")
    clips = clips.reshape(2, 3, 3, 16, 16) * 2 - 1
    got = read_mp4(save_clips_mp4(clips, tmp_path / "c.mp4")).astype(np.float64)
    want = np.stack(to_clip_frames(clips, scale=4)).astype(np.float64)
    error = np.abs(got - want)  # measured: 1.7 levels on average at crf 18; BGR would be 28
    assert error.mean() < 3 and np.abs(got[..., ::-1] - want).mean() > 15


def test_mp4_scale_is_even_and_makes_frames_at_least_64_pixels():
    assert [mp4_scale((h, h)) for h in (8, 12, 16, 28, 64, 100)] == [8, 6, 4, 4, 2, 2]  # even, >= 2
    assert mp4_scale((16, 40)) == 4 and mp4_scale((16, 16), min_side=128) == 8


def test_save_clips_picks_the_writer_by_suffix(tmp_path):
    clips = some_clips(N=2, T=3, H=8, W=8)
    assert Image.open(save_clips(clips, tmp_path / "a.gif")).n_frames == 3
    assert read_mp4(save_clips(clips, tmp_path / "a.mp4")).shape == (3, 12 * 8, 22 * 8, 3)
    assert Image.open(save_clips(clips, tmp_path / "a.png")).size == (3 * 10 + 2, 2 * 10 + 2)


def test_a_missing_mp4_plugin_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import imageio_ffmpeg now raises ImportError
    for write in (lambda: save_clips_mp4(some_clips(), tmp_path / "x.mp4"),
                  lambda: check_video_or_image_path(tmp_path / "x.mp4", "--out")):
        with pytest.raises(ModuleNotFoundError, match=r'imageio-ffmpeg.*pip install "difflab\[video\]"'):
            write()
    assert not list(tmp_path.iterdir())
    assert check_video_or_image_path(tmp_path / "x.gif", "--out") == tmp_path / "x.gif"  # GIFs need no plugin


@pytest.mark.parametrize("kw, match", [
    (dict(path="clips.gif"), r"\.mp4.*clips\.mp4"),
    (dict(path=""), r"empty"),
    (dict(fps=-1), r"fps must be"),
    (dict(crf=52), r"crf must be an integer 0\.\.51"),
    (dict(crf=1.5), r"crf must be"),
    (dict(scale=0), r"scale"),
])
def test_bad_mp4_options_are_refused(kw, match, tmp_path):
    kw = {"path": "x.mp4", **kw}
    kw["path"] = tmp_path / kw["path"] if kw["path"] else ""
    with pytest.raises(ValueError, match=match):
        save_clips_mp4(some_clips(), **kw)
    with pytest.raises(ValueError, match="a folder"):
        save_clips_mp4(some_clips(), tmp_path)
