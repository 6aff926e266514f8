"""difflab inpaint on clips (a video network's run): GIFs or MP4s of one clip in, space-time masks (future:K,
between:I,J, a box across frames), GIF or frame-grid PNG out, the kept frames exactly the input's (an MP4's
within the codec's error); --reconstruction-guidance."""

import imageio.v2 as imageio
import numpy as np
from PIL import Image, ImageSequence
import pytest
import torch

import difflab as dl
from difflab.cli import inpaint as cli_inpaint
from difflab.cli import main
from difflab.data.clips import save_clips_gif, save_clips_mp4
from difflab.training import Trainer, apply_overrides, load_config
from scripts import REPO


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    """configs/moving_digits.yaml at a width of 8 channels, one step (the pixels don't matter here)."""
    out = tmp_path_factory.mktemp("clip_run")
    cfg = apply_overrides(load_config(REPO / "configs" / "moving_digits.yaml"), [
        "steps=1", "batch_size=2", "log_every=1", "ckpt_every=1", "sample.every=-1", "data.kwargs.n=4",
        "model.kwargs.channels=8"])
    Trainer(cfg, out, progress=False).train()
    return out


@pytest.fixture(scope="module")
def clip_gifs(tmp_path_factory):
    """Two real clips, 8 frames of 16x16, one GIF each (no padding: the frames at the model's size)."""
    d = tmp_path_factory.mktemp("gifs")
    md = dl.data.moving_digits(2, frames=8, seed=3)
    return [str(save_clips_gif(c[None], d / f"c{i}.gif", nrow=1, padding=0)) for i, c in enumerate(md.clips)]


def gif_frames(path) -> np.ndarray:
    """[T, H, W] grey levels. Pillow stores a run of identical frames once, shown k times as long: at
    save_clips_gif's default 4 fps a frame of k * 250 ms is k frames."""
    with Image.open(path) as gif:
        frames = [(np.asarray(f.convert("L"), dtype=np.int32), f.info["duration"]) for f in ImageSequence.Iterator(gif)]
    return np.stack([f for f, d in frames for _ in range(round(d / 250))])


def test_prediction_and_a_box_across_frames_keep_the_given_pixels(clip_run, clip_gifs, tmp_path, capsys):
    ck = ["inpaint", "--ckpt", str(clip_run), "--sampler", "ddim", "--steps", "2"]
    out = tmp_path / "pred.gif"
    assert main(ck + ["--input", *clip_gifs, "--mask", "future:2", "--label", "3", "--out", str(out)]) == 0
    assert "2 clip(s) x 1, 75% of the pixels filled" in capsys.readouterr().out
    got, given = gif_frames(out), [gif_frames(p) for p in clip_gifs]
    assert got.shape == (8, 2 * 16 + 3 * 2, 16 + 2 * 2)  # --n 1: a clip a row, padding 2
    assert max(len(set(map(bytes, g))) for g in given) < 8  # a digit stood still: GIF frames were merged
    for i, clip in enumerate(given):
        frames = got[:, 2 + 18 * i: 18 + 18 * i, 2:18]
        np.testing.assert_array_equal(frames[:2], clip[:2])  # the given frames, exactly
    box = tmp_path / "box.png"  # a 4x4 box in every frame, --n 2 results: a clip a row
    assert main(ck + ["--input", clip_gifs[0], "--mask", "box:4,4,8,8", "--n", "2", "--out", str(box)]) == 0
    grid = imageio.imread(box)
    grid = grid[..., 0] if grid.ndim == 3 else grid
    assert grid.shape == (2 * 18 + 2, 8 * 18 + 2)
    clip = given[0]
    outside = np.ones((16, 16), bool)
    outside[4:8, 4:8] = False
    for row in range(2):
        for t in range(8):
            frame = grid[2 + 18 * row: 18 + 18 * row, 2 + 18 * t: 18 + 18 * t]
            np.testing.assert_array_equal(frame[outside], clip[t][outside])


