"""`difflab sample` and `difflab inpaint` writing a video network's clips as an MP4 (--out clips.mp4):
every frame, the layout, the values within the codec's error of the samples (--save-tensor) and of the
kept frames; refused: an MP4 for an image model, a missing imageio-ffmpeg (named with the extra, before
the run is even read). The writer's own tests: tests/data/test_clips.py."""

import sys

import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from scripts import REPO
from video_runs import train_video_run

import difflab as dl
from difflab.cli import main
from difflab.data.clips import mp4_scale, save_clips_gif, to_clip_frames


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    """A class-conditional video U-Net on 4 frames of 12x12, one training step (the pixels don't matter)."""
    return train_video_run(tmp_path_factory.mktemp("video_mp4"))


def read_mp4(path) -> np.ndarray:
    """[T, H, W] grey levels as imageio's ffmpeg plugin decodes them (the red channel of grey frames)."""
    return np.stack(imageio.mimread(path, format="FFMPEG", memtest=False))[..., 0].astype(np.float64)


def test_sample_writes_the_clips_as_an_mp4(video_run, tmp_path):
    out, x_pt = tmp_path / "clips.mp4", tmp_path / "x.pt"
    assert main(["sample", "--ckpt", str(video_run), "--n", "3", "--steps", "2", "--label", "5", "--out", str(out),
                 "--save-tensor", str(x_pt)]) == 0
    x = torch.load(x_pt)
    assert x.shape == (3, 4, 1, 12, 12)
    scale = mp4_scale((12, 12))  # 6: 12x12 frames play as 72x72
    want = np.stack(to_clip_frames(x, scale=scale)).astype(np.float64)
    got = read_mp4(out)
    assert got.shape == (4, 16 * scale, (2 + 3 * 14) * scale)  # 4 frames, the 3 clips side by side
    error = np.abs(got - want)  # noisy samples of a 1-step model: measured 0.3 levels on average (reversed: 78)
    assert error.mean() < 1.5 and np.abs(got[::-1] - want).mean() > 5 * error.mean()


def test_inpaint_writes_the_predicted_clips_as_an_mp4(video_run, tmp_path, capsys):
    clip = dl.data.moving_digits(1, frames=4, canvas=12, speed=(0.5, 1.0), seed=5).clips
    gif = save_clips_gif(clip, tmp_path / "clip.gif", nrow=1, padding=0)
    out = tmp_path / "pred.mp4"
    assert main(["inpaint", "--ckpt", str(video_run), "--input", str(gif), "--mask", "future:2", "--n", "2",
                 "--sampler", "ddim", "--steps", "2", "--out", str(out)]) == 0
    assert "1 clip(s) x 2, 50% of the pixels filled" in capsys.readouterr().out
    got = read_mp4(out)
    assert got.shape == (4, 16 * 6, (2 + 2 * 14) * 6)  # --n 2 results side by side, upscaled 6 times
    given = np.stack(to_clip_frames(clip.repeat(2, 1, 1, 1, 1), scale=6)).astype(np.float64)[:2]
    error = np.abs(got[:2] - given)  # the 2 kept frames: the input's to within the codec (measured 0.16; reversed 15)
    assert error.mean() < 0.5 and np.abs(got[:2] - given[::-1]).mean() > 5


def test_an_mp4_for_images_or_without_imageio_ffmpeg_is_refused(tmp_path, capsys, monkeypatch):
    images = tmp_path / "digits"
    assert main(["train", "--config", str(REPO / "configs" / "digits.yaml"), "--out", str(images), "--steps", "1",
                 "--set", "sample.every=-1", "--set", "model.kwargs.width=16", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", "--ckpt", str(images), "--n", "2", "--steps", "1", "--out", str(tmp_path / "x.mp4")]) == 2
    assert "an MP4 is for a video model's clips" in capsys.readouterr().err
    assert main(["inpaint", "--ckpt", str(images), "--input", str(tmp_path / "d.png"), "--mask", "half:top",
                 "--out", str(tmp_path / "y.mp4")]) == 2
    assert "an MP4 is for a video model's clips" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import imageio_ffmpeg now raises ImportError
    for command in ("sample", "inpaint"):  # checked first: the run named does not even exist
        argv = [command, "--ckpt", str(tmp_path / "no_run"), "--out", str(tmp_path / "z.mp4")]
        assert main(argv + (["--input", "a.gif", "--mask", "future:1"] if command == "inpaint" else [])) == 1
        assert 'pip install "difflab[video]"' in capsys.readouterr().err
    assert not list(tmp_path.glob("*.mp4"))
