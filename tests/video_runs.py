"""A tiny video run for the CLI's tests of clips (tests/cli/test_cli_sample.py, test_cli_clips_mp4.py;
a helper module, imported by name: ``from video_runs import train_video_run``): a class-conditional
video U-Net on 4 frames of 12x12 moving digits, trained for one step (the pixels don't matter)."""

from __future__ import annotations

from pathlib import Path

from difflab.cli import main

VIDEO_CONFIG = (
    "model: {name: video_unet, kwargs: {in_channels: 1, channels: 8, channel_mult: [1, 2], num_res_blocks: 1,\n"
    "        norm_groups: 4, frames: 4, image_size: 12, num_classes: 10}}\n"
    "diffusion: {schedule: cosine, T: 100}\n"
    "data: {name: moving_digits, kwargs: {n: 8, frames: 4, canvas: 12, speed: [0.5, 1.0], seed: 0}}\n"
    "sample: {every: -1}\nbatch_size: 4\nsteps: 1\nckpt_every: 1\ndevice: cpu\n")


def train_video_run(folder: Path) -> Path:
    """``folder/run``: the video run trained by `difflab train` from ``folder/video.yaml``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = folder / "video.yaml"
    cfg.write_text(VIDEO_CONFIG)
    assert main(["train", "--config", str(cfg), "--out", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"
