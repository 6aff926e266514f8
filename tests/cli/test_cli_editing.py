"""The editing commands end to end on a tiny checkpoint: PNGs in, PNGs out, clear errors."""

import numpy as np
import torch
import pytest
from PIL import Image

import difflab as dl
from difflab.cli import main
from difflab.training.config import TrainConfig
from difflab.training.trainer import Trainer


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """An unconditional unet_tiny on the 8x8 digits, two training steps (the pixels don't matter here)."""
    out = tmp_path_factory.mktemp("editing_cli") / "run"
    cfg = TrainConfig.from_dict({
        "model": {"name": "unet_tiny", "kwargs": {}}, "diffusion": {"schedule": "linear", "T": 100},
        "data": {"name": "digits"}, "sample": {"every": -1}, "batch_size": 8, "steps": 2, "device": "cpu",
        "cond_drop_prob": 0.0, "log_every": 1, "ckpt_every": 2, "tensorboard": False,
    })
    trainer = Trainer(cfg, out, progress=False)
    trainer.train()
    return out


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    d = tmp_path_factory.mktemp("pngs")
    x = dl.data.load("digits")[0][:2]
    paths = []
    for i, img in enumerate(x):
        dl.editing.save_images(img[None], d / f"d{i}.png")
        paths.append(str(d / f"d{i}.png"))
    return paths


def pixels(path):
    return np.asarray(Image.open(path).convert("L"), dtype=np.int32)


def test_inpaint_keeps_the_unmasked_pixels(run_dir, pngs, tmp_path, capsys):
    out = tmp_path / "filled.png"
    assert main(["inpaint", "--ckpt", str(run_dir), "--input", pngs[0], "--mask", "half:bottom",
                 "--steps", "5", "--out", str(out)]) == 0
    a, b = pixels(pngs[0]), pixels(out)
    assert a.shape == b.shape == (8, 8)
    assert np.array_equal(a[:4], b[:4])  # the kept top half, pixel for pixel
    assert "50% of the pixels filled" in capsys.readouterr().out
    out2 = tmp_path / "grid.png"
    assert main(["inpaint", "--ckpt", str(run_dir), "--input", *pngs, "--mask", "box:2,2,6,6", "--n", "2",
                 "--sampler", "ddim", "--steps", "4", "--resample", "2", "--jump", "2", "--out", str(out2)]) == 0
    assert pixels(out2).shape == (2 + 2 * 10, 2 + 2 * 10)  # 2 rows (inputs) x 2 results, 2-pixel padding


def test_img2img_and_interpolate(run_dir, pngs, tmp_path):
    out = tmp_path / "e.png"
    assert main(["img2img", "--ckpt", str(run_dir), "--input", pngs[0], "--strength", "0.3", "--steps", "5",
                 "--out", str(out)]) == 0
    assert pixels(out).shape == (8, 8)
    strip = tmp_path / "strip.png"
    assert main(["interpolate", "--ckpt", str(run_dir), "--input", *pngs, "--frames", "4", "--steps", "4",
                 "--out", str(strip)]) == 0
    assert pixels(strip).shape == (12, 2 + 4 * 10)
    # the strip is the API's interpolation of the two inputs (DDIM: deterministic), pixel for pixel
    run, want = dl.load(run_dir), tmp_path / "want.png"
    a, b = dl.editing.load_images(pngs)  # each [1, 8, 8]
    dl.editing.save_images(dl.editing.interpolate(run.ema_model, run.proc, a, b, 4, 4), want, nrow=4)
    assert np.array_equal(pixels(strip), pixels(want))
    assert main(["interpolate", "--ckpt", str(run_dir), "--seeds", "1", "2", "--frames", "3", "--steps", "3",
                 "--out", str(strip)]) == 0
    assert pixels(strip).shape == (12, 2 + 3 * 10)
    assert main(["interpolate", "--ckpt", str(run_dir), "--input", pngs[0], "--reconstruct", "--steps", "3",
                 "--out", str(strip)]) == 0
    # the input above its reconstruction (DDIM inversion, then DDIM from the inverted noise)
    dl.editing.save_images(torch.cat([a[None], dl.editing.reconstruct(run.ema_model, run.proc, a[None], 3)]), want,
                           nrow=1)
    assert np.array_equal(pixels(strip), pixels(want))