def test_clip_input_errors(clip_run, clip_gifs, tmp_path, capsys):
    ck = ["inpaint", "--ckpt", str(clip_run), "--steps", "2"]

    def err(argv):
        assert main(ck + argv) != 0
        return capsys.readouterr().err

    long = dl.data.moving_digits(1, frames=9, seed=0).clips
    save_clips_gif(long, tmp_path / "long.gif", nrow=1, padding=0)
    assert "has 9 frames, but the model makes clips of 8 frames (it takes clips of 1 .. 8 frames)" in err(
        ["--input", str(tmp_path / "long.gif"), "--mask", "future:2"])
    save_clips_gif(torch.zeros(2, 8, 1, 16, 16), tmp_path / "two.gif", nrow=2)  # two clips side by side
    assert "a GIF of several clips side by side" in err(["--input", str(tmp_path / "two.gif"), "--mask", "future:2"])
    short = dl.data.moving_digits(1, frames=4, seed=0).clips
    save_clips_gif(short, tmp_path / "short.gif", nrow=1, padding=0)
    assert "give clips of one length" in err(["--input", clip_gifs[0], str(tmp_path / "short.gif"), "--mask",
                                              "future:2"])
    assert "given (the frames kept at the start) must be an integer in 1 .. 7" in err(
        ["--input", clip_gifs[0], "--mask", "future:8"])
    assert "does not exist" in err(["--input", str(tmp_path / "none.gif"), "--mask", "future:2"])
    (tmp_path / "bad.gif").write_bytes(b"not a gif")
    assert "cannot read input clip" in err(["--input", str(tmp_path / "bad.gif"), "--mask", "future:2"])


def test_reconstruction_guidance_is_passed_on_and_keeps_the_given_frames(clip_run, clip_gifs, tmp_path, capsys,
                                                                         monkeypatch):
    seen = {}
    original = cli_inpaint.inpaint

    def spy(*args, **kwargs):  # the one-step model's frames saturate at -1 / 1: what it is given is the test
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(cli_inpaint, "inpaint", spy)
    guided = tmp_path / "guided.gif"
    assert main(["inpaint", "--ckpt", str(clip_run), "--sampler", "ddim", "--steps", "2", "--input", clip_gifs[0],
                 "--mask", "future:2", "--label", "3", "--reconstruction-guidance", "2", "--out", str(guided)]) == 0
    assert seen["reconstruction_guidance"] == 2.0
    assert "resample 1, reconstruction guidance 2)" in capsys.readouterr().out
    np.testing.assert_array_equal(gif_frames(guided)[:2, 2:18, 2:18], gif_frames(clip_gifs[0])[:2])
    for bad in ("-1", "nan", "inf"):  # refused before the run is read (this one does not exist)
        assert main(["inpaint", "--ckpt", str(tmp_path / "no_run"), "--input", clip_gifs[0], "--mask", "future:2",
                     "--reconstruction-guidance", bad]) != 0
        assert "--reconstruction-guidance must be a finite weight w_r >= 0" in capsys.readouterr().err
    for flag in ("--cuda-graph", "--fast"):  # a replayed graph has no backward pass
        assert main(["inpaint", "--ckpt", str(tmp_path / "no_run"), "--input", clip_gifs[0], "--mask", "future:2",
                     "--reconstruction-guidance", "2", flag]) != 0
        assert "leave out --cuda-graph / --fast" in capsys.readouterr().err


def test_an_mp4_clip_is_read_back_to_the_model_frames(clip_run, clip_gifs, tmp_path, capsys):
    """A clip written by save_clips_mp4 (x4 in a white border: 80x80 for 16x16 frames) is an input like its GIF: the
    kept frames come out within the codec's error (docs/video.md; measured at most 2 levels here)."""
    clip = dl.data.moving_digits(2, frames=8, seed=3).clips[1]
    mp4 = save_clips_mp4(clip[None], tmp_path / "clip.mp4", nrow=1)
    out = tmp_path / "pred.gif"
    assert main(["inpaint", "--ckpt", str(clip_run), "--sampler", "ddim", "--steps", "2", "--input", str(mp4),
                 clip_gifs[0], "--mask", "future:2", "--out", str(out)]) == 0  # an MP4 beside a GIF of one length
    assert "2 clip(s) x 1" in capsys.readouterr().out
    got = gif_frames(out)[:2, 2:18, 2:18]
    want = np.rint((clip[:2, 0].numpy() + 1) * 127.5)
    assert np.abs(got - want).max() <= 3 and np.abs(got - want[::-1]).max() > 50
    two = save_clips_mp4(torch.zeros(2, 8, 1, 16, 16), tmp_path / "two.mp4", nrow=2)
    assert main(["inpaint", "--ckpt", str(clip_run), "--input", str(two), "--mask", "future:2"]) != 0
    assert "several clips side by side are not one clip" in capsys.readouterr().err
