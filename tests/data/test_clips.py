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
from difflab.data.clips import (Mp4Layout, check_clips, check_video_or_image_path, mp4_layout, mp4_scale,
                                read_clip_mp4, save_clips, save_clips_gif, save_clips_mp4, save_frame_grid,
                                to_clip_frames, to_frame_grid)


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


# MP4 in (read_clip_mp4): the writer's layout undone, the values within the codec's error above. Measured on
# moving digits at crf 18: 0.07 to 0.09 grey levels on average, at most 2.3 (the docs' 0.05 / 2 a pixel of the
# upscaled grid, plus the luma's rounding from the decoded RGB), at any scale and padding.

@pytest.mark.parametrize("kw", [dict(padding=0), dict(), dict(scale=3), dict(scale=1, padding=0),
                                dict(scale=5, padding=1)], ids=["at-size", "default", "odd-scale", "scale-1", "p1"])
def test_an_mp4_of_one_clip_reads_back_within_the_codec_error(tmp_path, kw):
    md = dl.data.moving_digits(2, frames=8, canvas=16, seed=0)  # digits that move: reversed, 27 levels off
    for clip in md.clips:
        path = save_clips_mp4(clip[None], tmp_path / "c.mp4", nrow=1, **kw)
        got = read_clip_mp4(path, (16, 16))
        assert got.shape == (8, 1, 16, 16) and got.dtype == torch.float32
        error = (got - clip).abs() * 127.5  # grey levels
        # at the writer's default scale 0.07 levels on average (max 2.3); at scale 1 (no repetition to average
        # over) up to 0.5 (max 7), at scale 5 in a 1-pixel border max 12 (measured)
        assert error.mean() < 1 and error.max() <= 15, (float(error.mean()), float(error.max()))
        assert ((got.flip(0) - clip).abs() * 127.5).mean() > 5  # the bound tells frame order apart
    if kw == {}:  # the default layout: 16x16 inside a 2-pixel white border, x4 (80x80), found as such
        frames = read_mp4(path)[..., 0]
        assert frames.shape[1:] == (80, 80) and mp4_layout((80, 80), (16, 16), frames) == Mp4Layout(4, 2)
        assert error.mean() < 0.2 and error.max() <= 3


def test_mp4_layouts_odd_sizes_colour_and_a_resize(tmp_path):
    g = torch.Generator().manual_seed(2)
    clip = torch.rand(1, 3, 1, 15, 13, generator=g) * 2 - 1  # odd sizes: (15 + 4) x 3 = 57 -> 58 with a white row
    got = read_clip_mp4(save_clips_mp4(clip, tmp_path / "odd.mp4", nrow=1, scale=3, crf=0), (15, 13))
    assert got.shape == (3, 1, 15, 13) and ((got - clip[0]).abs() * 127.5).max() <= 2  # crf 0: YUV rounding only
    # colour (smooth, as test_mp4_keeps_colours_in_rgb_order): RGB in order, within its codec error
    colour = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4, generator=g), size=16, mode="bilinear")[None]
    colour = colour * 2 - 1
    got = read_clip_mp4(save_clips_mp4(colour, tmp_path / "rgb.mp4", nrow=1), (16, 16), channels=3)
    assert got.shape == (4, 3, 16, 16) and ((got - colour[0]).abs() * 127.5).mean() < 3
    assert ((got.flip(1) - colour[0]).abs() * 127.5).mean() > 10
    # 24x24 frames (no white border) for a 16x16 model: no layout of the writer, same aspect: box-resized
    big = dl.data.moving_digits(1, frames=4, canvas=24, seed=1).clips
    got = read_clip_mp4(save_clips_mp4(big, tmp_path / "big.mp4", nrow=1, scale=1, padding=0), (16, 16))
    frames = np.stack(to_clip_frames(big, padding=0))
    want = np.stack([np.asarray(Image.fromarray(f).resize((16, 16), Image.Resampling.BOX)) for f in frames])
    assert got.shape == (4, 1, 16, 16) and np.abs((got[:, 0].numpy() + 1) * 127.5 - want).mean() < 1.5
    assert mp4_layout((24, 24), (16, 16), frames) is None  # a 4-pixel border fits the size but is not white


def test_mp4_input_errors(tmp_path, monkeypatch):
    two = save_clips_mp4(some_clips(N=2, T=3, H=16, W=16), tmp_path / "two.mp4", nrow=2)
    with pytest.raises(ValueError, match="several clips side by side are not one clip"):
        read_clip_mp4(two, (16, 16))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_clip_mp4(tmp_path / "none.mp4", (16, 16))
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot read .* as an MP4 video"):
        read_clip_mp4(tmp_path / "bad.mp4", (16, 16))
    with pytest.raises(ValueError, match="channels must be 1"):
        read_clip_mp4(two, (16, 16), channels=4)
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(ModuleNotFoundError, match=r'reading MP4.*pip install "difflab\[video\]"'):
        read_clip_mp4(two, (16, 16))