def test_upscale_train_and_run(tmp_path, pngs):
    cfg = tmp_path / "sr.yaml"
    cfg.write_text(
        "model: {name: superres, kwargs: {base: unet_tiny, scale: 2}}\n"
        "loss: superres\n"
        "diffusion: {schedule: linear, T: 100}\n"
        "data: {name: digits}\n"
        "sample: {every: -1}\n"
        "batch_size: 8\nsteps: 2\ndevice: cpu\ncond_drop_prob: 0.0\nlog_every: 1\nckpt_every: 2\ntensorboard: false\n"
    )
    run = tmp_path / "sr"
    assert main(["train", "--config", str(cfg), "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "hi.png"
    assert main(["upscale", "--ckpt", str(run), "--input", pngs[0], "--from-highres", "--steps", "3",
                 "--out", str(out)]) == 0
    assert pixels(out).shape == (8, 8)
    low = tmp_path / "low.png"
    dl.editing.save_images(dl.editing.downsample(dl.editing.load_images(pngs[0]), 2), low)
    assert main(["upscale", "--ckpt", str(run), "--input", str(low), "--steps", "3", "--out", str(out)]) == 0
    assert pixels(out).shape == (8, 8)


def test_cli_errors(run_dir, pngs, tmp_path, capsys):
    def err(argv):
        assert main(argv) == 2
        return capsys.readouterr().err

    ck = ["--ckpt", str(run_dir)]
    assert "0 <= x0 < x1 <= width = 8" in err(["inpaint", *ck, "--input", pngs[0], "--mask", "box:0,0,9,9"])
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(big)
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "mask12.png")
    assert "mask and image must have the same size" in err(
        ["inpaint", *ck, "--input", pngs[0], "--mask", str(tmp_path / "mask12.png")])
    assert "the model works on 8x8 images" in err(["inpaint", *ck, "--input", str(big), "--mask", "half:left"])
    assert "strength must lie in (0, 1]" in err(["img2img", *ck, "--input", pngs[0], "--strength", "1.5"])
    assert "without low-resolution conditioning" in err(["upscale", *ck, "--input", pngs[0]])
    assert "does not exist" in err(["inpaint", *ck, "--input", str(tmp_path / "none.png"), "--mask", "half:top"])
    assert "exactly two images" in err(["interpolate", *ck, "--input", pngs[0]])
    assert "--label needs a class-conditional model" in err(
        ["img2img", *ck, "--input", pngs[0], "--label", "3"])


def test_every_editing_command_takes_the_speed_flags(run_dir, pngs, tmp_path, capsys):
    """inpaint, img2img, interpolate and upscale accept the speed flags of `difflab sample`
    (cli/speed.py): on the CPU channels_last computes the same images, up to the float32 rounding
    of another memory order -- at most one grey level of 255 in the PNG."""
    for argv in (["img2img", "--input", pngs[0], "--strength", "0.3", "--steps", "3"],
                 ["inpaint", "--input", pngs[0], "--mask", "half:bottom", "--steps", "3"],
                 ["interpolate", "--input", *pngs, "--frames", "3", "--steps", "3"]):
        plain, fast = tmp_path / f"{argv[0]}_plain.png", tmp_path / f"{argv[0]}_cl.png"
        assert main([argv[0], "--ckpt", str(run_dir), *argv[1:], "--out", str(plain)]) == 0
        assert main([argv[0], "--ckpt", str(run_dir), *argv[1:], "--channels-last", "--out", str(fast)]) == 0
        assert np.abs(pixels(plain) - pixels(fast)).max() <= 1, argv[0]
    for command in ("upscale", "interpolate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--fast" in capsys.readouterr().out
